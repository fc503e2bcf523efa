"""End to end on a real engine: the `dockyard serve` process deploys busybox containers on Podman.

Create → deployed → the page through the built-in ingress → update with no failed request during
the switch → a missing image fails with a reason → delete empties the engine → a server killed
with SIGKILL mid-deploy converges after restart with no duplicate engine containers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from app.db import installation_id, make_engine
from tests.support.podman import (
    CRASH,
    ECHO,
    HTTPD_V1,
    HTTPD_V2,
    PAGE_V1,
    PAGE_V2,
    RUN_ID,
    RUN_LABELS,
    PodmanService,
)
from tests.support.server import Server
from tests.support.serving import bearer, serve_env, serving

pytestmark = pytest.mark.podman


@pytest.fixture
def server(tmp_path: Path, database_url: str, podman_service: PodmanService) -> Iterator[Server]:
    env = serve_env(tmp_path, database_url, podman_service)
    with serving(env, tmp_path / "server.log", bearer(tmp_path)) as server:
        yield server


def engine_containers(podman_service: PodmanService, container_id: str) -> list[Any]:
    client = docker.DockerClient(base_url=podman_service.base_url, version="1.41")
    try:
        for attempt in range(10):
            try:
                return list(
                    client.containers.list(
                        all=True,
                        filters={"label": f"dockyard.dev/container-id={container_id}"},
                        ignore_removed=True,  # a removal in progress is not an error
                    )
                )
            except docker.errors.APIError:
                # Podman answers 500 "no such container" (not 404) for one being removed.
                if attempt == 9:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")
    finally:
        client.close()


def wait_engine(
    podman_service: PodmanService, container_id: str, count: int, timeout: float = 60
) -> list[Any]:
    deadline = time.monotonic() + timeout
    found = engine_containers(podman_service, container_id)
    while len(found) != count and time.monotonic() < deadline:
        time.sleep(0.3)
        found = engine_containers(podman_service, container_id)
    assert len(found) == count, [c.name for c in found]
    return found


def test_deploy_update_fail_delete(server: Server, podman_service: PodmanService) -> None:
    created = server.api(
        "POST",
        "/v1/containers",
        json={"name": "web", "image": HTTPD_V1, "port": 8080, "cpu": 0.5, "ram": "64Mi"},
    )
    assert created.status_code == 201, created.text
    container = created.json()
    cid = container["id"]
    assert container["status"] == "deploying"
    deployed = server.wait_for(cid, lambda c: c["status"] == "deployed")
    assert deployed["readyRevision"] == 1
    page = server.through_ingress(container)
    assert page.status_code == 200 and page.text == PAGE_V1
    (engine,) = engine_containers(podman_service, cid)
    assert engine.labels["dockyard.dev/revision"] == "1"
    assert engine.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    assert engine.attrs["HostConfig"]["Memory"] == 64 * 2**20

    # Update while a client keeps requesting: every answer is a page of v1 or v2, never an error.
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                response = client.get(f"{server.url}/", headers={"Host": container["urls"][0]})
                answers.append((response.status_code, response.text))
                time.sleep(0.02)

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        updated = server.api("PUT", f"/v1/containers/{cid}", json={"image": HTTPD_V2})
        assert updated.status_code == 200 and updated.json()["status"] == "deploying"
        server.wait_for(cid, lambda c: c["status"] == "deployed" and c["readyRevision"] == 2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not answers or answers[-1][1] != PAGE_V2):
            time.sleep(0.1)
        wait_engine(podman_service, cid, 1)  # the old revision is retired after the drain
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
    assert answers and all(status == 200 for status, _ in answers), [
        a for a in answers if a[0] != 200
    ][:3]
    assert {text for _, text in answers} <= {PAGE_V1, PAGE_V2}
    assert answers[-1][1] == PAGE_V2
    (engine,) = engine_containers(podman_service, cid)
    assert engine.labels["dockyard.dev/revision"] == "2"

    # A revision whose image does not exist fails with a reason; revision 2 keeps serving.
    broken = server.api("PUT", f"/v1/containers/{cid}", json={"image": "localhost/nope:v1"})
    assert broken.status_code == 200
    failed = server.wait_for(cid, lambda c: c["status"] == "failed")
    assert "localhost/nope:v1" in failed["statusReason"]
    assert "revision 2 keeps serving" in failed["statusReason"]
    assert server.through_ingress(container).text == PAGE_V2

    # Unknown hosts are 404; delete answers at once and the engine is emptied.
    unknown = httpx.get(f"{server.url}/", headers={"Host": f"{'a' * 26}.localhost:{server.port}"})
    assert unknown.status_code == 404
    assert server.api("DELETE", f"/v1/containers/{cid}").status_code == 204
    assert server.api("GET", f"/v1/containers/{cid}").status_code == 404
    wait_engine(podman_service, cid, 0)
    assert server.through_ingress(container).status_code == 404


def test_a_missing_image_fails_with_a_reason_and_a_redeploy_recovers(
    server: Server, podman_service: PodmanService
) -> None:
    repository = f"localhost/dockyard-test-late-{RUN_ID}"  # this test's own tag, removed after
    image = f"{repository}:v1"
    created = server.api(
        "POST", "/v1/containers", json={"name": "ghost", "image": image, "port": 8080}
    ).json()
    failed = server.wait_for(created["id"], lambda c: c["status"] == "failed")
    assert image in failed["statusReason"] and "redeploy" in failed["statusReason"]
    not_ready = server.through_ingress(created)
    # Nothing retries a failed pull: no Retry-After, and the answer says what to do.
    assert not_ready.status_code == 503 and "retry-after" not in not_ready.headers
    assert "redeploy" in not_ready.text
    client = docker.DockerClient(base_url=podman_service.base_url, version="1.41")
    try:
        client.images.get(HTTPD_V1).tag(repository, "v1")  # the image now exists locally
        redeployed = server.api("POST", f"/v1/containers/{created['id']}/redeploy")
        assert redeployed.status_code == 200 and redeployed.json()["revision"] == 2
        server.wait_for(created["id"], lambda c: c["status"] == "deployed")
        assert server.through_ingress(created).text == PAGE_V1
        server.api("DELETE", f"/v1/containers/{created['id']}")
        wait_engine(podman_service, created["id"], 0)
    finally:
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(image)
        client.close()


def test_kill_mid_deploy_then_restart_converges(
    server: Server, podman_service: PodmanService
) -> None:
    created = server.api(
        "POST", "/v1/containers", json={"name": "phoenix", "image": HTTPD_V1, "port": 8080}
    ).json()
    time.sleep(0.3)  # the reconciler is creating the engine container right now
    server.kill()
    server.start()
    deployed = server.wait_for(created["id"], lambda c: c["status"] == "deployed")
    assert deployed["readyRevision"] == 1
    assert len(engine_containers(podman_service, created["id"])) == 1  # no duplicate
    assert server.through_ingress(created).text == PAGE_V1

    # delete while the server is down: the tombstone is honoured after the restart
    assert server.api("DELETE", f"/v1/containers/{created['id']}").status_code == 204
    server.kill()
    server.start()
    wait_engine(podman_service, created["id"], 0)


def test_orphans_are_collected_on_startup(
    server: Server, podman_service: PodmanService, database_url: str
) -> None:
    engine = make_engine(database_url)
    instance = installation_id(engine)
    engine.dispose()
    client = docker.DockerClient(base_url=podman_service.base_url, version="1.41")
    orphan_id = "00000000-0000-4000-8000-00000000beef"
    foreign_id = "00000000-0000-4000-8000-00000000f00d"
    labels = {"dockyard.dev/revision": "1", "dockyard.dev/managed-by": "dockyard", **RUN_LABELS}
    for leftover in (orphan_id, foreign_id):  # from an interrupted earlier run
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(f"dockyard-{leftover}-r1").remove(force=True)
    foreign = None
    try:
        client.containers.create(
            HTTPD_V1,
            name=f"dockyard-{orphan_id}-r1",
            labels={
                **labels,
                "dockyard.dev/container-id": orphan_id,
                "dockyard.dev/instance": instance,
            },
        )
        # another installation's container on the same engine is none of our business
        foreign = client.containers.create(
            HTTPD_V1,
            name=f"dockyard-{foreign_id}-r1",
            labels={
                **labels,
                "dockyard.dev/container-id": foreign_id,
                "dockyard.dev/instance": "someone-else",
            },
        )
        server.stop()
        server.start()
        wait_engine(podman_service, orphan_id, 0)
        time.sleep(1)
        assert len(engine_containers(podman_service, foreign_id)) == 1
    finally:
        if foreign is not None:
            foreign.remove(force=True)
        client.close()


def test_ingress_passes_methods_headers_and_bodies(server: Server) -> None:
    created = server.api(
        "POST", "/v1/containers", json={"name": "echo", "image": ECHO, "port": 8080}
    ).json()
    server.wait_for(created["id"], lambda c: c["status"] == "deployed")
    host = created["urls"][0]
    # 2.6 MB each way, streamed through the proxy (busybox's CGI wants a Content-Length)
    body = b"".join(b"chunk %06d\n" % n for n in range(200_000))

    with httpx.Client(timeout=60) as client:
        for method in ("POST", "PUT", "PATCH", "DELETE", "GET"):
            response = client.request(
                method,
                f"{server.url}/cgi-bin/echo?a=1&b=two",
                headers={"Host": host, "X-Custom": "kept", "X-Forwarded-For": "203.0.113.9"},
                content=body if method == "POST" else b"small" if method != "GET" else None,
            )
            assert response.status_code == 200, (method, response.text[:300])
            assert response.headers["x-echo"] == "yes"
            head, _, echoed = response.content.partition(b"body:\n")
            text = head.decode()
            assert f"method={method}" in text
            assert "query=a=1&b=two" in text
            assert "HTTP_X_CUSTOM=kept" in text
            assert f"HTTP_HOST={host}" in text
            assert "HTTP_X_FORWARDED_FOR=203.0.113.9, 127.0.0.1" in text
            assert f"HTTP_X_FORWARDED_HOST={host}" in text
            assert "HTTP_X_FORWARDED_PROTO=http" in text
            if method == "POST":  # busybox hands only POST bodies to CGI scripts
                assert echoed == body


def test_phase_timeline_adds_up_to_the_deploy_time(server: Server) -> None:
    """Each revision records when it entered each phase; on real Podman the phases of a served
    revision add up to what a client observes from POST to `deployed`, within 5 %.

    The client brackets the two moments: acceptance happened while the POST ran, and serving
    between the start of the last read that still said `deploying` and the end of the read that
    said `deployed`; request overheads are outside the timeline, so they widen the bracket
    instead of counting as error."""
    before_post = time.monotonic()
    created = server.api("POST", "/v1/containers", json={"name": "timed", "image": HTTPD_V1})
    after_post = last_deploying = time.monotonic()
    cid = created.json()["id"]
    while True:
        read_start = time.monotonic()
        status = server.api("GET", f"/v1/containers/{cid}").json()["status"]
        read_end = time.monotonic()
        if status == "deployed":
            break
        assert read_end - before_post < 60, status
        last_deploying = read_start
        time.sleep(0.005)
    revision = server.api("GET", f"/v1/containers/{cid}/revisions").json()["items"][0]
    phases = revision["phases"]
    names = [p["phase"] for p in phases]
    assert names == ["accepted", "scheduled", "imageReady", "started", "ready", "serving"]
    assert all(p["durationMs"] >= 0 for p in phases[:-1]) and phases[-1]["durationMs"] is None
    total = sum(p["durationMs"] for p in phases[:-1]) / 1000
    shortest, longest = last_deploying - after_post, read_end - before_post
    slack = 0.05 * longest
    assert shortest - slack <= total <= longest + slack, (shortest, total, longest, phases)

    crashed = server.api("POST", "/v1/containers", json={"name": "crashy", "image": CRASH})
    crash_id = crashed.json()["id"]
    server.wait_for(crash_id, lambda c: c["status"] == "failed")
    timeline = server.api("GET", f"/v1/containers/{crash_id}/revisions").json()["items"][0]
    last = timeline["phases"][-1]
    assert last["phase"] == "failed" and last["reason"].startswith("started: "), timeline


def test_the_data_plane_outlives_a_killed_server_and_is_adopted(
    server: Server, podman_service: PodmanService
) -> None:
    """kill -9 of `dockyard serve` under load: Caddy keeps serving the ready revision, the
    restarted server adopts that same Caddy; a killed Caddy is started again and reprogrammed."""
    created = server.api(
        "POST", "/v1/containers", json={"name": "steady", "image": HTTPD_V1, "port": 8080}
    ).json()
    server.wait_for(created["id"], lambda c: c["status"] == "deployed")
    host = created["urls"][0]
    answers: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                response = client.get(f"{server.url}/", headers={"Host": host})
                answers.append(response.status_code)
                time.sleep(0.01)

    caddy = server.caddy_pid()
    assert caddy is not None
    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        time.sleep(0.5)
        server.kill()
        served_before = len(answers)
        time.sleep(2)  # nobody supervises Caddy now
        assert len(answers) > served_before + 20
        server.start()
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
    assert answers and set(answers) == {200}, [a for a in answers if a != 200][:5]
    assert server.caddy_pid() == caddy  # adopted, not replaced
    assert server.through_ingress(created).text == PAGE_V1

    os.kill(caddy, signal.SIGKILL)  # the Caddy this test's server started
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if server.through_ingress(created).status_code == 200:
                break
        time.sleep(0.2)
    assert server.through_ingress(created).text == PAGE_V1
    assert server.caddy_pid() not in (None, caddy)
    server.api("DELETE", f"/v1/containers/{created['id']}")
    wait_engine(podman_service, created["id"], 0)
