"""Cold start: the first request to a revision scaled to zero, answered, against a raw engine run
of the same image -> first TCP accept (serverless part B; target: at most 1.3x).

Both paths start the same busybox httpd image on the same private Podman service in the same run,
interleaved, N times each; the script prints the medians and their ratio. Dockyard runs as
``dockyard serve`` (Caddy in front, the activator, the autoscaler with short windows, the
reconciler) with a revision whose ``scaleToZeroAfterSeconds`` is 0: after each answer it goes back
to zero, and the next request, sent to Caddy with the container's host, wakes it again. Run as
root on a machine with Podman (scripts/setup-podman.sh):

    .venv/bin/python bench/coldstart.py [--runs 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import docker
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import dockyard_on_podman, print_against_raw, raw_run, wait_no_containers
from tests.support.podman import HTTPD_V1, PAGE_V1

LABEL_CONTAINER_ID = "dockyard.dev/container-id"


def wait_zero(client: docker.DockerClient, container_id: str) -> None:
    wait_no_containers(
        client,
        f"{LABEL_CONTAINER_ID}={container_id}",
        what="the revision's instances (it did not scale to zero)",
    )


def first_answer(http: httpx.Client, url: str, host: str) -> float:
    """Send one request through Caddy on a new connection; seconds until the whole answer
    arrived. The client is made once, outside the timing: building an ``httpx.Client`` (its TLS
    context) takes 15-30 ms here, which the raw path does not pay either."""
    start = time.monotonic()
    response = http.get(url, headers={"Host": host})
    elapsed = time.monotonic() - start
    if response.status_code != 200 or response.text != PAGE_V1:
        raise RuntimeError(f"cold request answered {response.status_code}: {response.text[:200]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    raw: list[float] = []
    ours: list[float] = []
    autoscale_env = {
        "DOCKYARD_AUTOSCALE_TICK_SECONDS": "0.1",
        "DOCKYARD_AUTOSCALE_STABLE_WINDOW_SECONDS": "1",
        "DOCKYARD_AUTOSCALE_PANIC_WINDOW_SECONDS": "0.5",
    }
    # No keep-alive: every cold request dials Caddy afresh, as a new client would.
    fresh = httpx.Limits(max_keepalive_connections=0)
    with dockyard_on_podman(autoscale_env) as bench, httpx.Client(timeout=60, limits=fresh) as http:
        client, api, url = bench.client, bench.api, bench.url
        created = api.post(
            "/v1/containers",
            json={
                "name": "coldstart",
                "image": HTTPD_V1,
                "port": 8080,
                "scaling": {"scaleToZeroAfterSeconds": 0},
            },
        )
        created.raise_for_status()
        container_id, host = created.json()["id"], created.json()["urls"][0]
        raw_run(client)  # warm the engine's caches once for both paths
        wait_zero(client, container_id)
        first_answer(http, url, host)  # and the first wake of this server
        for _ in range(args.runs):
            wait_zero(client, container_id)
            raw.append(raw_run(client))
            ours.append(first_answer(http, url, host))
        api.delete(f"/v1/containers/{container_id}").raise_for_status()
        wait_zero(client, container_id)
    print_against_raw(args.runs, raw, ours, "revision at zero -> first answer via Caddy")


if __name__ == "__main__":
    main()
