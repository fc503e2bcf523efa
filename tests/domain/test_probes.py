"""Validation of ``probes``: Kubernetes' defaults and bounds, errors naming the exact path."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain.gpus import load_catalog
from app.domain.spec import Limits, spec_for_create, spec_for_update
from tests.support.validation import field_errors

CATALOG = load_catalog()
LIMITS = Limits(max_startup_seconds=240, max_gpu_startup_seconds=1800)
BASE = {"name": "web", "image": "nginx:1.27"}


def create(probes: object, **extra: Any) -> Any:
    return spec_for_create({**BASE, **extra, "probes": probes}, limits=LIMITS, catalog=CATALOG)


def errors_of(probes: object, **extra: Any) -> dict[str, str]:
    return field_errors(lambda: create(probes, **extra))


def test_no_probes_keeps_the_stored_json_unchanged() -> None:
    spec = spec_for_create(BASE, limits=LIMITS, catalog=CATALOG)
    assert spec.probes is None
    assert "probes" not in spec.to_json()
    assert create(None).probes is None


def test_defaults_are_kubernetes_ones() -> None:
    spec = create({"readiness": {"httpGet": {"path": "/ready"}}, "liveness": {"tcpSocket": {}}})
    assert spec.to_json()["probes"] == {
        "readiness": {
            "httpGet": {"path": "/ready"},
            "initialDelaySeconds": 0,
            "periodSeconds": 10,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "liveness": {
            "tcpSocket": {},
            "initialDelaySeconds": 0,
            "periodSeconds": 10,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
    }


def test_whole_numbers_may_be_written_as_floats() -> None:
    spec = create({"readiness": {"tcpSocket": {"port": 9090.0}, "periodSeconds": 2.0}})
    assert spec.to_json()["probes"]["readiness"]["periodSeconds"] == 2
    assert (
        "whole number"
        in errors_of({"readiness": {"tcpSocket": {}, "periodSeconds": 2.5}})[
            "probes.readiness.periodSeconds"
        ]
    )


def test_http_path_defaults_to_root_and_ports_may_be_strings() -> None:
    spec = create({"readiness": {"httpGet": {"port": "9090"}}})
    assert spec.to_json()["probes"]["readiness"]["httpGet"] == {"path": "/", "port": 9090}


@pytest.mark.parametrize(
    "probes,field,fragment",
    [
        ({"readiness": {"httpGet": {"path": "ready"}}}, "probes.readiness.httpGet.path", '"/"'),
        ({"readiness": {"httpGet": {"path": 5}}}, "probes.readiness.httpGet.path", "string"),
        ({"readiness": {"httpGet": {"path": "/a b"}}}, "probes.readiness.httpGet.path", "spaces"),
        ({"readiness": {"httpGet": {"pat": "/"}}}, "probes.readiness.httpGet.pat", "path, port"),
        ({"readiness": {"httpGet": {"port": 0}}}, "probes.readiness.httpGet.port", "1 to 65535"),
        ({"liveness": {"tcpSocket": {"port": "x"}}}, "probes.liveness.tcpSocket.port", "port"),
        ({"startup": {}}, "probes.startup", "exactly one of httpGet, tcpSocket or exec"),
        (
            {"startup": {"tcpSocket": {}, "exec": {"command": ["true"]}}},
            "probes.startup",
            "got tcpSocket and exec",
        ),
        ({"liveness": {"exec": {}}}, "probes.liveness.exec.command", "non-empty list"),
        ({"liveness": {"exec": {"command": []}}}, "probes.liveness.exec.command", "non-empty"),
        ({"liveness": {"exec": {"command": [1]}}}, "probes.liveness.exec.command[0]", "strings"),
        (
            {"liveness": {"exec": {"command": ["a\x00"]}}},
            "probes.liveness.exec.command[0]",
            "NUL",
        ),
        ({"readines": {}}, "probes.readines", "startup, readiness, liveness"),
        ({"readiness": {"tcpSocket": {}, "period": 1}}, "probes.readiness.period", "periodSeconds"),
        ([], "probes", "null or an object"),
        ({"readiness": []}, "probes.readiness", "object"),
        ({"readiness": {"tcpSocket": 1}}, "probes.readiness.tcpSocket", "object"),
        (
            {"readiness": {"tcpSocket": {}, "periodSeconds": 0}},
            "probes.readiness.periodSeconds",
            "1 to 3600",
        ),
        (
            {"readiness": {"tcpSocket": {}, "periodSeconds": "5"}},
            "probes.readiness.periodSeconds",
            "whole",
        ),
        (
            {"readiness": {"tcpSocket": {}, "initialDelaySeconds": -1}},
            "probes.readiness.initialDelaySeconds",
            "0 to 3600",
        ),
        (
            {"readiness": {"tcpSocket": {}, "failureThreshold": 0}},
            "probes.readiness.failureThreshold",
            "1 to 1000",
        ),
        (
            {"liveness": {"tcpSocket": {}, "successThreshold": 2}},
            "probes.liveness.successThreshold",
            "must be 1",
        ),
        (
            {"startup": {"tcpSocket": {}, "successThreshold": 2}},
            "probes.startup.successThreshold",
            "must be 1",
        ),
        (
            {"readiness": {"httpGet": None, "tcpSocket": {}}},
            "probes.readiness.httpGet",
            'an object, e.g. {"path": "/ready"',
        ),
        ({"startupBudgetSeconds": 0}, "probes.startupBudgetSeconds", "from 1 to 240"),
        ({"startupBudgetSeconds": 241}, "probes.startupBudgetSeconds", "without GPUs"),
        ({"startupBudgetSeconds": "60"}, "probes.startupBudgetSeconds", "whole number"),
        (
            {"startup": {"tcpSocket": {}, "failureThreshold": 30, "periodSeconds": 10}},
            "probes.startup",
            "asked for 300",
        ),
        (
            {"startup": {"tcpSocket": {}}, "startupBudgetSeconds": 60},
            "probes.startupBudgetSeconds",
            "conflicts with probes.startup",
        ),
    ],
)
def test_errors_name_the_path(probes: object, field: str, fragment: str) -> None:
    errors = errors_of(probes)
    assert field in errors, errors
    assert fragment in errors[field]


def test_gpu_revisions_may_ask_for_the_long_budget() -> None:
    assert create({"startupBudgetSeconds": 1800}, gpu=1).probes.startup_budget_seconds == 1800
    assert (
        "GPU revisions"
        in errors_of({"startupBudgetSeconds": 1801}, gpu=1)["probes.startupBudgetSeconds"]
    )
    startup = {"tcpSocket": {}, "periodSeconds": 10, "failureThreshold": 180}
    assert create({"startup": startup}, gpu=1).probes.startup is not None


def test_update_replaces_probes_as_a_whole_and_null_removes_them() -> None:
    current = create({"readiness": {"httpGet": {"path": "/ready"}, "periodSeconds": 1}})
    kept = spec_for_update(current, {"image": "nginx:1.28"}, limits=LIMITS, catalog=CATALOG)
    assert kept.probes == current.probes
    replaced = spec_for_update(
        current, {"probes": {"liveness": {"tcpSocket": {}}}}, limits=LIMITS, catalog=CATALOG
    )
    assert replaced.probes is not None and replaced.probes.readiness is None
    removed = spec_for_update(current, {"probes": None}, limits=LIMITS, catalog=CATALOG)
    assert removed.probes is None and "probes" not in removed.to_json()


def test_unset_probe_port_follows_the_container_port() -> None:
    current = create({"readiness": {"httpGet": {"path": "/ready"}}})
    moved = spec_for_update(current, {"port": 9000}, limits=LIMITS, catalog=CATALOG)
    assert moved.to_json()["probes"]["readiness"]["httpGet"] == {"path": "/ready"}
    assert moved.port == 9000
