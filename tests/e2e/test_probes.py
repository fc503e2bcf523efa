"""End to end on Podman: a revision with a readiness probe gets no traffic before it passes.

The ``ready-late`` image opens its port at once but answers 200 on ``/ready`` only 5 s after it
starts. Updating a serving container to it: the status stays ``deploying``, the old revision
keeps serving, and a client polling through the data plane the whole time sees no 5xx.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.e2e.test_local_runtime import server  # noqa: F401 - the fixture
from tests.support.podman import (
    HTTPD_V1,
    PAGE_LATE,
    PAGE_V1,
    READY_AFTER_SECONDS,
    READY_LATE,
    SICKLY,
)
from tests.support.server import Server

pytestmark = pytest.mark.podman

PROBES = {"readiness": {"httpGet": {"path": "/ready"}, "periodSeconds": 1}}


def test_no_traffic_before_the_readiness_probe_passes(server: Server) -> None:  # noqa: F811
    created = server.api(
        "POST", "/v1/containers", json={"name": "late", "image": HTTPD_V1, "ram": "64Mi"}
    )
    assert created.status_code == 201, created.text
    container = created.json()
    cid = container["id"]
    server.wait_for(cid, lambda c: c["status"] == "deployed")

    answers: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                response = client.get(f"{server.url}/", headers={"Host": container["urls"][0]})
                answers.append((time.monotonic(), response.status_code, response.text))
                time.sleep(0.02)

    worker = threading.Thread(target=poll)
    worker.start()
    try:
        time.sleep(0.5)
        updated = server.api(
            "PUT", f"/v1/containers/{cid}", json={"image": READY_LATE, "probes": PROBES}
        )
        switched_at = time.monotonic()
        assert updated.status_code == 200, updated.text
        assert updated.json()["probes"]["readiness"]["httpGet"] == {"path": "/ready"}
        # Well inside the 5 s: the new instance runs and its port is open, yet it is not ready.
        time.sleep(READY_AFTER_SECONDS / 2)
        during = server.api("GET", f"/v1/containers/{cid}").json()
        assert during["status"] == "deploying" and during["readyRevision"] == 1, during
        deployed = server.wait_for(
            cid, lambda c: c["status"] == "deployed" and c["readyRevision"] == 2
        )
        assert deployed["probes"] == updated.json()["probes"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not answers or answers[-1][2] != PAGE_LATE):
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        worker.join()
    failures = [(status, text) for _, status, text in answers if status != 200]
    assert not failures, failures[:3]
    assert {text for _, _, text in answers} == {PAGE_V1, PAGE_LATE}
    first_late = min(at for at, _, text in answers if text == PAGE_LATE)
    assert first_late - switched_at >= READY_AFTER_SECONDS - 0.1
    assert all(text == PAGE_V1 for at, _, text in answers if at < switched_at + 4.5)


def test_a_failing_liveness_probe_restarts_the_instance_and_shows_why(
    server: Server,  # noqa: F811
) -> None:
    probes = {
        "liveness": {"httpGet": {"path": "/healthz"}, "periodSeconds": 1, "failureThreshold": 2}
    }
    created = server.api(
        "POST",
        "/v1/containers",
        json={"name": "sickly", "image": SICKLY, "ram": "64Mi", "probes": probes},
    )
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    server.wait_for(cid, lambda c: c["status"] == "deployed")
    # /healthz disappears 3 s after the first start: two failures later the instance restarts,
    # and the revision's state says why while it comes back.
    reasons: list[tuple[str, str]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        revision = server.api("GET", f"/v1/containers/{cid}/revisions").json()["items"][0]
        reasons.append((revision["stateReason"], revision["stateMessage"]))
        if revision["stateReason"] == "LivenessProbeFailed":
            break
        time.sleep(0.05)
    reason, message = reasons[-1]
    assert reason == "LivenessProbeFailed", reasons[-3:]
    assert "GET :8080/healthz answered 404 2 time(s) in a row" in message
    assert "restart" in message and "the instance" in message
    # The restarted instance stays healthy (the image fails only once) and serves again.
    server.wait_for(
        cid,
        lambda c: (
            c["status"] == "deployed"
            and server.api("GET", f"/v1/containers/{cid}/revisions").json()["items"][0][
                "stateReason"
            ]
            == ""
        ),
    )
    assert server.through_ingress(created.json()).text == PAGE_V1
