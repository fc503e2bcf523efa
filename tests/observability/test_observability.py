"""/metrics, request ids and the server's log format, on a real app (and a real engine)."""

from __future__ import annotations

import json
import logging
import logging.config
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.observability.logs import log_config
from app.server import create_app
from app.settings import Settings
from tests.support.bodies import HELLO

DASHBOARD = Path(__file__).resolve().parents[2] / "k8s" / "grafana" / "dockyard-dashboard.json"
SAMPLE = re.compile(r"^(\w+)\{(.*)\} (\S+)$", re.MULTILINE)


def samples(text: str, name: str) -> dict[str, float]:
    return {
        labels: float(value) for metric, labels, value in SAMPLE.findall(text) if metric == name
    }


def test_http_and_graphql_requests_are_counted_by_template(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    headers = auth("alice")
    created = client.post("/v1/containers", json=HELLO, headers=headers)
    assert created.status_code == 201
    client.get(f"/v1/containers/{created.json()['id']}", headers=headers)
    client.get("/v1/containers/nope", headers=headers)
    client.post("/graphql", json={"query": "query Mine { containers { total } }"}, headers=headers)
    text = client.get("/metrics").text
    requests = samples(text, "dockyard_http_requests_total")
    assert requests['method="POST",route="/v1/containers",status="201"'] == 1
    assert requests['method="GET",route="/v1/containers/{id}",status="200"'] == 1
    # ids never become label values: the 404 counts under the same template
    assert not any("nope" in labels for labels in requests)
    count = samples(text, "dockyard_http_request_duration_seconds_count")
    assert count['method="POST",route="/v1/containers"'] == 1
    operations = samples(text, "dockyard_graphql_operations_total")
    assert operations['operation="Mine",outcome="ok",type="query"'] == 1


def test_metrics_guarded_by_a_token(tmp_path: Path, database_url: str) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        runtime="none",
        metrics="token",
        metrics_token="s3cret",
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and "dockyard_http_requests_total" in ok.text
    with pytest.raises(ValueError, match="METRICS_TOKEN"):
        Settings(data_dir=tmp_path, runtime="none", metrics="token")


def test_metrics_off(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url=database_url, runtime="none", metrics="off")
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 404


def test_request_id_in_header_and_problem_body(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    answer = client.get("/v1/containers/nope", headers=auth("alice"))
    request_id = answer.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert answer.json()["requestId"] == request_id
    given = client.get("/healthz", headers={"X-Request-ID": "client-trace.42"})
    assert given.headers["x-request-id"] == "client-trace.42"
    # a hostile id (spaces, too long) is replaced, never echoed
    hostile = client.get("/healthz", headers={"X-Request-ID": "a b " + "x" * 300})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])


def test_json_log_lines_escape_user_text(capsys: pytest.CaptureFixture[str]) -> None:
    config = log_config("info", "json")
    config["handlers"]["default"]["stream"] = "ext://sys.stdout"
    logging.config.dictConfig(config)
    try:
        logging.getLogger("app.test").warning("env key %r\nforged line", "A\x1b[31m\x00")
        lines = capsys.readouterr().out.splitlines()
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["level"] == "WARNING" and record["logger"] == "app.test"
    assert "forged line" in record["message"] and record["request_id"] == "-"


@pytest.fixture
def engine_client(tmp_path: Path, database_url: str, podman_url: str) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, runtime="docker", docker_host=podman_url
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.podman
def test_dashboard_uses_only_metrics_the_server_exposes(engine_client: TestClient) -> None:
    """Every series a panel of the shipped Grafana dashboard queries is one /metrics exposes
    (with a real engine, so the reconciler's and the log hub's are there too)."""
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        metric
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for metric in re.findall(r"\b(dockyard_\w+)", target["expr"])
    }
    assert queried, "the dashboard queries nothing"
    # Some series exist only once their source has something to say (the seconds since the
    # reconciler's last resync appear after its first one): read until they are all there.
    deadline = time.monotonic() + 20
    while True:
        text = engine_client.get("/metrics").text
        names: set[str] = set()
        for name, kind in re.findall(r"^# TYPE (\w+) (\w+)", text, re.M):
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)
        if queried <= names or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert queried <= names, sorted(queried - names)
    for family in ("dockyard_reconciler_leader", "dockyard_log_lines_in_total"):
        assert family in names
