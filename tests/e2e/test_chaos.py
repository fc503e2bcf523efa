"""Chaos on real services (issue 16): the leader of two `dockyard serve` replicas is killed with
SIGKILL in the middle of deploys; the standby takes over and everything acknowledged converges.

Real Podman, a real shared database (SQLite here, PostgreSQL in the CI's second pass) and a
real Redis bus; the test kills only the server process it started.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.test_log_streams import bearer, serve_env
from tests.support.podman import HTTPD_V1, HTTPD_V2, PodmanService
from tests.support.server import Server, free_port

pytestmark = pytest.mark.podman


def test_killing_the_leader_mid_deploy_loses_nothing_acknowledged(
    tmp_path: Path, database_url: str, podman_service: PodmanService, redis_url: str
) -> None:
    env = serve_env(tmp_path, database_url, podman_service, DOCKYARD_BROADCAST_URL=redis_url)
    a = Server(env, free_port(), tmp_path / "a.log", headers=bearer(tmp_path))
    b = Server(env, free_port(), tmp_path / "b.log", headers=bearer(tmp_path))
    a.start()
    time.sleep(1)  # A wins the election before B exists
    b.start()
    try:
        acknowledged: dict[str, str] = {}
        for n in range(3):
            body = {"name": f"web-{n}", "image": HTTPD_V1, "port": 8080, "ram": "64Mi"}
            created = a.api("POST", "/v1/containers", json=body)
            assert created.status_code == 201, created.text
            acknowledged[created.json()["id"]] = HTTPD_V1
        # An update acknowledged by the follower while the leader is busy deploying.
        first = next(iter(acknowledged))
        updated = b.api("PUT", f"/v1/containers/{first}", json={"image": HTTPD_V2})
        assert updated.status_code == 200, updated.text
        acknowledged[first] = HTTPD_V2
        before = [b.api("GET", f"/v1/containers/{cid}").json() for cid in acknowledged]
        unfinished = [
            c["id"]
            for c in before
            if c["status"] != "deployed" or c["readyRevision"] != c["revision"]
        ]

        a.kill()  # SIGKILL: no shutdown, the leader's lock dies with it
        # Mid-deploy: work the dead leader had not finished, which only B can complete.
        assert unfinished, before

        for container_id, image in acknowledged.items():
            state = b.wait_for(
                container_id,
                lambda c, image=image: c["status"] == "deployed" and c["image"] == image,
                timeout=120,
            )
            assert b.through_ingress(state).status_code == 200
        listed = b.api("GET", "/v1/containers", params={"rowsPerPage": 100}).json()
        assert {item["id"] for item in listed["items"]} == set(acknowledged)
        revisions = b.api("GET", f"/v1/containers/{first}/revisions").json()
        assert [r["revisionNumber"] for r in revisions["items"]] == [2, 1]
    finally:
        # The engine containers carry this run's label: the session removes them.
        b.stop()
        a.stop()
