"""What the Kubernetes and Knative driver tests share on the kmock emulator (kmock_k8s.py).

The namespace and Knative group, the GPU selectors, one workload spec for the runtimes and one for
the pure manifest builders, the official client's API objects, and the two jobs a cluster does
that the emulator leaves to the test: a kubelet's pod with its status (``make_pod``) and the
Deployment controller finishing a rollout (``complete_rollout``). The ``k8s``/``api_client``
fixtures themselves are in tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import kubernetes.client

from app.runtime.base import GpuSelector, WorkloadSpec
from tests.support.kmock_k8s import EmulatorThread

NS = "dockyard-workloads"
KN = "serving.knative.dev"

H100 = GpuSelector(code="h100", name="NVIDIA H100", label_values=("NVIDIA-H100-80GB-HBM3",))
A100 = GpuSelector(
    code="a100",
    name="NVIDIA A100",
    label_values=("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-PCIE-40GB"),
)
L4 = GpuSelector(code="l4", name="NVIDIA L4", label_values=("NVIDIA-L4",))

RUNTIME_SPEC = WorkloadSpec(
    container_id="c1",
    revision=1,
    name="web",
    owner="alice",
    slug="web-alice",
    image="nginx:1.27",
    cpu=0.25,
    ram="256Mi",
    ram_bytes=268435456,
    gpu=0,
    ephemeral_storage="1Gi",
    ephemeral_storage_bytes=1073741824,
    port=8080,
    env={"MODE": "prod"},
)
"""Revision 1 of container ``c1``, as the runtime tests apply it (objects named ``dy-c1``)."""

MANIFEST_SPEC = WorkloadSpec(
    container_id="c0ffee",
    revision=3,
    name="web",
    owner="alice@example.com",
    slug="web-alice",
    image="nginx:1.27",
    cpu=0.5,
    ram="512Mi",
    ram_bytes=536870912,
    gpu=0,
    ephemeral_storage="1Gi",
    ephemeral_storage_bytes=1073741824,
    port=8080,
    command=("nginx",),
    arguments=("-g", "daemon off;"),
    env={"B": "2", "A": "1"},
)
"""Revision 3 with a command, arguments and unsorted env, for the manifest table tests."""


def core(k8s: EmulatorThread) -> Any:
    return kubernetes.client.CoreV1Api(k8s.api_client())


def apps(k8s: EmulatorThread) -> Any:
    return kubernetes.client.AppsV1Api(k8s.api_client())


def make_pod(
    k8s: EmulatorThread,
    name: str,
    revision: int,
    status: dict[str, Any] | None = None,
    owner: Any = None,
    *,
    container_id: str = "c1",
    image: str = "nginx:1.27",
    labels: Mapping[str, str] | None = None,
    sidecars: Sequence[dict[str, str]] = (),
) -> None:
    """A pod of ``container_id``'s ``revision`` as the kubelet leaves it: Dockyard's labels (plus
    ``labels``), an ``app`` container (plus ``sidecars``), owned by the ReplicaSet ``owner`` if
    given, with ``status`` written through the status subresource."""
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {
            "dockyard.dev/container-id": container_id,
            "dockyard.dev/revision": str(revision),
            "dockyard.dev/managed-by": "dockyard",
            **(labels or {}),
        },
    }
    if owner is not None:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": owner.metadata.name,
                "uid": owner.metadata.uid,
            }
        ]
    containers = [{"name": "app", "image": image}, *sidecars]
    core(k8s).create_namespaced_pod(NS, {"metadata": metadata, "spec": {"containers": containers}})
    if status is not None:
        core(k8s).patch_namespaced_pod_status(name, NS, {"status": status})


def complete_rollout(k8s: EmulatorThread, name: str = "dy-c1") -> None:
    """The Deployment controller's part: the Deployment's current generation is rolled out, with
    one ready replica."""
    deployment = apps(k8s).read_namespaced_deployment(name, NS)
    apps(k8s).patch_namespaced_deployment_status(
        name,
        NS,
        {
            "status": {
                "observedGeneration": deployment.metadata.generation,
                "replicas": 1,
                "updatedReplicas": 1,
                "availableReplicas": 1,
                "readyReplicas": 1,
            }
        },
    )


def gpu_unschedulable() -> dict[str, Any]:
    """The status the scheduler gives a pod no node has the GPUs for."""
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    }
    return {"conditions": [condition]}


def app_waiting(
    reason: str,
    message: str,
    *,
    restarts: int = 0,
    exit_code: int | None = None,
    image: str = "nginx:1.27",
) -> dict[str, Any]:
    """The status the kubelet gives a pod whose ``app`` container waits (``reason``, ``message``),
    after ``restarts`` restarts, the last one exiting with ``exit_code`` if given."""
    container: dict[str, Any] = {
        "name": "app",
        "image": image,
        "imageID": "",
        "ready": False,
        "restartCount": restarts,
        "state": {"waiting": {"reason": reason, "message": message}},
    }
    if exit_code is not None:
        container["lastState"] = {"terminated": {"exitCode": exit_code, "reason": "Error"}}
    return {"containerStatuses": [container]}


def crash_looping(
    back_off: str, *, restarts: int, exit_code: int | None = None, image: str = "nginx:1.27"
) -> dict[str, Any]:
    """A pod whose ``app`` container the kubelet keeps restarting: CrashLoopBackOff, ``back_off``
    as the message."""
    return app_waiting(
        "CrashLoopBackOff", back_off, restarts=restarts, exit_code=exit_code, image=image
    )
