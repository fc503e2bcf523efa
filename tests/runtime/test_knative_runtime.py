"""The Knative runtime over the official client and real HTTP to the kmock emulator, with
``KnativeController`` playing Knative Serving's controller (tests/support/knative.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import kmock
import kubernetes.client
import pytest
import yaml

from app.domain.traffic import ObservedUrls
from app.runtime.base import (
    Capabilities,
    Phase,
    RevisionState,
    Runtime,
    RuntimeEvent,
    Scaling,
    TrafficTarget,
)
from app.runtime.factory import kubernetes_runtime
from app.runtime.k8s import KubernetesRuntime
from app.runtime.k8s_manifests import KubernetesConfig
from app.runtime.knative import KnativeRuntime, ServedTarget, serves_knative
from tests.runtime.test_knative_manifests import validate
from tests.support import kube
from tests.support.kmock_k8s import EmulatorThread
from tests.support.knative import KnativeController
from tests.support.kube import (
    H100,
    KN,
    L4,
    NS,
    RUNTIME_SPEC,
    app_waiting,
    core,
    crash_looping,
    gpu_unschedulable,
)
from tests.support.logs import lines_of

SPEC = dataclasses.replace(
    RUNTIME_SPEC, scaling=Scaling(min_instances=0, max_instances=4, concurrency=20)
)
GPU_SPEC = dataclasses.replace(SPEC, gpu=1, desired_gpus=(H100, L4))
QUEUE_PROXY = {"name": "queue-proxy", "image": "q:1"}


@pytest.fixture
async def runtime(api_client: kubernetes.client.ApiClient) -> AsyncIterator[KnativeRuntime]:
    yield KnativeRuntime(api_client, KubernetesConfig(log_pod_poll_seconds=0.2))


@pytest.fixture
def knative(k8s: EmulatorThread) -> KnativeController:
    return KnativeController(k8s)


def make_pod(
    k8s: EmulatorThread, name: str, revision: int, status: dict[str, Any] | None = None
) -> None:
    """A pod of Knative revision ``dy-c1-r<revision>``, with Knative's queue-proxy beside it."""
    kube.make_pod(
        k8s,
        name,
        revision,
        status,
        labels={f"{KN}/revision": f"dy-c1-r{revision}"},
        sidecars=(QUEUE_PROXY,),
    )


async def ready_revision(runtime: KnativeRuntime, knative: KnativeController) -> str:
    """Apply ``SPEC`` and let Knative make its first revision ready with one instance."""
    await runtime.apply(SPEC)
    name = await asyncio.to_thread(knative.sync, "dy-c1")
    await asyncio.to_thread(knative.revision_status, name, "True", actual=1, desired=1)
    return name


def enable_gpu_features(k8s: EmulatorThread, value: str = "enabled") -> None:
    api = core(k8s)
    with contextlib.suppress(kubernetes.client.ApiException):
        api.create_namespace({"metadata": {"name": "knative-serving"}})
    api.create_namespaced_config_map(
        "knative-serving",
        {
            "metadata": {"name": "config-features"},
            "data": {
                "kubernetes.podspec-affinity": value,
                "kubernetes.podspec-tolerations": value,
            },
        },
    )


async def test_is_a_runtime_with_serverless_capabilities(runtime: KnativeRuntime) -> None:
    assert isinstance(runtime, Runtime)
    assert runtime.name == "knative"
    assert runtime.capabilities == Capabilities(
        autoscales=True, scale_to_zero=True, traffic_split=True
    )


async def test_apply_is_a_server_side_apply_of_one_service(
    runtime: KnativeRuntime, k8s: EmulatorThread
) -> None:
    await runtime.apply(SPEC)
    await runtime.apply(SPEC)
    service = k8s.get("services", NS, "dy-c1", group=KN)
    assert service is not None
    assert service["metadata"]["generation"] == 1
    template = service["spec"]["template"]
    assert template["metadata"]["name"] == "dy-c1-r1"
    assert template["metadata"]["annotations"]["autoscaling.knative.dev/target"] == "20"
    assert template["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"] == "4"
    assert template["spec"]["containers"][0]["image"] == "nginx:1.27"
    assert k8s.get("deployments", NS, "dy-c1") is None  # no plain Deployment on Knative
    applies = [r for r in k8s.emulator if r.method == kmock.method.PATCH]
    assert {r.params.get("fieldManager") for r in applies} == {"dockyard"}
    assert {r.params.get("force") for r in applies} == {"true"}
    assert all(
        r.headers["Content-Type"].startswith("application/apply-patch+yaml") for r in applies
    )
    for request in applies:  # what went over the wire is valid for Knative's schema
        validate(request.data if isinstance(request.data, dict) else yaml.safe_load(request.text))


async def test_pending_ready_and_scaled_to_zero(
    runtime: KnativeRuntime, k8s: EmulatorThread, knative: KnativeController
) -> None:
    assert await runtime.observe("c1") == []
    await runtime.apply(SPEC)
    assert await runtime.observe("c1") == [RevisionState("c1", 1, Phase.PENDING)]
    name = await asyncio.to_thread(knative.sync, "dy-c1")
    assert name == "dy-c1-r1"
    await asyncio.to_thread(knative.revision_status, name, "Unknown", actual=0, desired=1)
    [state] = await runtime.observe("c1")
    assert (state.phase, state.instances_desired) == (Phase.PENDING, 1)
    await asyncio.to_thread(knative.revision_status, name, "True", actual=2, desired=2)
    assert await runtime.observe("c1") == [
        RevisionState("c1", 1, Phase.READY, instances_ready=2, instances_desired=2)
    ]
    # Idle: Knative scales the revision to zero. That is healthy, not failed or deploying.
    await asyncio.to_thread(knative.revision_status, name, "True", actual=0, desired=0)
    assert await runtime.observe("c1") == [
        RevisionState("c1", 1, Phase.READY, instances_ready=0, instances_desired=0)
    ]
    assert await runtime.list_managed() == {"c1": {1}}


async def test_revision_phases_come_from_its_pods(
    runtime: KnativeRuntime, k8s: EmulatorThread, knative: KnativeController
) -> None:
    await ready_revision(runtime, knative)
    day = "2026-12-03"
    status = {
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": f"{day}T09:00:01Z"},
            {"type": "Ready", "status": "True", "lastTransitionTime": f"{day}T09:00:09Z"},
        ],
        "containerStatuses": [
            {
                "name": "queue-proxy",
                "image": "q:1",
                "imageID": "q@sha256:1",
                "ready": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": f"{day}T09:00:08Z"}},
            },
            {
                "name": "app",
                "image": "nginx:1.27",
                "imageID": "nginx@sha256:2",
                "ready": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": f"{day}T09:00:07Z"}},
            },
        ],
    }
    await asyncio.to_thread(make_pod, k8s, "dy-c1-r1-pod", 1, status)
    [state] = await runtime.observe("c1")
    second = 1_000_000_000
    t0 = 1_796_288_400 * second  # 2026-12-03T09:00:00Z
    assert state.phase is Phase.READY
    assert state.moments == (
        ("scheduled", t0 + 1 * second),
        ("imageReady", t0 + 7 * second),
        ("started", t0 + 7 * second),
        ("ready", t0 + 9 * second),
    )


async def test_update_with_a_90_10_split_and_tag_urls(
    runtime: KnativeRuntime, k8s: EmulatorThread, knative: KnativeController
) -> None:
    await ready_revision(runtime, knative)
    await asyncio.to_thread(knative.publish, "dy-c1")
    serving = await runtime.serving("c1")
    assert serving is not None
    assert serving.url == "http://dy-c1.dockyard-workloads.kn.test"
    assert serving.traffic == (ServedTarget(revision=1, percent=100, latest=True),)

    split = (
        TrafficTarget(percent=90, revision=1),
        TrafficTarget(percent=10, latest=True, tag="canary"),
        TrafficTarget(percent=0, revision=1, tag="stable"),
    )
    await runtime.apply(dataclasses.replace(SPEC, revision=2, image="nginx:1.28", traffic=split))
    service = k8s.get("services", NS, "dy-c1", group=KN)
    assert service is not None
    assert service["spec"]["traffic"] == [
        {"percent": 90, "latestRevision": False, "revisionName": "dy-c1-r1"},
        {"percent": 10, "latestRevision": True, "tag": "canary"},
        {"percent": 0, "latestRevision": False, "revisionName": "dy-c1-r1", "tag": "stable"},
    ]
    assert service["spec"]["template"]["metadata"]["name"] == "dy-c1-r2"
    second = await asyncio.to_thread(knative.sync, "dy-c1")
    await asyncio.to_thread(knative.revision_status, second, "True", actual=1, desired=1)
    await asyncio.to_thread(knative.publish, "dy-c1")
    states = await runtime.observe("c1")
    assert [(s.revision, s.phase) for s in states] == [(2, Phase.READY), (1, Phase.READY)]
    serving = await runtime.serving("c1")
    assert serving is not None
    assert serving.traffic == (
        ServedTarget(revision=1, percent=90),
        ServedTarget(
            revision=2,
            percent=10,
            latest=True,
            tag="canary",
            url="http://canary-dy-c1.dockyard-workloads.kn.test",
        ),
        ServedTarget(
            revision=1,
            percent=0,
            tag="stable",
            url="http://stable-dy-c1.dockyard-workloads.kn.test",
        ),
    )
    assert serving.urls == (
        "http://dy-c1.dockyard-workloads.kn.test",
        "http://canary-dy-c1.dockyard-workloads.kn.test",
        "http://stable-dy-c1.dockyard-workloads.kn.test",
    )
    assert await runtime.observed_urls("c1") == ObservedUrls(
        url="http://dy-c1.dockyard-workloads.kn.test",
        tags={
            "canary": "http://canary-dy-c1.dockyard-workloads.kn.test",
            "stable": "http://stable-dy-c1.dockyard-workloads.kn.test",
        },
    )
    assert await runtime.observed_urls("absent") is None
    # Revision 1 still serves 90 %: retiring keeps it; an unrouted older one goes.
    await runtime.retire("c1", keep={2})
    assert k8s.get("revisions", NS, "dy-c1-r1", group=KN) is not None
    await runtime.apply(dataclasses.replace(SPEC, revision=3))
    third = await asyncio.to_thread(knative.sync, "dy-c1")
    await asyncio.to_thread(knative.revision_status, third, "True", actual=1, desired=1)
    await asyncio.to_thread(knative.publish, "dy-c1")
    await runtime.retire("c1", keep={2, 3})
    assert k8s.get("revisions", NS, "dy-c1-r1", group=KN) is None
    assert k8s.get("revisions", NS, "dy-c1-r2", group=KN) is not None
    await runtime.retire("c1", keep={3})
    assert k8s.get("revisions", NS, "dy-c1-r2", group=KN) is None
    assert k8s.get("revisions", NS, "dy-c1-r3", group=KN) is not None


async def test_image_pull_failure_names_the_image_while_the_old_revision_serves(
    runtime: KnativeRuntime, k8s: EmulatorThread, knative: KnativeController
) -> None:
    await ready_revision(runtime, knative)
    await runtime.apply(dataclasses.replace(SPEC, revision=2, image="nginx:nope"))
    await asyncio.to_thread(knative.sync, "dy-c1")
    await asyncio.to_thread(
        make_pod,
        k8s,
        "dy-c1-r2-deployment-x",
        2,
        app_waiting("ImagePullBackOff", "Back-off pulling image", image="nginx:nope"),
    )
    states = await runtime.observe("c1")
    assert states[0] == RevisionState(
        "c1", 2, Phase.FAILED, "ImagePullBackOff", "Back-off pulling image (image nginx:nope)"
    )
    assert states[1] == RevisionState("c1", 1, Phase.READY, instances_ready=1, instances_desired=1)


async def test_crash_loop_names_the_exit_code_and_the_reason_survives_scale_to_zero(
    runtime: KnativeRuntime, k8s: EmulatorThread, knative: KnativeController
) -> None:
    await runtime.apply(SPEC)
    name = await asyncio.to_thread(knative.sync, "dy-c1")
    await asyncio.to_thread(knative.revision_status, name, "Unknown", actual=0, desired=1)
    await asyncio.to_thread(
        make_pod,
        k8s,
        "dy-c1-r1-deployment-x",
        1,
        crash_looping("back-off 1m", restarts=4, exit_code=3),
    )
    [state] = await runtime.observe("c1")
    assert (state.phase, state.reason, state.message) == (
        Phase.FAILED,
        "CrashLoopBackOff",
        "back-off 1m (exit code 3)",
    )
    # Knative gives up, scales the revision to zero and forgets why (knative/serving#14157).
    await asyncio.to_thread(core(k8s).delete_namespaced_pod, "dy-c1-r1-deployment-x", NS)
    await asyncio.to_thread(knative.revision_status, name, "True", actual=0, desired=0)
    [state] = await runtime.observe("c1")
    assert (state.phase, state.reason, state.message) == (
        Phase.FAILED,
        "CrashLoopBackOff",
        "back-off 1m (exit code 3)",
    )
    # It wakes and runs: the old reason is history.
    await asyncio.to_thread(knative.revision_status, name, "True", actual=1, desired=1)
    [state] = await runtime.observe("c1")
    assert (state.phase, state.reason, state.instances_ready) == (Phase.READY, "", 1)


async def test_progress_deadline_and_configuration_failure(
    runtime: KnativeRuntime, k8s: EmulatorThread, knative: KnativeController
) -> None:
    await runtime.apply(SPEC)
    # The Configuration cannot make a Revision at all: the Service's condition says why.
    await asyncio.to_thread(knative.sync, "dy-c1")
    await asyncio.to_thread(
        knative.custom.delete_namespaced_custom_object, KN, "v1", NS, "revisions", "dy-c1-r1"
    )
    await asyncio.to_thread(
        knative.publish, "dy-c1", configurations=("False", "RevisionFailed", "quota exceeded")
    )
    assert await runtime.observe("c1") == [
        RevisionState("c1", 1, Phase.FAILED, "RevisionFailed", "quota exceeded")
    ]
    name = await asyncio.to_thread(knative.sync, "dy-c1")
    await asyncio.to_thread(
        knative.revision_status,
        name,
        "False",
        reason="ProgressDeadlineExceeded",
        message="Initial scale was never achieved",
    )
    [state] = await runtime.observe("c1")
    assert (state.phase, state.reason) == (Phase.FAILED, "ProgressDeadlineExceeded")
    assert state.message == "Initial scale was never achieved"


async def test_gpu_revision_needs_knative_feature_flags(
    runtime: KnativeRuntime, k8s: EmulatorThread, knative: KnativeController
) -> None:
    await runtime.apply(GPU_SPEC)
    assert k8s.get("services", NS, "dy-c1", group=KN) is None  # Knative would refuse it
    [state] = await runtime.observe("c1")
    assert (state.phase, state.reason) == (Phase.FAILED, "KnativeFeaturesDisabled")
    assert "kubernetes.podspec-affinity" in state.message
    assert "kubernetes.podspec-tolerations" in state.message
    await asyncio.to_thread(enable_gpu_features, k8s)
    runtime._features = None  # the flags are cached for 30 s
    await runtime.apply(GPU_SPEC)
    service = k8s.get("services", NS, "dy-c1", group=KN)
    assert service is not None
    pod = service["spec"]["template"]["spec"]
    assert pod["tolerations"] and pod["affinity"]
    assert await runtime.observe("c1") == [RevisionState("c1", 1, Phase.PENDING)]
    # Unschedulable names the wanted GPU models.
    await asyncio.to_thread(knative.sync, "dy-c1")
    await asyncio.to_thread(make_pod, k8s, "dy-c1-r1-deployment-x", 1, gpu_unschedulable())
    [state] = await runtime.observe("c1")
    assert (state.phase, state.reason) == (Phase.FAILED, "Unschedulable")
    assert "NVIDIA H100" in state.message and "NVIDIA L4" in state.message


async def test_remove_deletes_the_service_and_what_it_owns(
    runtime: KnativeRuntime, k8s: EmulatorThread, knative: KnativeController
) -> None:
    await runtime.apply(SPEC)
    await runtime.apply(dataclasses.replace(SPEC, container_id="c2", slug="other"))
    await asyncio.to_thread(knative.sync, "dy-c1")
    assert await runtime.list_managed() == {"c1": {1}, "c2": {1}}
    await runtime.remove("c1")
    await runtime.remove("c1")  # idempotent
    for plural in ("services", "configurations", "routes"):
        assert k8s.get(plural, NS, "dy-c1", group=KN) is None
    assert k8s.get("revisions", NS, "dy-c1-r1", group=KN) is None
    deletes = [r for r in k8s.emulator if r.method == kmock.method.DELETE]
    policy = deletes[0].params.get("propagationPolicy") or (deletes[0].data or {}).get(
        "propagationPolicy"
    )
    assert policy == "Foreground"
    assert await runtime.list_managed() == {"c2": {1}}
    assert await runtime.observe("c1") == []


async def test_watch_reports_services_revisions_and_pods(
    runtime: KnativeRuntime, k8s: EmulatorThread, knative: KnativeController
) -> None:
    await runtime.apply(SPEC)
    async with contextlib.aclosing(runtime.watch()) as events:
        assert await asyncio.wait_for(anext(events), 5) == RuntimeEvent("c1")  # initial list
        name = await asyncio.to_thread(knative.sync, "dy-c1")
        assert await asyncio.wait_for(anext(events), 5) == RuntimeEvent("c1")  # the revision
        await asyncio.to_thread(knative.revision_status, name, "True", actual=1, desired=1)
        assert await asyncio.wait_for(anext(events), 5) == RuntimeEvent("c1")
        await asyncio.to_thread(make_pod, k8s, "dy-c1-r1-deployment-x", 1)
        assert await asyncio.wait_for(anext(events), 5) == RuntimeEvent("c1")
    watched = {r.resource.plural for r in k8s.emulator if r.action == kmock.action.WATCH}
    assert {"services", "revisions", "pods"} <= watched


async def test_logs_follow_pods_started_by_the_autoscaler(
    runtime: KnativeRuntime, k8s: EmulatorThread, knative: KnativeController
) -> None:
    await ready_revision(runtime, knative)
    await asyncio.to_thread(make_pod, k8s, "dy-c1-r1-a", 1)
    k8s.append_log(NS, "dy-c1-r1-a", "first")
    lines = [line async for line in lines_of(runtime.log_batches("c1", follow=False))]
    assert [(line.line, line.revision) for line in lines] == [("first", 1)]
    request = [r for r in k8s.emulator if r.subresource == "log"][-1]
    assert request.params["container"] == "app"  # not Knative's queue-proxy
    async with contextlib.aclosing(lines_of(runtime.log_batches("c1", tail=0))) as stream:
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.5)
        # Scaled to zero, then woken by a request: a new pod of the same revision.
        await asyncio.to_thread(core(k8s).delete_namespaced_pod, "dy-c1-r1-a", NS)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(make_pod, k8s, "dy-c1-r1-b", 1)
        k8s.append_log(NS, "dy-c1-r1-b", "after wake")
        line = await asyncio.wait_for(pending, 5)
        assert (line.line, line.revision) == ("after wake", 1)
    assert [b async for b in runtime.log_batches("missing")] == []


async def test_auto_picks_knative_only_where_the_cluster_serves_it(
    api_client: kubernetes.client.ApiClient,
) -> None:
    deployments = KubernetesRuntime(api_client)
    assert await asyncio.to_thread(serves_knative, api_client)
    picked = await asyncio.to_thread(kubernetes_runtime, deployments, None)
    assert isinstance(picked, KnativeRuntime)
    plain = EmulatorThread(knative=False).start()
    try:
        with plain.api_client() as client:
            assert not await asyncio.to_thread(serves_knative, client)
            other = KubernetesRuntime(client)
            assert await asyncio.to_thread(kubernetes_runtime, other, None) is other
    finally:
        plain.stop()
    forced = await asyncio.to_thread(kubernetes_runtime, deployments, None, knative=True)
    assert isinstance(forced, KnativeRuntime)


async def test_traffic_knative_cannot_route_fails_the_running_revision(
    runtime: KnativeRuntime, k8s: EmulatorThread, knative: KnativeController
) -> None:
    split = (TrafficTarget(percent=50, revision=7), TrafficTarget(percent=50, latest=True))
    await runtime.apply(dataclasses.replace(SPEC, traffic=split))
    name = await asyncio.to_thread(knative.sync, "dy-c1")
    await asyncio.to_thread(knative.revision_status, name, "True", actual=1, desired=1)
    await asyncio.to_thread(
        knative.publish,
        "dy-c1",
        routes=("False", "RevisionMissing", 'Revision "dy-c1-r7" referenced in traffic not found.'),
    )
    [state] = await runtime.observe("c1")
    assert (state.phase, state.reason, state.instances_ready) == (
        Phase.FAILED,
        "RevisionMissing",
        1,
    )
    assert state.message == 'traffic: Revision "dy-c1-r7" referenced in traffic not found.'
    await runtime.apply(SPEC)  # back to 100 % latest: a new generation, routed
    await asyncio.to_thread(knative.publish, "dy-c1")
    [state] = await runtime.observe("c1")
    assert state.phase is Phase.READY


async def test_unreadable_feature_flags_leave_the_decision_to_knative(
    runtime: KnativeRuntime, k8s: EmulatorThread
) -> None:
    # Dockyard's ServiceAccount lacks k8s/knative/rbac.yaml: reading config-features is a 403.
    (
        k8s.emulator[kmock.resource(group="", version="v1", plural="configmaps")]
        << kmock.KubernetesError(status=403, reason="Forbidden", message="forbidden", details={})
    )
    await runtime.apply(GPU_SPEC)
    assert any(r.resource.plural == "configmaps" for r in k8s.emulator)
    assert k8s.get("services", NS, "dy-c1", group=KN) is not None
