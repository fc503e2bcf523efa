"""Table tests of the pure manifest builders; every rendered object is schema-validated."""

from __future__ import annotations

import dataclasses
from typing import Any

import kubernetes_validate
import pytest

from app.runtime.base import Scaling, WorkloadSpec
from app.runtime.k8s_manifests import (
    KubernetesConfig,
    Toleration,
    make_autoscaler,
    make_deployment,
    make_ingress,
    make_namespace,
    make_service,
    namespace_for,
    object_name,
)
from tests.support.kube import A100, H100, L4
from tests.support.kube import MANIFEST_SPEC as BASE

K8S_VERSION = "1.30"

GPU = dataclasses.replace(BASE, gpu=2, desired_gpus=(H100, A100, L4))
CFG = KubernetesConfig()


def validate(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def pod_spec(spec: WorkloadSpec, cfg: KubernetesConfig = CFG) -> dict[str, Any]:
    deployment = make_deployment(spec, cfg)
    validate(deployment)
    result: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return result


LABELS = {
    "dockyard.dev/container-id": "c0ffee",
    "dockyard.dev/revision": "3",
    "dockyard.dev/managed-by": "dockyard",
    "app.kubernetes.io/managed-by": "dockyard",
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("metadata", "name"), "dy-c0ffee"),
        (("metadata", "namespace"), "dockyard-workloads"),
        (("metadata", "labels"), LABELS),
        (
            ("spec", "selector", "matchLabels"),
            {"dockyard.dev/container-id": "c0ffee", "dockyard.dev/managed-by": "dockyard"},
        ),
        (("spec", "strategy", "rollingUpdate", "maxUnavailable"), 0),
        (("spec", "template", "metadata", "labels"), LABELS),
        (("spec", "template", "metadata", "annotations", "dockyard.dev/revision"), "3"),
        (("spec", "template", "spec", "automountServiceAccountToken"), False),
        (
            ("spec", "template", "spec", "securityContext", "seccompProfile"),
            {"type": "RuntimeDefault"},
        ),
        (("spec", "template", "spec", "containers", 0, "image"), "nginx:1.27"),
        (("spec", "template", "spec", "containers", 0, "command"), ["nginx"]),
        (("spec", "template", "spec", "containers", 0, "args"), ["-g", "daemon off;"]),
        (
            ("spec", "template", "spec", "containers", 0, "env"),
            [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
        ),
        (("spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"), 8080),
        (
            ("spec", "template", "spec", "containers", 0, "readinessProbe", "tcpSocket"),
            {"port": 8080},
        ),
        (
            (
                "spec",
                "template",
                "spec",
                "containers",
                0,
                "securityContext",
                "allowPrivilegeEscalation",
            ),
            False,
        ),
        (
            ("spec", "template", "spec", "containers", 0, "resources"),
            {
                "requests": {
                    "cpu": "500m",
                    "memory": "536870912",
                    "ephemeral-storage": "1073741824",
                },
                "limits": {"cpu": "500m", "memory": "536870912", "ephemeral-storage": "1073741824"},
            },
        ),
    ],
)
def test_deployment_fields(path: tuple[str | int, ...], expected: object) -> None:
    value: Any = make_deployment(BASE, CFG)
    for step in path:
        value = value[step]
    assert value == expected


def test_deployment_without_gpu_has_no_gpu_scheduling() -> None:
    spec = pod_spec(dataclasses.replace(BASE, desired_gpus=(H100,)))
    assert "tolerations" not in spec
    assert "affinity" not in spec
    assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]
    assert "capabilities" not in spec["containers"][0]["securityContext"]


def test_gpu_requests_and_limits() -> None:
    resources = pod_spec(GPU)["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2"
    assert resources["requests"]["nvidia.com/gpu"] == "2"


def test_gpu_default_toleration() -> None:
    assert pod_spec(GPU)["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_gpu_tolerations_configurable() -> None:
    cfg = dataclasses.replace(
        CFG,
        gpu_tolerations=(
            Toleration(key="gpu", operator="Equal", value="true", effect="NoSchedule"),
            Toleration(key="dedicated", effect=None),
        ),
    )
    assert pod_spec(GPU, cfg)["tolerations"] == [
        {"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Exists"},
    ]


def test_gpu_affinity_requires_any_model_and_prefers_by_order() -> None:
    affinity = pod_spec(GPU)["affinity"]["nodeAffinity"]
    required = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert required == [
        {
            "matchExpressions": [
                {
                    "key": "nvidia.com/gpu.product",
                    "operator": "In",
                    "values": sorted(H100.label_values + A100.label_values + L4.label_values),
                }
            ]
        }
    ]
    preferred = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [term["preference"]["matchExpressions"][0]["values"] for term in preferred] == [
        list(H100.label_values),
        list(A100.label_values),
        list(L4.label_values),
    ]
    weights = [term["weight"] for term in preferred]
    assert weights == sorted(weights, reverse=True)
    assert len(set(weights)) == 3
    assert weights[0] == 100
    assert all(1 <= weight <= 100 for weight in weights)


def test_gpu_product_label_configurable() -> None:
    cfg = dataclasses.replace(
        CFG, gpu_product_label="example.com/gpu-model", gpu_resource="amd.com/gpu"
    )
    spec = pod_spec(GPU, cfg)
    term = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] == "example.com/gpu-model"
    assert spec["containers"][0]["resources"]["limits"]["amd.com/gpu"] == "2"


def test_gpu_without_model_preference_has_no_affinity() -> None:
    spec = pod_spec(dataclasses.replace(GPU, desired_gpus=()))
    assert "affinity" not in spec
    assert spec["tolerations"]


def test_optional_hardening() -> None:
    cfg = dataclasses.replace(CFG, drop_all_capabilities=True, run_as_non_root=True)
    spec = pod_spec(BASE, cfg)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["containers"][0]["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["NET_BIND_SERVICE"],
    }


def test_no_command_keeps_image_entrypoint() -> None:
    container = pod_spec(dataclasses.replace(BASE, command=None, arguments=None))["containers"][0]
    assert "command" not in container
    assert "args" not in container


def test_service() -> None:
    service = make_service(BASE, CFG)
    validate(service)
    assert service["metadata"]["name"] == "dy-c0ffee"
    assert service["metadata"]["labels"] == LABELS
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == {
        "dockyard.dev/container-id": "c0ffee",
        "dockyard.dev/managed-by": "dockyard",
    }
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}
    ]


@pytest.mark.parametrize(
    ("cfg", "class_name", "tls", "annotations"),
    [
        (CFG, None, None, None),
        (
            dataclasses.replace(
                CFG,
                ingress_domain="run.example.org",
                ingress_class_name="nginx",
                ingress_tls_secret="wildcard-tls",
                ingress_annotations={"cert-manager.io/cluster-issuer": "letsencrypt"},
            ),
            "nginx",
            [{"hosts": ["web-alice.run.example.org"], "secretName": "wildcard-tls"}],
            {"cert-manager.io/cluster-issuer": "letsencrypt"},
        ),
    ],
)
def test_ingress(
    cfg: KubernetesConfig,
    class_name: str | None,
    tls: list[dict[str, Any]] | None,
    annotations: dict[str, str] | None,
) -> None:
    ingress = make_ingress(BASE, cfg)
    validate(ingress)
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == f"web-alice.{cfg.ingress_domain}"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "dy-c0ffee", "port": {"number": 80}}
    assert ingress["spec"].get("ingressClassName") == class_name
    assert ingress["spec"].get("tls") == tls
    assert ingress["metadata"].get("annotations") == annotations
    assert ingress["metadata"]["labels"] == LABELS


PER_OWNER = dataclasses.replace(CFG, namespace_strategy="per-owner")


@pytest.mark.parametrize(
    "owner",
    ["alice@example.com", "Ann.B", "ann-b", "x" * 200, "---", "用户"],
)
def test_per_owner_namespace_is_a_dns_label(owner: str) -> None:
    name = namespace_for(owner, PER_OWNER)
    assert len(name) <= 63
    assert name.startswith("dy-")
    assert name == name.lower()
    assert name[-1].isalnum()
    validate(make_namespace(name))
    deployment = make_deployment(dataclasses.replace(BASE, owner=owner), PER_OWNER)
    assert deployment["metadata"]["namespace"] == name
    validate(deployment)


def test_per_owner_namespace_distinct_and_stable() -> None:
    assert namespace_for("Ann.B", PER_OWNER) != namespace_for("ann-b", PER_OWNER)
    assert namespace_for("Ann.B", PER_OWNER) == namespace_for("Ann.B", PER_OWNER)
    assert namespace_for("alice@example.com", PER_OWNER).startswith("dy-alice-example-com-")


def test_shared_namespace_ignores_owner() -> None:
    assert namespace_for("anyone", dataclasses.replace(CFG, namespace="tenants")) == "tenants"


def test_object_name_is_dns_label() -> None:
    assert object_name("01HZX_ABC") == "dy-01hzx-abc"
    assert len(object_name("a" * 100)) <= 63


def test_image_pull_secrets() -> None:
    spec = pod_spec(BASE, dataclasses.replace(CFG, image_pull_secrets=("regcred",)))
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]


@pytest.mark.parametrize(
    ("scaling", "replicas", "hpa_range"),
    [
        (Scaling(min_instances=2, max_instances=2), 2, None),
        (Scaling(min_instances=0, max_instances=1), 1, None),  # no scale to zero without Knative
        (Scaling(min_instances=1, max_instances=5), None, (1, 5)),
        (Scaling(min_instances=0, max_instances=100), None, (1, 100)),
        (Scaling(min_instances=3, max_instances=4), None, (3, 4)),
    ],
)
def test_scaling_maps_to_replicas_or_a_cpu_autoscaler(
    scaling: Scaling, replicas: int | None, hpa_range: tuple[int, int] | None
) -> None:
    spec = dataclasses.replace(BASE, scaling=scaling)
    deployment = make_deployment(spec, CFG)
    validate(deployment)
    assert deployment["spec"].get("replicas") == replicas
    hpa = make_autoscaler(spec, CFG)
    if hpa_range is None:
        assert hpa is None
        return
    assert hpa is not None
    validate(hpa)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == hpa_range
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "dy-c0ffee",
    }
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {
        "type": "Utilization",
        "averageUtilization": 80,
    }
    assert hpa["metadata"]["namespace"] == deployment["metadata"]["namespace"]
