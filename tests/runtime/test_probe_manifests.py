"""Probes on Kubernetes Deployments and Knative Services: table tests, strictly schema-validated."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from app.domain.gpus import load_catalog
from app.domain.spec import Limits, spec_for_create
from app.reconcile import workload_probes
from app.runtime.base import Probe, Probes
from app.runtime.knative_manifests import make_knative_service
from tests.runtime.test_k8s_manifests import BASE, CFG, pod_spec
from tests.runtime.test_knative_manifests import validate as validate_knative

HTTP = Probe(action="httpGet", port=8080, path="/ready", period_seconds=2, failure_threshold=5)
TIMING = {
    "initialDelaySeconds": 0,
    "periodSeconds": 10,
    "timeoutSeconds": 1,
    "successThreshold": 1,
    "failureThreshold": 3,
}
READY_HTTP = {
    "httpGet": {"path": "/ready", "port": 8080},
    **TIMING,
    "periodSeconds": 2,
    "failureThreshold": 5,
}


def container(probes: Probes) -> dict[str, Any]:
    found: dict[str, Any] = pod_spec(dataclasses.replace(BASE, probes=probes))["containers"][0]
    return found


def knative_container(probes: Probes) -> dict[str, Any]:
    manifest = make_knative_service(dataclasses.replace(BASE, probes=probes), CFG)
    validate_knative(manifest)
    found: dict[str, Any] = manifest["spec"]["template"]["spec"]["containers"][0]
    return found


def probe_fields(found: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in found.items() if key.endswith("Probe")}


@pytest.mark.parametrize(
    "probes,expected",
    [
        (
            Probes(),
            {
                "readinessProbe": {
                    "tcpSocket": {"port": 8080},
                    "periodSeconds": 5,
                    "failureThreshold": 3,
                }
            },
        ),
        (Probes(readiness=HTTP), {"readinessProbe": READY_HTTP}),
        (
            Probes(liveness=Probe(action="exec", command=("cat", "/tmp/ok"))),
            {
                "readinessProbe": {
                    "tcpSocket": {"port": 8080},
                    "periodSeconds": 5,
                    "failureThreshold": 3,
                },
                "livenessProbe": {"exec": {"command": ["cat", "/tmp/ok"]}, **TIMING},
            },
        ),
        (
            Probes(
                startup=Probe(action="tcpSocket", port=9090, failure_threshold=30),
                readiness=HTTP,
            ),
            {
                "startupProbe": {"tcpSocket": {"port": 9090}, **TIMING, "failureThreshold": 30},
                "readinessProbe": READY_HTTP,
            },
        ),
        (
            # A budget without a startup probe: the readiness check every 10 s, ceil(95 / 10) times.
            Probes(readiness=HTTP, startup_budget_seconds=95),
            {
                "startupProbe": {
                    "httpGet": {"path": "/ready", "port": 8080},
                    **TIMING,
                    "failureThreshold": 10,
                },
                "readinessProbe": READY_HTTP,
            },
        ),
        (
            Probes(startup_budget_seconds=1800),
            {
                "startupProbe": {"tcpSocket": {"port": 8080}, **TIMING, "failureThreshold": 180},
                "readinessProbe": {
                    "tcpSocket": {"port": 8080},
                    "periodSeconds": 5,
                    "failureThreshold": 3,
                },
            },
        ),
    ],
)
def test_deployment_probes(probes: Probes, expected: dict[str, Any]) -> None:
    assert probe_fields(container(probes)) == expected


@pytest.mark.parametrize(
    "probes,expected",
    [
        (Probes(), {}),
        (
            Probes(readiness=HTTP, liveness=Probe(action="tcpSocket", port=8080)),
            {
                "readinessProbe": READY_HTTP,
                "livenessProbe": {"tcpSocket": {"port": 8080}, **TIMING},
            },
        ),
        (
            Probes(startup=Probe(action="httpGet", port=8080, path="/up", failure_threshold=60)),
            {
                "startupProbe": {
                    "httpGet": {"path": "/up", "port": 8080},
                    **TIMING,
                    "failureThreshold": 60,
                }
            },
        ),
    ],
)
def test_knative_probes(probes: Probes, expected: dict[str, Any]) -> None:
    assert probe_fields(knative_container(probes)) == expected


def test_spec_probes_reach_the_workload_with_ports_resolved() -> None:
    spec = spec_for_create(
        {
            "name": "web",
            "image": "nginx:1.27",
            "port": 8081,
            "probes": {
                "readiness": {"httpGet": {"path": "/ready"}, "periodSeconds": 1},
                "liveness": {"tcpSocket": {"port": 9000}},
                "startup": {"tcpSocket": {}, "periodSeconds": 1, "failureThreshold": 5},
            },
        },
        limits=Limits(),
        catalog=load_catalog(),
    )
    probes = workload_probes(spec)
    assert probes.readiness == Probe(action="httpGet", port=8081, path="/ready", period_seconds=1)
    assert probes.liveness == Probe(action="tcpSocket", port=9000)
    assert probes.startup == Probe(
        action="tcpSocket", port=8081, failure_threshold=5, period_seconds=1
    )
    assert probes.budget() == 5
    assert probes.readiness.describe() == "GET :8081/ready"
