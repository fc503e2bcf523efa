"""Dockyard's API as ``dockyard serve`` runs it, but on a TCP port and without Caddy in front.

``dockyard serve`` puts the API on a private unix socket behind Caddy (the data plane); wrk
cannot reach a unix socket, and the bare reference app has no proxy in front. This runs the same
application (``create_app``, runtime from the settings) with the same uvicorn options (log
config, access log, proxy headers, the header-deadline HTTP protocol, uvloop when installed) on
``127.0.0.1:<port>``, so bench/api.py can compare the API itself with the bare app like with like
(and profile it: ``py-spy record --pid``).

    DOCKYARD_DATA_DIR=… DOCKYARD_RUNTIME=none python -m bench.direct_app --port 8001
"""

from __future__ import annotations

import argparse

import uvicorn

from app.httpserver import http_protocol
from app.observability.logs import log_config
from app.server import create_app
from app.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    settings = Settings()
    uvicorn.run(
        create_app(settings, port=args.port),
        host="127.0.0.1",
        port=args.port,
        log_level=args.log_level,
        log_config=log_config(args.log_level, settings.log_format),
        proxy_headers=True,
        forwarded_allow_ips="*",
        http=http_protocol(settings.header_timeout_seconds),
    )


if __name__ == "__main__":
    main()
