"""The Kubernetes driver over the official client and real HTTP to the kmock emulator."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
from collections.abc import AsyncIterator
from typing import Any

import kmock
import kubernetes.client
import pytest
from kubernetes.client import ApiException

from app.domain.logtime import to_ns
from app.runtime.base import (
    Phase,
    RevisionState,
    Runtime,
    RuntimeConflict,
    RuntimeEvent,
    RuntimeRejected,
    RuntimeUnavailable,
)
from app.runtime.k8s import KubernetesRuntime, parse_log_line, translate_error
from app.runtime.k8s_manifests import KubernetesConfig, namespace_for
from tests.support.kmock_k8s import EmulatorThread
from tests.support.kube import (
    H100,
    L4,
    NS,
    app_waiting,
    apps,
    complete_rollout,
    core,
    crash_looping,
    gpu_unschedulable,
    make_pod,
)
from tests.support.kube import RUNTIME_SPEC as SPEC
from tests.support.logs import lines_of

GPU_SPEC = dataclasses.replace(SPEC, gpu=1, desired_gpus=(H100, L4))


@pytest.fixture
async def runtime(api_client: kubernetes.client.ApiClient) -> AsyncIterator[KubernetesRuntime]:
    yield KubernetesRuntime(api_client, KubernetesConfig(ingress_domain="run.example.org"))


def make_replica_set(k8s: EmulatorThread, revision: int, available: int) -> Any:
    owner = apps(k8s).read_namespaced_deployment("dy-c1", NS)
    labels = {
        "dockyard.dev/container-id": "c1",
        "dockyard.dev/revision": str(revision),
        "dockyard.dev/managed-by": "dockyard",
    }
    replica_set = apps(k8s).create_namespaced_replica_set(
        NS,
        {
            "metadata": {
                "name": f"dy-c1-{revision}",
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": "dy-c1",
                        "uid": owner.metadata.uid,
                    }
                ],
            },
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
                },
            },
        },
    )
    apps(k8s).patch_namespaced_replica_set_status(
        replica_set.metadata.name,
        NS,
        {"status": {"replicas": available, "availableReplicas": available}},
    )
    return replica_set


async def test_is_a_runtime(runtime: KubernetesRuntime) -> None:
    assert isinstance(runtime, Runtime)
    assert runtime.name == "kubernetes"


async def test_apply_creates_every_object(runtime: KubernetesRuntime, k8s: EmulatorThread) -> None:
    await runtime.apply(GPU_SPEC)
    deployment = k8s.get("deployments", NS, "dy-c1")
    assert deployment is not None
    assert deployment["metadata"]["labels"]["dockyard.dev/managed-by"] == "dockyard"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "dockyard"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "nginx:1.27"
    assert container["env"] == [{"name": "MODE", "value": "prod"}]
    assert container["resources"]["limits"] == {
        "cpu": "250m",
        "memory": "268435456",
        "ephemeral-storage": "1073741824",
        "nvidia.com/gpu": "1",
    }
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    preferred = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [term["preference"]["matchExpressions"][0]["values"] for term in preferred] == [
        ["NVIDIA-H100-80GB-HBM3"],
        ["NVIDIA-L4"],
    ]
    assert preferred[0]["weight"] > preferred[1]["weight"]
    service = k8s.get("services", NS, "dy-c1")
    assert service is not None
    assert service["spec"]["ports"][0]["targetPort"] == 8080
    ingress = k8s.get("ingresses", NS, "dy-c1")
    assert ingress is not None
    assert ingress["spec"]["rules"][0]["host"] == "web-alice.run.example.org"
    apply_requests = [r for r in k8s.emulator if r.method == kmock.method.PATCH]
    assert {r.params.get("fieldManager") for r in apply_requests} == {"dockyard"}
    assert {r.params.get("force") for r in apply_requests} == {"true"}
    assert all(
        r.headers["Content-Type"].startswith("application/apply-patch+yaml") for r in apply_requests
    )


async def test_apply_is_idempotent_and_update_rolls_out(
    runtime: KubernetesRuntime, k8s: EmulatorThread
) -> None:
    await runtime.apply(SPEC)
    await runtime.apply(SPEC)
    first = k8s.get("deployments", NS, "dy-c1")
    assert first is not None
    assert first["metadata"]["generation"] == 1
    await runtime.apply(dataclasses.replace(SPEC, revision=2, image="nginx:1.28", env={}))
    second = k8s.get("deployments", NS, "dy-c1")
    assert second is not None
    assert second["metadata"]["generation"] == 2
    template = second["spec"]["template"]
    assert template["metadata"]["labels"]["dockyard.dev/revision"] == "2"
    assert template["spec"]["containers"][0]["image"] == "nginx:1.28"
    assert template["spec"]["containers"][0]["env"] == []
    assert "tolerations" not in template["spec"]


async def test_observe_pending_then_ready(runtime: KubernetesRuntime, k8s: EmulatorThread) -> None:
    assert await runtime.observe("c1") == []
    await runtime.apply(SPEC)
    assert await runtime.observe("c1") == [RevisionState("c1", 1, Phase.PENDING)]
    await asyncio.to_thread(complete_rollout, k8s)
    assert await runtime.observe("c1") == [RevisionState("c1", 1, Phase.READY)]
    await runtime.apply(dataclasses.replace(SPEC, revision=2))  # status is now one generation old
    assert (await runtime.observe("c1"))[0] == RevisionState("c1", 2, Phase.PENDING)


async def test_image_pull_failure_while_old_revision_serves(
    runtime: KubernetesRuntime, k8s: EmulatorThread
) -> None:
    await runtime.apply(SPEC)
    await asyncio.to_thread(make_replica_set, k8s, 1, 1)
    await runtime.apply(dataclasses.replace(SPEC, revision=2, image="nginx:nope"))
    await asyncio.to_thread(
        make_pod,
        k8s,
        "dy-c1-2-x",
        2,
        app_waiting("ImagePullBackOff", 'Back-off pulling image "nginx:nope"', image="nginx:nope"),
    )
    states = await runtime.observe("c1")
    assert states == [
        RevisionState(
            "c1", 2, Phase.FAILED, "ImagePullBackOff", 'Back-off pulling image "nginx:nope"'
        ),
        RevisionState("c1", 1, Phase.READY),
    ]


async def test_unschedulable_names_the_gpu(runtime: KubernetesRuntime, k8s: EmulatorThread) -> None:
    await runtime.apply(GPU_SPEC)
    await asyncio.to_thread(make_pod, k8s, "dy-c1-1-x", 1, gpu_unschedulable())
    [state] = await runtime.observe("c1")
    assert state.phase is Phase.FAILED
    assert state.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in state.message
    assert "NVIDIA H100" in state.message and "NVIDIA L4" in state.message


async def test_crash_loop_and_progress_deadline(
    runtime: KubernetesRuntime, k8s: EmulatorThread
) -> None:
    await runtime.apply(SPEC)
    await asyncio.to_thread(
        apps(k8s).patch_namespaced_deployment_status,
        "dy-c1",
        NS,
        {
            "status": {
                "conditions": [
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": 'ReplicaSet "dy-c1-1" has timed out progressing.',
                    }
                ]
            }
        },
    )
    [state] = await runtime.observe("c1")
    assert (state.phase, state.reason) == (Phase.FAILED, "ProgressDeadlineExceeded")
    await asyncio.to_thread(
        make_pod, k8s, "dy-c1-1-x", 1, crash_looping("back-off 5m0s", restarts=5)
    )
    [state] = await runtime.observe("c1")
    assert (state.phase, state.reason, state.message) == (
        Phase.FAILED,
        "CrashLoopBackOff",
        "back-off 5m0s",
    )


async def test_remove_cascades_and_list_managed(
    runtime: KubernetesRuntime, k8s: EmulatorThread
) -> None:
    await runtime.apply(SPEC)
    await runtime.apply(dataclasses.replace(SPEC, container_id="c2", slug="other"))
    replica_set = await asyncio.to_thread(make_replica_set, k8s, 1, 1)
    await asyncio.to_thread(make_pod, k8s, "dy-c1-1-x", 1, None, replica_set)
    assert await runtime.list_managed() == {"c1": {1}, "c2": {1}}
    await runtime.remove("c1")
    await runtime.remove("c1")  # idempotent
    for plural in ("deployments", "services", "ingresses", "replicasets"):
        assert k8s.get(plural, NS, "dy-c1") is None
        assert k8s.get(plural, NS, "dy-c1-1") is None
    assert k8s.get("pods", NS, "dy-c1-1-x") is None
    deletes = [
        r
        for r in k8s.emulator
        if r.method == kmock.method.DELETE and r.resource.plural == "deployments"
    ]
    policy = deletes[0].params.get("propagationPolicy") or (deletes[0].data or {}).get(
        "propagationPolicy"
    )
    assert policy == "Foreground"
    assert await runtime.list_managed() == {"c2": {1}}
    assert await runtime.observe("c1") == []
    await runtime.retire("c2", keep={1})  # a no-op by design
    assert k8s.get("deployments", NS, "dy-c2") is not None


async def test_per_owner_namespaces(
    api_client: kubernetes.client.ApiClient, k8s: EmulatorThread
) -> None:
    config = KubernetesConfig(namespace_strategy="per-owner")
    runtime = KubernetesRuntime(api_client, config)
    await runtime.apply(SPEC)
    namespace = namespace_for("alice", config)
    assert k8s.get("namespaces", None, namespace) is not None
    assert k8s.get("deployments", namespace, "dy-c1") is not None
    assert await runtime.observe("c1") == [RevisionState("c1", 1, Phase.PENDING)]
    assert await runtime.list_managed() == {"c1": {1}}
    await runtime.remove("c1")
    assert k8s.get("deployments", namespace, "dy-c1") is None


async def next_event(events: AsyncIterator[RuntimeEvent]) -> RuntimeEvent:
    return await asyncio.wait_for(anext(events), 5)


async def test_watch_resumes_and_relists_after_gone(
    api_client: kubernetes.client.ApiClient, k8s: EmulatorThread
) -> None:
    runtime = KubernetesRuntime(api_client, KubernetesConfig(watch_timeout_seconds=1))
    await runtime.apply(SPEC)
    async with contextlib.aclosing(runtime.watch()) as events:
        assert await next_event(events) == RuntimeEvent("c1")  # from the initial list
        await asyncio.to_thread(complete_rollout, k8s)
        assert await next_event(events) == RuntimeEvent("c1")  # live
        await asyncio.sleep(1.5)  # the server ended the watch: resumed from the last version
        await runtime.apply(dataclasses.replace(SPEC, container_id="c2", slug="c2"))
        assert await next_event(events) == RuntimeEvent("c2")
        k8s.compact()
        await asyncio.sleep(1.5)  # the next resume gets 410 Gone: relist
        seen = {(await next_event(events)).container_id for _ in range(2)}
        assert seen == {"c1", "c2"}
    watches = [
        r
        for r in k8s.emulator
        if r.action == kmock.action.WATCH and r.resource.plural == "deployments"
    ]
    assert any(r.params.get("resourceVersion") for r in watches)
    lists = [
        r
        for r in k8s.emulator
        if r.action == kmock.action.LIST
        and r.resource.plural == "deployments"
        and r.params.get("labelSelector") == "dockyard.dev/managed-by=dockyard"
    ]
    assert len(lists) >= 2
    assert all(r.params.get("labelSelector") == "dockyard.dev/managed-by=dockyard" for r in watches)


async def test_watch_reports_pod_changes(runtime: KubernetesRuntime, k8s: EmulatorThread) -> None:
    await runtime.apply(SPEC)
    async with contextlib.aclosing(runtime.watch()) as events:
        assert await next_event(events) == RuntimeEvent("c1")
        await asyncio.to_thread(make_pod, k8s, "dy-c1-1-x", 1)
        assert await next_event(events) == RuntimeEvent("c1")


async def test_logs(runtime: KubernetesRuntime, k8s: EmulatorThread) -> None:
    await runtime.apply(SPEC)
    await asyncio.to_thread(make_pod, k8s, "dy-c1-1-a", 1)
    await asyncio.to_thread(make_pod, k8s, "dy-c1-1-b", 1)
    base = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    k8s.append_log(NS, "dy-c1-1-b", "second", base + datetime.timedelta(seconds=2))
    k8s.append_log(NS, "dy-c1-1-a", "first", base + datetime.timedelta(seconds=1))
    lines = [line async for line in lines_of(runtime.log_batches("c1", follow=False))]
    assert [(line.line, line.timestamp, line.revision) for line in lines] == [
        ("first", base + datetime.timedelta(seconds=1), 1),
        ("second", base + datetime.timedelta(seconds=2), 1),
    ]
    request = [r for r in k8s.emulator if r.subresource == "log"][-1]
    assert request.params["timestamps"] == "true"
    assert request.params["tailLines"] == "100"
    async with contextlib.aclosing(lines_of(runtime.log_batches("c1", tail=0))) as stream:
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.5)  # the follow request is open: only new lines come now
        await asyncio.to_thread(k8s.append_log, NS, "dy-c1-1-a", "live")
        line = await asyncio.wait_for(pending, 5)
        assert line.line == "live"
    assert [batch async for batch in runtime.log_batches("missing")] == []


def test_parse_log_line() -> None:
    ns, text = parse_log_line("2024-05-01T10:00:00.123456789Z hello world")
    assert ns == to_ns(datetime.datetime(2024, 5, 1, 10, 0, 0, tzinfo=datetime.UTC)) + 123456789
    assert text == "hello world"
    assert parse_log_line("no stamp")[1] == "no stamp"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ApiException(status=409, reason="Conflict"), RuntimeConflict),
        (ApiException(status=422, reason="Invalid"), RuntimeRejected),
        (ApiException(status=400, reason="BadRequest"), RuntimeRejected),
        (ApiException(status=403, reason="Forbidden"), RuntimeRejected),
        (ApiException(status=500, reason="Internal"), RuntimeUnavailable),
        (ApiException(status=503, reason="Unavailable"), RuntimeUnavailable),
        (ConnectionRefusedError("refused"), RuntimeUnavailable),
    ],
)
def test_translate_error(error: Exception, expected: type[Exception]) -> None:
    assert isinstance(translate_error(error), expected)


async def test_errors_over_http(runtime: KubernetesRuntime, k8s: EmulatorThread) -> None:
    await runtime.apply(SPEC)
    await asyncio.to_thread(
        apps(k8s).patch_namespaced_deployment,
        "dy-c1",
        NS,
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "x:1"}]}}}},
    )
    rejected = dataclasses.replace(SPEC, owner="x")
    broken = KubernetesRuntime(runtime._api_client, KubernetesConfig(namespace="missing"))
    with pytest.raises(RuntimeRejected) as excinfo:
        await broken.apply(rejected)
    assert isinstance(excinfo.value.__cause__, ApiException)
    configuration = kubernetes.client.Configuration()
    configuration.host = "http://127.0.0.1:9"
    configuration.retries = 0
    with kubernetes.client.ApiClient(configuration) as client:
        offline = KubernetesRuntime(client, KubernetesConfig(request_timeout_seconds=2))
        with pytest.raises(RuntimeUnavailable):
            await offline.observe("c1")


async def test_follow_picks_up_pods_started_later(
    api_client: kubernetes.client.ApiClient, k8s: EmulatorThread
) -> None:
    runtime = KubernetesRuntime(api_client, KubernetesConfig(log_pod_poll_seconds=0.2))
    await runtime.apply(SPEC)
    await asyncio.to_thread(make_pod, k8s, "dy-c1-1-a", 1)
    k8s.append_log(NS, "dy-c1-1-a", "old")
    async with contextlib.aclosing(lines_of(runtime.log_batches("c1", tail=0))) as stream:
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.5)  # following pod a only
        await asyncio.to_thread(make_pod, k8s, "dy-c1-1-b", 1)  # a second instance starts
        k8s.append_log(NS, "dy-c1-1-b", "from the new pod")
        line = await asyncio.wait_for(pending, 5)
        assert (line.line, line.revision) == ("from the new pod", 1)


async def test_follow_ends_when_the_revision_is_replaced(
    api_client: kubernetes.client.ApiClient, k8s: EmulatorThread
) -> None:
    runtime = KubernetesRuntime(api_client, KubernetesConfig(log_pod_poll_seconds=0.2))
    await runtime.apply(SPEC)
    await asyncio.to_thread(make_pod, k8s, "dy-c1-1-a", 1)
    k8s.append_log(NS, "dy-c1-1-a", "hello")

    async def read_all() -> list[str]:
        return [line.line async for line in lines_of(runtime.log_batches("c1"))]

    reading = asyncio.ensure_future(read_all())
    await asyncio.sleep(0.3)
    await runtime.apply(dataclasses.replace(SPEC, revision=2))
    await asyncio.to_thread(core(k8s).delete_namespaced_pod, "dy-c1-1-a", NS)
    assert await asyncio.wait_for(reading, 5) == ["hello"]


async def test_scaling_applies_an_autoscaler_and_removes_it(
    runtime: KubernetesRuntime, k8s: EmulatorThread
) -> None:
    from app.runtime.base import Scaling

    await runtime.apply(
        dataclasses.replace(SPEC, scaling=Scaling(min_instances=2, max_instances=6))
    )
    hpa = k8s.get("horizontalpodautoscalers", NS, "dy-c1")
    assert hpa is not None
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    deployment = k8s.get("deployments", NS, "dy-c1")
    assert deployment is not None and "replicas" not in deployment["spec"]
    fixed = Scaling(min_instances=3, max_instances=3)
    await runtime.apply(dataclasses.replace(SPEC, revision=2, scaling=fixed))
    assert k8s.get("horizontalpodautoscalers", NS, "dy-c1") is None
    deployment = k8s.get("deployments", NS, "dy-c1")
    assert deployment is not None and deployment["spec"]["replicas"] == 3
    await runtime.apply(dataclasses.replace(SPEC, revision=3))
    await runtime.remove("c1")
    assert k8s.get("horizontalpodautoscalers", NS, "dy-c1") is None
