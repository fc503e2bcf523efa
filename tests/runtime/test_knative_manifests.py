"""Table tests of the Knative Service builder; every rendered Service is schema-validated.

Schema: PyPI ``cloudcoil-models-knative-serving``, pydantic models generated from Knative
Serving's published CRDs (1.17 on Python 3.11; 1.23 needs Python 3.14). Chosen because it is the
maintained, installable form of Knative's own schema (Knative publishes no Python client and
``kubernetes-validate`` knows only core Kubernetes). Its models ignore unknown fields, so
``validate`` compares the parsed-and-dumped Service with what was rendered: a misspelt or
disallowed field (Knative's CRD lists only the pod fields it accepts) is dropped by the parse and
fails the comparison. The models cannot check IntOrString quantities (their ``pattern`` on an
integer type breaks pydantic), so ``resources`` are taken out before the parse and checked with
the pod part (affinity, tolerations, resources…) by ``kubernetes-validate`` as a core Pod.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import kubernetes_validate
import pytest
from cloudcoil.models.knative_serving.serving.v1 import Service

from app.runtime.base import Scaling, TrafficTarget, WorkloadSpec
from app.runtime.k8s_manifests import KubernetesConfig, Toleration
from app.runtime.knative_manifests import (
    make_knative_service,
    needs_gpu_features,
    revision_name,
    revision_number,
    scaling_annotations,
    service_name,
)
from tests.support.kube import H100, L4
from tests.support.kube import MANIFEST_SPEC as BASE

GPU = dataclasses.replace(BASE, gpu=2, desired_gpus=(H100, L4))
CFG = KubernetesConfig()


def validate(manifest: dict[str, Any]) -> None:
    rendered = copy.deepcopy(manifest)
    pod_spec = rendered["spec"]["template"]["spec"]
    for container in pod_spec["containers"]:
        container.pop("resources", None)
    parsed = Service.model_validate(rendered).model_dump(
        by_alias=True, exclude_unset=True, mode="json"
    )
    assert parsed == rendered, "a field Knative's schema does not know was rendered"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "check"},
        "spec": {
            key: value
            for key, value in manifest["spec"]["template"]["spec"].items()
            if key not in ("containerConcurrency", "timeoutSeconds")
        },
    }
    kubernetes_validate.validate(pod, "1.30", strict=True)


def render(spec: WorkloadSpec = BASE, cfg: KubernetesConfig = CFG) -> dict[str, Any]:
    manifest = make_knative_service(spec, cfg)
    validate(manifest)
    return manifest


def test_a_misspelt_field_fails_validation() -> None:
    manifest = make_knative_service(BASE, CFG)
    manifest["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(AssertionError):
        validate(manifest)
    manifest = make_knative_service(BASE, CFG)
    manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30  # not in Knative
    with pytest.raises(AssertionError):
        validate(manifest)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("apiVersion",), "serving.knative.dev/v1"),
        (("kind",), "Service"),
        (("metadata", "name"), "dy-c0ffee"),
        (("metadata", "namespace"), "dockyard-workloads"),
        (("metadata", "labels", "dockyard.dev/container-id"), "c0ffee"),
        (("metadata", "labels", "dockyard.dev/managed-by"), "dockyard"),
        (("spec", "template", "metadata", "name"), "dy-c0ffee-r3"),
        (("spec", "template", "metadata", "labels", "dockyard.dev/revision"), "3"),
        (("spec", "template", "spec", "automountServiceAccountToken"), False),
        (("spec", "template", "spec", "enableServiceLinks"), False),
        (("spec", "template", "spec", "containers", 0, "name"), "app"),
        (("spec", "template", "spec", "containers", 0, "image"), "nginx:1.27"),
        (("spec", "template", "spec", "containers", 0, "command"), ["nginx"]),
        (("spec", "template", "spec", "containers", 0, "args"), ["-g", "daemon off;"]),
        (
            ("spec", "template", "spec", "containers", 0, "env"),
            [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
        ),
        (
            ("spec", "template", "spec", "containers", 0, "ports"),
            [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}],
        ),
        (
            ("spec", "template", "spec", "containers", 0, "securityContext"),
            {
                "allowPrivilegeEscalation": False,
                "privileged": False,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        ),
        (("spec", "traffic"), [{"percent": 100, "latestRevision": True}]),
    ],
)
def test_service_fields(path: tuple[str | int, ...], expected: object) -> None:
    value: Any = render()
    for step in path:
        value = value[step]
    assert value == expected


def test_requests_equal_limits_with_gpu() -> None:
    container = render(GPU)["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {
        "cpu": "500m",
        "memory": "536870912",
        "ephemeral-storage": "1073741824",
        "nvidia.com/gpu": "2",
    }
    assert container["resources"]["requests"] == container["resources"]["limits"]


def test_gpu_placement_and_progress_deadline() -> None:
    manifest = render(GPU)
    template = manifest["spec"]["template"]
    pod = template["spec"]
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    required = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == [
        "NVIDIA-H100-80GB-HBM3",
        "NVIDIA-L4",
    ]
    preferred = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [p["preference"]["matchExpressions"][0]["values"] for p in preferred] == [
        ["NVIDIA-H100-80GB-HBM3"],
        ["NVIDIA-L4"],
    ]
    assert preferred[0]["weight"] > preferred[1]["weight"]
    annotations = template["metadata"]["annotations"]
    assert annotations["serving.knative.dev/progress-deadline"] == "1800s"
    assert annotations["dockyard.dev/gpu-models"] == "NVIDIA H100, NVIDIA L4"
    assert needs_gpu_features(manifest)
    plain = render()
    assert not needs_gpu_features(plain)
    assert (
        "serving.knative.dev/progress-deadline"
        not in (plain["spec"]["template"]["metadata"]["annotations"])
    )


def test_options_and_hardening() -> None:
    cfg = KubernetesConfig(
        namespace_strategy="per-owner",
        drop_all_capabilities=True,
        run_as_non_root=True,
        image_pull_secrets=("registry",),
        gpu_tolerations=(Toleration(key="gpu", operator="Equal", value="yes", effect=None),),
        knative_gpu_progress_deadline_seconds=3600,
    )
    manifest = render(GPU, cfg)
    pod = manifest["spec"]["template"]["spec"]
    assert manifest["metadata"]["namespace"].startswith("dy-alice-example-com-")
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Equal", "value": "yes"}]
    security = pod["containers"][0]["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert security["runAsNonRoot"] is True
    annotations = manifest["spec"]["template"]["metadata"]["annotations"]
    assert annotations["serving.knative.dev/progress-deadline"] == "3600s"


@pytest.mark.parametrize(
    ("scaling", "expected"),
    [
        (
            Scaling(),
            {
                "autoscaling.knative.dev/min-scale": "0",
                "autoscaling.knative.dev/max-scale": "100",
                "autoscaling.knative.dev/target": "80",
                "autoscaling.knative.dev/scale-to-zero-pod-retention-period": "840s",
            },
        ),
        (
            Scaling(
                min_instances=2, max_instances=5, concurrency=10, scale_to_zero_after_seconds=60
            ),
            {
                "autoscaling.knative.dev/min-scale": "2",
                "autoscaling.knative.dev/max-scale": "5",
                "autoscaling.knative.dev/target": "10",
                "autoscaling.knative.dev/scale-to-zero-pod-retention-period": "0s",
            },
        ),
        (
            Scaling(scale_to_zero_after_seconds=30),
            {
                "autoscaling.knative.dev/min-scale": "0",
                "autoscaling.knative.dev/max-scale": "100",
                "autoscaling.knative.dev/target": "80",
                "autoscaling.knative.dev/window": "30s",
                "autoscaling.knative.dev/scale-to-zero-pod-retention-period": "0s",
            },
        ),
        (
            Scaling(scale_to_zero_after_seconds=2),
            {
                "autoscaling.knative.dev/min-scale": "0",
                "autoscaling.knative.dev/max-scale": "100",
                "autoscaling.knative.dev/target": "80",
                "autoscaling.knative.dev/window": "6s",  # Knative's minimum window
                "autoscaling.knative.dev/scale-to-zero-pod-retention-period": "0s",
            },
        ),
    ],
)
def test_scaling_annotations(scaling: Scaling, expected: dict[str, str]) -> None:
    assert scaling_annotations(scaling, CFG) == expected
    manifest = render(dataclasses.replace(BASE, scaling=scaling))
    annotations = manifest["spec"]["template"]["metadata"]["annotations"]
    assert {k: v for k, v in annotations.items() if k.startswith("autoscaling.")} == expected
    assert "containerConcurrency" not in manifest["spec"]["template"]["spec"]


def test_traffic_split_and_tags() -> None:
    spec = dataclasses.replace(
        BASE,
        traffic=(
            TrafficTarget(percent=90, revision=2),
            TrafficTarget(percent=10, latest=True, tag="canary"),
            TrafficTarget(percent=0, revision=1, tag="old"),
        ),
    )
    assert render(spec)["spec"]["traffic"] == [
        {"percent": 90, "latestRevision": False, "revisionName": "dy-c0ffee-r2"},
        {"percent": 10, "latestRevision": True, "tag": "canary"},
        {"percent": 0, "latestRevision": False, "revisionName": "dy-c0ffee-r1", "tag": "old"},
    ]


def test_names_line_up_with_revision_numbers() -> None:
    long_id = "x" * 80
    assert len(service_name(long_id)) <= 50
    assert len(revision_name(long_id, 12345678901)) <= 63
    assert revision_name("c0ffee", 7) == "dy-c0ffee-r7"
    assert revision_number("dy-c0ffee-r7", "c0ffee") == 7
    assert revision_number("dy-c0ffee-00001", "c0ffee") is None
    assert revision_number("dy-other-r7", "c0ffee") is None
