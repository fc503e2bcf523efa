"""The reconcile loop driving the Knative runtime over real HTTP to the Kubernetes emulator, with
``KnativeController`` playing Knative Serving: the container's status as users see it."""

from __future__ import annotations

import asyncio
from typing import Any

import kubernetes.client
import pytest
from sqlmodel import Session

from app.domain.models import Container
from app.domain.principal import Principal
from app.reconcile import Reconciler
from app.runtime.k8s_manifests import KubernetesConfig
from app.runtime.knative import KnativeRuntime
from app.services import containers as svc
from app.services.context import ServiceContext
from tests.support.kmock_k8s import EmulatorThread
from tests.support.knative import KnativeController
from tests.support.kube import KN, NS, crash_looping, make_pod

ALICE = Principal("alice")


@pytest.fixture
def runtime(api_client: kubernetes.client.ApiClient) -> KnativeRuntime:
    return KnativeRuntime(api_client, KubernetesConfig())


def status(ctx: ServiceContext, container_id: str) -> tuple[str, str | None, int | None]:
    view = svc.get_container(ctx=ctx, principal=ALICE, container_id=container_id)
    return view.status, view.statusReason, view.readyRevision


def crash_looping_pod(k8s: EmulatorThread, container_id: str, revision: int) -> None:
    image = "localhost/web:v2"
    status = crash_looping("back-off 5m", restarts=5, exit_code=2, image=image)
    make_pod(k8s, f"crash-{revision}", revision, status, container_id=container_id, image=image)


async def test_deploy_scale_to_zero_fail_and_delete_through_knative(
    ctx: ServiceContext, reconciler: Reconciler, k8s: EmulatorThread
) -> None:
    knative = KnativeController(k8s)
    body = {"name": "web", "image": "localhost/web:v1", "port": 8080}
    container_id = svc.create_container(ctx=ctx, principal=ALICE, data=body).id
    service = f"dy-{container_id}"
    await reconciler.reconcile(container_id)
    applied = k8s.get("services", NS, service, group=KN)
    assert applied is not None
    assert applied["spec"]["template"]["metadata"]["name"] == f"{service}-r1"
    assert status(ctx, container_id)[0] == "deploying"

    first = await asyncio.to_thread(knative.sync, service)
    await asyncio.to_thread(knative.revision_status, first, "True", actual=1, desired=1)
    await reconciler.reconcile(container_id)
    assert status(ctx, container_id) == ("deployed", None, 1)

    # Idle: scaled to zero is still deployed.
    await asyncio.to_thread(knative.revision_status, first, "True", actual=0, desired=0)
    await reconciler.reconcile(container_id)
    assert status(ctx, container_id) == ("deployed", None, 1)

    svc.update_container(
        ctx=ctx, principal=ALICE, container_id=container_id, data={"image": "localhost/web:v2"}
    )
    await reconciler.reconcile(container_id)
    second = await asyncio.to_thread(knative.sync, service)
    await asyncio.to_thread(crash_looping_pod, k8s, container_id, 2)
    await reconciler.reconcile(container_id)
    state, reason, ready = status(ctx, container_id)
    assert (state, ready) == ("failed", 1)
    assert reason is not None and "CrashLoopBackOff" in reason and "exit code 2" in reason
    assert "revision 1 keeps serving" in reason

    # Knative gives up on revision 2, scales it to zero and forgets why; Dockyard does not.
    pods: Any = kubernetes.client.CoreV1Api(k8s.api_client())
    await asyncio.to_thread(pods.delete_namespaced_pod, "crash-2", NS)
    await asyncio.to_thread(knative.revision_status, second, "True", actual=0, desired=0)
    await reconciler.reconcile(container_id)
    assert status(ctx, container_id) == (state, reason, ready)

    svc.delete_container(ctx=ctx, principal=ALICE, container_id=container_id)
    await reconciler.reconcile(container_id)
    assert k8s.get("services", NS, service, group=KN) is None
    with Session(ctx.engine) as session:
        assert session.get(Container, container_id) is None


async def test_urls_come_from_the_knative_service_status(
    ctx: ServiceContext, reconciler: Reconciler, k8s: EmulatorThread
) -> None:
    """Knative's own ``status.url`` and tag URLs, not ``<slug>.<ingress domain>``."""
    knative = KnativeController(k8s)
    body = {"name": "web", "image": "localhost/web:v1", "port": 8080}
    created = svc.create_container(ctx=ctx, principal=ALICE, data=body)
    container_id, slug = created.id, created.urls[0].split(".")[0]
    service = f"dy-{container_id}"
    derived = f"{slug}.{ctx.ingress_domain}"
    assert created.urls == [derived]  # nothing reported yet: derived from the slug
    await reconciler.reconcile(container_id)
    first = await asyncio.to_thread(knative.sync, service)
    await asyncio.to_thread(knative.revision_status, first, "True", actual=1, desired=1)
    await asyncio.to_thread(knative.publish, service)
    await reconciler.reconcile(container_id)
    main = f"http://{service}.{NS}.kn.test"
    view = svc.get_container(ctx=ctx, principal=ALICE, container_id=container_id)
    assert view.status == "deployed"
    assert view.urls == [main]

    svc.update_container(
        ctx=ctx, principal=ALICE, container_id=container_id, data={"image": "localhost/web:v2"}
    )
    await reconciler.reconcile(container_id)
    second = await asyncio.to_thread(knative.sync, service)
    await asyncio.to_thread(knative.revision_status, second, "True", actual=1, desired=1)
    traffic = [
        {"revision": 1, "percent": 90, "tag": "stable"},
        {"latest": True, "percent": 10, "tag": "canary"},
    ]
    svc.set_traffic(ctx=ctx, principal=ALICE, container_id=container_id, data=traffic)
    await reconciler.reconcile(container_id)
    await asyncio.to_thread(knative.publish, service)
    await reconciler.reconcile(container_id)
    view = svc.get_container(ctx=ctx, principal=ALICE, container_id=container_id)
    stable = f"http://stable-{service}.{NS}.kn.test"
    canary = f"http://canary-{service}.{NS}.kn.test"
    assert view.urls == [main, stable, canary]
    assert [(t.revision, t.percent, t.tag, t.url) for t in view.traffic] == [
        (1, 90, "stable", stable),
        (2, 10, "canary", canary),
    ]
    with Session(ctx.engine) as session:
        stored = session.get(Container, container_id)
        assert stored is not None
        assert stored.observed_urls == {"url": main, "tags": {"canary": canary, "stable": stable}}
