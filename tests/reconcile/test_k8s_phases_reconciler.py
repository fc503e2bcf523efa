"""A revision's deploy phases on Kubernetes, through the reconciler and the Deployment runtime
over real HTTP to the Kubernetes emulator: the moments come from the pod's own conditions and
container status, the reconciler adds serving."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import kubernetes.client
import pytest

from app.domain.logtime import parse_ns, to_ns
from app.domain.principal import Principal
from app.domain.views import as_utc
from app.reconcile import Reconciler
from app.runtime.k8s import KubernetesRuntime
from app.runtime.k8s_manifests import KubernetesConfig
from app.services import containers as svc
from app.services.context import ServiceContext
from tests.support.kmock_k8s import EmulatorThread
from tests.support.kube import complete_rollout, make_pod

ALICE = Principal("alice")
SECOND = 1_000_000_000


@pytest.fixture
def runtime(api_client: kubernetes.client.ApiClient) -> KubernetesRuntime:
    return KubernetesRuntime(api_client, KubernetesConfig())


def rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns // SECOND, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def running_pod(k8s: EmulatorThread, container_id: str, base_ns: int) -> None:
    """A pod of revision 1 as the kubelet leaves it: scheduled at +0 s, app container running
    with its image resolved from +2 s, ready at +3 s."""
    status = {
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339(base_ns)},
            {"type": "Initialized", "status": "True", "lastTransitionTime": rfc3339(base_ns)},
            {
                "type": "Ready",
                "status": "True",
                "lastTransitionTime": rfc3339(base_ns + 3 * SECOND),
            },
        ],
        "containerStatuses": [
            {
                "name": "app",
                "image": "localhost/web:v1",
                "imageID": "localhost/web@sha256:0123",
                "ready": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": rfc3339(base_ns + 2 * SECOND)}},
            }
        ],
    }
    make_pod(k8s, "web-1", 1, status, container_id=container_id, image="localhost/web:v1")


async def test_a_revisions_phases_on_kubernetes_come_from_its_pod(
    ctx: ServiceContext, reconciler: Reconciler, k8s: EmulatorThread
) -> None:
    body = {"name": "web", "image": "localhost/web:v1", "port": 8080}
    container_id = svc.create_container(ctx=ctx, principal=ALICE, data=body).id
    await reconciler.reconcile(container_id)
    # Kubernetes timestamps are whole seconds: the pod's start at the next one after accepted.
    base = (time.time_ns() // SECOND + 1) * SECOND
    await asyncio.to_thread(running_pod, k8s, container_id, base)
    await reconciler.reconcile(container_id)  # the rollout is not complete yet: deploying
    (revision,) = svc.list_revisions(ctx=ctx, principal=ALICE, container_id=container_id).items
    assert [p.phase for p in revision.phases] == [
        "accepted",
        "scheduled",
        "imageReady",
        "started",
        "ready",
    ]

    await asyncio.to_thread(complete_rollout, k8s, f"dy-{container_id}")
    await reconciler.reconcile(container_id)
    view = svc.get_container(ctx=ctx, principal=ALICE, container_id=container_id)
    assert view.status == "deployed"
    (revision,) = svc.list_revisions(ctx=ctx, principal=ALICE, container_id=container_id).items
    phases = {p.phase: p for p in revision.phases}
    assert list(phases) == ["accepted", "scheduled", "imageReady", "started", "ready", "serving"]
    expected = {
        "scheduled": base,
        "imageReady": base + 2 * SECOND,
        "started": base + 2 * SECOND,
        "ready": base + 3 * SECOND,
    }
    assert {name: parse_ns(phases[name].at) for name in expected} == expected
    assert phases["scheduled"].durationMs == 2000.0
    assert phases["imageReady"].durationMs == 0.0
    assert phases["started"].durationMs == 1000.0
    # the phases add up to accepted -> serving
    serving_ns = parse_ns(phases["serving"].at)
    assert serving_ns is not None and serving_ns >= base + 3 * SECOND
    accepted_ns = to_ns(as_utc(revision.dateCreated))
    total_ms = sum(p.durationMs or 0.0 for p in revision.phases)
    assert total_ms == pytest.approx((serving_ns - accepted_ns) / 1e6, abs=0.01)
