"""The server takes the API's serverless capabilities from the runtime it runs on: the local
engine (Dockyard's own data plane) accepts scale to zero, splits and tags; plain Kubernetes
Deployments (here over the Kubernetes API emulator) refuse them naming Knative Serving."""

from __future__ import annotations

import kubernetes.client
import pytest
from fastapi import FastAPI

from app.domain.errors import ValidationFailed
from app.domain.principal import Principal
from app.runtime.docker import DockerRuntime
from app.runtime.k8s import KubernetesRuntime
from app.server import create_app
from app.services import containers as svc
from app.settings import Settings
from tests.support.bodies import HELLO

ALICE = Principal("alice")
SPLIT = [{"revision": 1, "percent": 50}, {"latest": True, "percent": 50, "tag": "next"}]


def serve(settings: Settings, runtime: DockerRuntime | KubernetesRuntime) -> FastAPI:
    # Not started: only the wiring of capabilities is under test, no reconciler runs.
    return create_app(settings, runtime=runtime)


def test_runtime_none_accepts_everything(settings: Settings) -> None:
    ctx = create_app(settings, runtime=None).state.dockyard.ctx
    try:
        view = svc.create_container(ctx=ctx, principal=ALICE, data=HELLO)
        assert view.scaling.minInstances == 0
        routed = svc.set_traffic(ctx=ctx, principal=ALICE, container_id=view.id, data=SPLIT)
        assert [t.percent for t in routed.traffic] == [50, 50]
    finally:
        ctx.engine.dispose()


def test_local_engine_scales_to_zero_and_splits(settings: Settings) -> None:
    runtime = DockerRuntime("unix:///nonexistent.sock")  # the constructor does no I/O
    ctx = serve(settings, runtime).state.dockyard.ctx
    try:
        assert ctx.capabilities == DockerRuntime.capabilities
        view = svc.create_container(
            ctx=ctx, principal=ALICE, data={**HELLO, "scaling": {"minInstances": 0}}
        )
        routed = svc.set_traffic(ctx=ctx, principal=ALICE, container_id=view.id, data=SPLIT)
        assert routed.urls is not None and len(routed.urls) == 2
    finally:
        ctx.engine.dispose()


def test_plain_deployments_refuse_what_needs_knative(
    settings: Settings, api_client: kubernetes.client.ApiClient
) -> None:
    ctx = serve(settings, KubernetesRuntime(api_client)).state.dockyard.ctx
    try:
        assert not ctx.capabilities.scale_to_zero and not ctx.capabilities.traffic_split
        view = svc.create_container(ctx=ctx, principal=ALICE, data=HELLO)
        assert view.scaling.minInstances == 1
        with pytest.raises(ValidationFailed) as caught:
            svc.set_traffic(ctx=ctx, principal=ALICE, container_id=view.id, data=SPLIT)
        assert [e.field for e in caught.value.errors] == [
            "traffic",
            "traffic[0].revision",
            "traffic[1].tag",
        ]
        assert all("Knative Serving is required" in e.message for e in caught.value.errors)
        svc.update_container(ctx=ctx, principal=ALICE, container_id=view.id, data={"env": {}})
        rolled_back = svc.rollback_container(
            ctx=ctx, principal=ALICE, container_id=view.id, revision_number=1
        )
        assert rolled_back.scaling.minInstances == 1
    finally:
        ctx.engine.dispose()
