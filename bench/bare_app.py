"""The reference for bench/api.py: a bare FastAPI app on uvicorn answering fixed bytes.

It returns the exact body Dockyard answered for the same request (read from the file named by
``BENCH_BARE_BODY``), so the ratio measures Dockyard's request path, not the payload size.

    BENCH_BARE_BODY=body.json .venv/bin/uvicorn bench.bare_app:app --port 8001 --log-level warning
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Response

BODY = Path(os.environ.get("BENCH_BARE_BODY", "/dev/null")).read_bytes()

app = FastAPI()


@app.get("/v1/containers")
async def containers() -> Response:
    return Response(BODY, media_type="application/json")
