"""Deploy latency: Dockyard's POST → `deployed` against a raw engine run → first TCP accept.

Both paths start the same busybox httpd image on the same Podman service in the same run, ten
times each, interleaved; the script prints the medians and their ratio (target: at most 1.15).
Dockyard's side learns ``deployed`` as a client does (``dockyard deploy``): from the container's
status events, pushed; ``--poll`` polls ``GET /v1/containers/{id}`` every 5 ms instead (the
previous method: ~200 requests a second competing with the deploy for the CPU).
Run as root on a machine with Podman (scripts/setup-podman.sh):

    .venv/bin/python bench/deploy.py [--runs 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import (
    dockyard_on_podman,
    follow_until_deployed,
    print_against_raw,
    raw_run,
    wait_deployed,
    wait_no_containers,
)
from tests.support.podman import HTTPD_V1

POLL = 0.005


def dockyard_deploy(api: httpx.Client, n: int, *, poll: bool = False) -> float:
    """POST a container, then follow its events (or poll) until its status is `deployed`."""
    start = time.monotonic()
    created = api.post(
        "/v1/containers", json={"name": f"bench-{n}", "image": HTTPD_V1, "port": 8080}
    )
    created.raise_for_status()
    container_id = created.json()["id"]
    if poll:
        wait_deployed(api, container_id, poll=POLL)
    else:
        follow_until_deployed(api, container_id)
    elapsed = time.monotonic() - start
    api.delete(f"/v1/containers/{container_id}").raise_for_status()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--poll", action="store_true", help="poll the status every 5 ms")
    args = parser.parse_args()
    with dockyard_on_podman() as bench:
        raw_run(bench.client)  # warm the engine's caches once for both paths
        raw, ours = [], []
        for n in range(args.runs):
            raw.append(raw_run(bench.client))
            ours.append(dockyard_deploy(bench.api, n, poll=args.poll))
            wait_no_containers(bench.client)  # no removal overlaps the next measurement
    print_against_raw(args.runs, raw, ours, "dockyard POST -> deployed", target=1.15)


if __name__ == "__main__":
    main()
