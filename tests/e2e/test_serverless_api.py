"""The scaling and traffic API on a real `dockyard serve` deploying on Podman: `latest` targets
resolve to the revision the reconciler found ready, a traffic change makes no new revision and
leaves the serving revision alone, pinned targets survive an update, and a rollback takes the old
revision's scaling with it. (Routing of splits and tag hosts is the data plane's, tested there.)"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.test_local_runtime import server  # noqa: F401 (the fixture)
from tests.support.podman import HTTPD_V1, HTTPD_V2, PAGE_V1, PodmanService
from tests.support.server import Server

pytestmark = pytest.mark.podman


def revisions(api: Server, container_id: str) -> dict[int, dict[str, Any]]:
    items = api.api("GET", f"/v1/containers/{container_id}/revisions").json()["items"]
    return {item["revisionNumber"]: item for item in items}


def test_traffic_and_scaling_through_a_real_deploy(
    server: Server,  # noqa: F811
    podman_service: PodmanService,
) -> None:
    body = {
        "name": "web",
        "image": HTTPD_V1,
        "port": 8080,
        "cpu": 0.5,
        "ram": "64Mi",
        "scaling": {"minInstances": 1, "concurrency": 10},
    }
    created = server.api("POST", "/v1/containers", json=body)
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    deployed = server.wait_for(cid, lambda c: c["status"] == "deployed")
    assert deployed["traffic"] == [
        {"revision": 1, "latest": True, "percent": 100, "tag": None, "url": None}
    ]
    assert revisions(server, cid)[1]["trafficPercent"] == 100

    # A traffic change: no new revision, the revision keeps serving, the tag URL is listed.
    routed = server.api(
        "PUT",
        f"/v1/containers/{cid}/traffic",
        json={"traffic": [{"revision": 1, "percent": 100, "tag": "stable"}]},
    )
    assert routed.status_code == 200, routed.text
    assert routed.json()["revision"] == 1
    assert routed.json()["urls"][1] == f"stable---{routed.json()['urls'][0]}"
    assert server.through_ingress(deployed).text == PAGE_V1

    # An update with other scaling: revision 2 becomes ready, the pinned target stays on 1.
    updated = server.api(
        "PUT",
        f"/v1/containers/{cid}",
        json={"image": HTTPD_V2, "scaling": {"concurrency": 50}},
    )
    assert updated.json()["scaling"]["concurrency"] == 50
    assert updated.json()["scaling"]["minInstances"] == 1
    ready = server.wait_for(cid, lambda c: c["readyRevision"] == 2)
    assert [(t["revision"], t["percent"]) for t in ready["traffic"]] == [(1, 100)]
    shares = {n: r["trafficPercent"] for n, r in revisions(server, cid).items()}
    assert shares == {2: 0, 1: 100}

    # Back to latest, then a rollback: latest follows revision 3, which has revision 1's scaling.
    latest = server.api(
        "PUT",
        f"/v1/containers/{cid}/traffic",
        json={"traffic": [{"latest": True, "percent": 100}]},
    )
    assert latest.json()["traffic"][0]["revision"] == 2
    rolled_back = server.api("POST", f"/v1/containers/{cid}/rollback", json={"revisionNumber": 1})
    assert rolled_back.json()["scaling"]["concurrency"] == 10
    final = server.wait_for(cid, lambda c: c["status"] == "deployed" and c["readyRevision"] == 3)
    assert final["traffic"][0]["revision"] == 3
    # The data plane is reprogrammed a moment after the status changed (batched Caddy loads:
    # a known gap of issue 10), so the page is read until it converged.
    deadline = time.monotonic() + 10
    page = server.through_ingress(final).text
    while page != PAGE_V1 and time.monotonic() < deadline:
        time.sleep(0.2)
        page = server.through_ingress(final).text
    assert page == PAGE_V1
    assert server.api("DELETE", f"/v1/containers/{cid}").status_code == 204
