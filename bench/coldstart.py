"""Cold start: the first request to a revision scaled to zero, answered, against a raw engine run
of the same image -> first TCP accept (serverless part B; target: at most 1.3x).

Both paths start the same busybox httpd image on the same private Podman service in the same run,
interleaved, N times each; the script prints the medians and their ratio. Dockyard runs in this
process (its reconciler, autoscaler and activator, as ``dockyard serve`` wires them) with a
revision whose ``scaleToZeroAfterSeconds`` is 0: after each answer it goes back to zero, and the
next request wakes it again. The request enters at the activator's unix socket, where the proxy
sends requests for a revision at zero. Run as root on a machine with Podman
(scripts/setup-podman.sh):

    .venv/bin/python bench/coldstart.py [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.deps import AppState
from app.domain.principal import Principal
from app.reconcile import ReconcilerOptions
from app.runtime.docker import DockerRuntime
from app.server import create_app
from app.services import containers as svc
from app.settings import Settings
from bench.deploy import raw_run
from tests.support.podman import (
    HTTPD_V1,
    PAGE_V1,
    RUN_LABELS,
    ensure_test_images,
    label_this_run,
    start_service,
)

LABEL_CONTAINER_ID = "dockyard.dev/container-id"


def instances(client: docker.DockerClient, container_id: str) -> int:
    try:
        found = client.containers.list(
            all=True,
            sparse=True,
            filters={"label": f"{LABEL_CONTAINER_ID}={container_id}"},
        )
    except docker.errors.APIError:  # Podman: 500 for a container removed mid-listing
        return -1
    return len(found)


async def wait_zero(client: docker.DockerClient, container_id: str) -> None:
    deadline = time.monotonic() + 60
    while await asyncio.to_thread(instances, client, container_id) != 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the revision did not scale to zero")
        await asyncio.sleep(0.05)


async def first_answer(socket: str) -> float:
    """Send one request to the activator; seconds until the whole answer arrived."""
    start = time.monotonic()
    connector = aiohttp.UnixConnector(path=socket.removeprefix("unix/"))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get("http://bench.localhost/", timeout=aiohttp.ClientTimeout(60)) as response,
    ):
        body = await response.text()
    elapsed = time.monotonic() - start
    if response.status != 200 or body != PAGE_V1:
        raise RuntimeError(f"cold request answered {response.status}: {body[:200]}")
    return elapsed


async def measure(runs: int, work: Path, engine_url: str) -> tuple[list[float], list[float]]:
    settings = Settings(
        data_dir=work,
        runtime="none",
        autoscale_tick_seconds=0.1,
        autoscale_stable_window_seconds=1,
        autoscale_panic_window_seconds=0.5,
    )
    runtime = DockerRuntime(engine_url, stop_timeout=0, labels=RUN_LABELS)
    app = create_app(
        settings, runtime=runtime, reconciler_options=ReconcilerOptions(drain_seconds=0.0)
    )
    state: AppState = app.state.dockyard
    client = docker.DockerClient(base_url=engine_url, version="1.41")
    raw: list[float] = []
    ours: list[float] = []
    try:
        async with app.router.lifespan_context(app):
            assert state.activator is not None
            view = svc.create_container(
                ctx=state.ctx,
                principal=Principal("bench"),
                data={
                    "name": "coldstart",
                    "image": HTTPD_V1,
                    "port": 8080,
                    "scaling": {"scaleToZeroAfterSeconds": 0},
                },
            )
            address = await state.activator.open(view.id, 1)
            await asyncio.to_thread(raw_run, client)  # warm the engine's caches once
            await first_answer(address)
            for _ in range(runs):
                await wait_zero(client, view.id)
                raw.append(await asyncio.to_thread(raw_run, client))
                ours.append(await first_answer(address))
            svc.delete_container(ctx=state.ctx, principal=Principal("bench"), container_id=view.id)
            await wait_zero(client, view.id)
    finally:
        client.close()
        state.ctx.engine.dispose()
    return raw, ours


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    label_this_run()
    ensure_test_images()
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        engine = start_service(work)
        try:
            raw, ours = asyncio.run(measure(args.runs, work, engine.base_url))
        finally:
            engine.stop()
    raw_median, our_median = statistics.median(raw), statistics.median(ours)
    print(f"runs: {args.runs}")
    print(
        f"raw engine run -> first TCP accept:        median {raw_median * 1000:.0f} ms "
        f"(min {min(raw) * 1000:.0f}, max {max(raw) * 1000:.0f})"
    )
    print(
        f"revision at zero -> first request answered: median {our_median * 1000:.0f} ms "
        f"(min {min(ours) * 1000:.0f}, max {max(ours) * 1000:.0f})"
    )
    print(f"ratio: {our_median / raw_median:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
