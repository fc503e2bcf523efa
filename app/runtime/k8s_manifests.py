"""Pure builders of the Kubernetes objects that run one container.

Kept apart from the driver so the shape of every object is decided in one place and can be table
tested (and schema-validated) without a cluster: a ``WorkloadSpec`` and a ``KubernetesConfig`` go
in, plain JSON-ready dicts come out. The driver applies them with server-side apply, so the dicts
contain only the fields Dockyard owns.

Hardening choices (documented because they trade safety against compatibility with common images):
no service-account token, no privilege escalation, the ``RuntimeDefault`` seccomp profile and no
service-link environment variables are always set. Dropping *all* capabilities and refusing root are
opt-in (``drop_all_capabilities``, ``run_as_non_root``): many stock images (nginx, httpd, …) start
as root, bind port 80 and then ``setuid`` to a worker user, which needs CHOWN/SETUID/SETGID.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from app.runtime.base import (
    LABEL_CONTAINER_ID,
    LABEL_MANAGED_BY,
    LABEL_REVISION,
    MANAGED_BY,
    Probe,
    WorkloadSpec,
)

LABEL_K8S_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_GPU_MODELS = "dockyard.dev/gpu-models"
"""Names of the desired GPU models, so a scheduling failure can say which model was missing."""
CONTAINER_NAME = "app"
PORT_NAME = "http"
NAME_PREFIX = "dy-"
_DNS_LABEL_MAX = 63

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Toleration:
    """A pod toleration, e.g. for the taint GPU nodes carry."""

    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"

    def to_dict(self) -> Manifest:
        toleration: Manifest = {"key": self.key, "operator": self.operator}
        if self.value is not None:
            toleration["value"] = self.value
        if self.effect is not None:
            toleration["effect"] = self.effect
        return toleration


@dataclass(frozen=True)
class KubernetesConfig:
    """Everything about the cluster that is configuration, not code."""

    namespace_strategy: Literal["shared", "per-owner"] = "shared"
    namespace: str = "dockyard-workloads"
    """The namespace of every workload with the ``shared`` strategy."""
    owner_namespace_prefix: str = "dy-"
    ingress_domain: str = "apps.localhost"
    ingress_class_name: str | None = None
    ingress_tls_secret: str | None = None
    ingress_annotations: Mapping[str, str] = field(default_factory=dict)
    service_port: int = 80
    gpu_resource: str = "nvidia.com/gpu"
    gpu_product_label: str = "nvidia.com/gpu.product"
    gpu_tolerations: tuple[Toleration, ...] = (Toleration(key="nvidia.com/gpu"),)
    progress_deadline_seconds: int = 600
    revision_history_limit: int = 2
    termination_grace_period_seconds: int = 30
    drop_all_capabilities: bool = False
    run_as_non_root: bool = False
    image_pull_secrets: tuple[str, ...] = ()
    watch_timeout_seconds: int = 300
    """Server-side timeout of one watch request; the driver re-watches from the last version."""
    request_timeout_seconds: float = 30.0
    log_pod_poll_seconds: float = 2.0
    """How often a followed log stream looks for pods started since (new instances)."""
    hpa_cpu_utilization: int = 80
    """Deployment runtime: average CPU use (% of requests) the HorizontalPodAutoscaler aims at."""
    knative_namespace: str = "knative-serving"
    """Knative runtime: where Knative Serving's ConfigMaps (``config-features``) live."""
    knative_stable_window_seconds: int = 60
    """Knative runtime: the cluster's ``config-autoscaler`` ``stable-window``."""
    knative_gpu_progress_deadline_seconds: int = 1800
    """Knative runtime: how long a GPU revision may wait for a node before it fails."""


def _dns_label(text: str) -> str:
    """Lowercase, alphanumerics and dashes, starting and ending alphanumeric."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def object_name(container_id: str) -> str:
    """The name of the Deployment, Service and Ingress of a container."""
    return (NAME_PREFIX + _dns_label(container_id))[:_DNS_LABEL_MAX].rstrip("-")


def namespace_for(owner: str, cfg: KubernetesConfig) -> str:
    """The namespace of an owner's workloads under the configured strategy.

    Per-owner names keep a readable part of the owner and a short hash of the full owner, so two
    owners that sanitise to the same text (``Ann.B`` and ``ann-b``) still get distinct namespaces.
    """
    if cfg.namespace_strategy == "shared":
        return cfg.namespace
    digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
    room = _DNS_LABEL_MAX - len(cfg.owner_namespace_prefix) - len(digest) - 1
    readable = _dns_label(owner)[:room].strip("-")
    return (
        f"{cfg.owner_namespace_prefix}{readable}-{digest}"
        if readable
        else (f"{cfg.owner_namespace_prefix}{digest}")
    )


def selector_labels(container_id: str) -> dict[str, str]:
    """Labels that select every pod of a container, whatever its revision (immutable selector)."""
    return {LABEL_CONTAINER_ID: container_id, LABEL_MANAGED_BY: MANAGED_BY}


def managed_selector() -> str:
    """The label selector of every object Dockyard manages."""
    return f"{LABEL_MANAGED_BY}={MANAGED_BY}"


def labels(spec: WorkloadSpec) -> dict[str, str]:
    return {
        **selector_labels(spec.container_id),
        LABEL_REVISION: str(spec.revision),
        LABEL_K8S_MANAGED_BY: MANAGED_BY,
    }


def _metadata(spec: WorkloadSpec, cfg: KubernetesConfig) -> Manifest:
    return {
        "name": object_name(spec.container_id),
        "namespace": namespace_for(spec.owner, cfg),
        "labels": labels(spec),
    }


def make_namespace(name: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_K8S_MANAGED_BY: MANAGED_BY},
        },
    }


def _cpu_quantity(cpu: float) -> str:
    return f"{max(1, round(cpu * 1000))}m"


def container_resources(spec: WorkloadSpec, cfg: KubernetesConfig) -> Manifest:
    # requests == limits: the pod gets the Guaranteed QoS class for what the user pays for.
    amounts = {
        "cpu": _cpu_quantity(spec.cpu),
        "memory": str(spec.ram_bytes),
        "ephemeral-storage": str(spec.ephemeral_storage_bytes),
    }
    if spec.gpu > 0:
        amounts[cfg.gpu_resource] = str(spec.gpu)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def gpu_affinity(spec: WorkloadSpec, cfg: KubernetesConfig) -> Manifest | None:
    """Any of the desired GPU models is required; earlier ones in the list are preferred."""
    if spec.gpu <= 0 or not spec.desired_gpus:
        return None
    all_values = sorted({value for gpu in spec.desired_gpus for value in gpu.label_values})
    count = len(spec.desired_gpus)
    preferred = [
        {
            "weight": max(1, round(100 * (count - index) / count)),
            "preference": {
                "matchExpressions": [
                    {
                        "key": cfg.gpu_product_label,
                        "operator": "In",
                        "values": list(gpu.label_values),
                    }
                ]
            },
        }
        for index, gpu in enumerate(spec.desired_gpus)
        if gpu.label_values
    ]
    node_affinity: Manifest = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": cfg.gpu_product_label, "operator": "In", "values": all_values}
                    ]
                }
            ]
        },
    }
    if preferred:
        node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] = preferred
    return {"nodeAffinity": node_affinity}


def _container(spec: WorkloadSpec, cfg: KubernetesConfig) -> Manifest:
    security: Manifest = {"allowPrivilegeEscalation": False, "privileged": False}
    if cfg.drop_all_capabilities:
        security["capabilities"] = {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    container: Manifest = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "ports": [{"name": PORT_NAME, "containerPort": spec.port, "protocol": "TCP"}],
        "env": [{"name": key, "value": value} for key, value in sorted(spec.env.items())],
        "resources": container_resources(spec, cfg),
        **container_probes(
            spec,
            default_readiness={
                "tcpSocket": {"port": spec.port},
                "periodSeconds": 5,
                "failureThreshold": 3,
            },
        ),
        "securityContext": security,
    }
    if spec.command is not None:
        container["command"] = list(spec.command)
    if spec.arguments is not None:
        container["args"] = list(spec.arguments)
    return container


STARTUP_BUDGET_PERIOD_SECONDS = 10
"""Period of the startup probe made for a ``startupBudgetSeconds`` without a startup probe."""


def probe_manifest(probe: Probe) -> Manifest:
    """A Kubernetes ``Probe`` for one of Dockyard's."""
    manifest: Manifest
    if probe.action == "exec":
        manifest = {"exec": {"command": list(probe.command)}}
    else:
        action: Manifest = {"port": probe.port}
        if probe.action == "httpGet":
            action = {"path": probe.path, **action}
        manifest = {probe.action: action}
    manifest.update(
        {
            "initialDelaySeconds": probe.initial_delay_seconds,
            "periodSeconds": probe.period_seconds,
            "timeoutSeconds": probe.timeout_seconds,
            "successThreshold": probe.success_threshold,
            "failureThreshold": probe.failure_threshold,
        }
    )
    return manifest


def container_probes(spec: WorkloadSpec, *, default_readiness: Manifest | None) -> Manifest:
    """``startupProbe``/``readinessProbe``/``livenessProbe`` of the container.

    Without a readiness probe, ``default_readiness`` (or none). A ``startupBudgetSeconds`` without
    a startup probe becomes a startup probe doing the readiness check (or a TCP connect) every
    10 s, ``failureThreshold = ceil(budget / 10)``: the kubelet restarts the container when the
    budget is spent (its start-up budget is ``failureThreshold * periodSeconds``).
    """
    probes = spec.probes
    result: Manifest = {}
    startup = probes.startup
    budget = probes.startup_budget_seconds
    if startup is None and budget is not None:
        base = probes.readiness or Probe(action="tcpSocket", port=spec.port)
        period = min(STARTUP_BUDGET_PERIOD_SECONDS, budget)
        startup = Probe(
            action=base.action,
            port=base.port,
            path=base.path,
            command=base.command,
            period_seconds=period,
            timeout_seconds=min(base.timeout_seconds, period),
            failure_threshold=-(-budget // period),
        )
    if startup is not None:
        result["startupProbe"] = probe_manifest(startup)
    if probes.readiness is not None:
        result["readinessProbe"] = probe_manifest(probes.readiness)
    elif default_readiness is not None:
        result["readinessProbe"] = default_readiness
    if probes.liveness is not None:
        result["livenessProbe"] = probe_manifest(probes.liveness)
    return result


def min_replicas(spec: WorkloadSpec) -> int:
    """Replicas of the Deployment: ``minInstances``, at least 1 (no scale to zero without
    Knative: nothing would hold the first request while a pod starts)."""
    return max(1, spec.scaling.min_instances)


def autoscaled(spec: WorkloadSpec) -> bool:
    """Whether a HorizontalPodAutoscaler owns the replica count (``maxInstances`` above min)."""
    return spec.scaling.max_instances > min_replicas(spec)


def make_deployment(spec: WorkloadSpec, cfg: KubernetesConfig) -> Manifest:
    """One Deployment per container; a new revision rolls out with zero unavailable pods.

    ``replicas`` is left out when a HorizontalPodAutoscaler owns it, so the server-side apply of
    the next revision does not reset what the autoscaler decided.
    """
    pod_security: Manifest = {"seccompProfile": {"type": "RuntimeDefault"}}
    if cfg.run_as_non_root:
        pod_security["runAsNonRoot"] = True
    pod_spec: Manifest = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": cfg.termination_grace_period_seconds,
        "securityContext": pod_security,
        "containers": [_container(spec, cfg)],
    }
    if spec.gpu > 0:
        pod_spec["tolerations"] = [toleration.to_dict() for toleration in cfg.gpu_tolerations]
        affinity = gpu_affinity(spec, cfg)
        if affinity is not None:
            pod_spec["affinity"] = affinity
    if cfg.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in cfg.image_pull_secrets]
    template_annotations = {LABEL_REVISION: str(spec.revision)}
    if spec.gpu > 0 and spec.desired_gpus:
        template_annotations[ANNOTATION_GPU_MODELS] = ", ".join(
            gpu.name for gpu in spec.desired_gpus
        )
    deployment_spec: Manifest = {}
    if not autoscaled(spec):
        deployment_spec["replicas"] = min_replicas(spec)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**_metadata(spec, cfg), "annotations": {LABEL_REVISION: str(spec.revision)}},
        "spec": {
            **deployment_spec,
            "revisionHistoryLimit": cfg.revision_history_limit,
            "progressDeadlineSeconds": cfg.progress_deadline_seconds,
            "selector": {"matchLabels": selector_labels(spec.container_id)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": labels(spec),
                    "annotations": template_annotations,
                },
                "spec": pod_spec,
            },
        },
    }


def make_service(spec: WorkloadSpec, cfg: KubernetesConfig) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, cfg),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec.container_id),
            "ports": [
                {
                    "name": PORT_NAME,
                    "port": cfg.service_port,
                    "targetPort": spec.port,
                    "protocol": "TCP",
                }
            ],
        },
    }


def ingress_host(spec: WorkloadSpec, cfg: KubernetesConfig) -> str:
    return f"{spec.slug}.{cfg.ingress_domain}"


def make_ingress(spec: WorkloadSpec, cfg: KubernetesConfig) -> Manifest:
    host = ingress_host(spec, cfg)
    ingress_spec: Manifest = {
        "rules": [
            {
                "host": host,
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {
                                "service": {
                                    "name": object_name(spec.container_id),
                                    "port": {"number": cfg.service_port},
                                }
                            },
                        }
                    ]
                },
            }
        ],
    }
    if cfg.ingress_class_name is not None:
        ingress_spec["ingressClassName"] = cfg.ingress_class_name
    if cfg.ingress_tls_secret is not None:
        ingress_spec["tls"] = [{"hosts": [host], "secretName": cfg.ingress_tls_secret}]
    metadata = _metadata(spec, cfg)
    if cfg.ingress_annotations:
        metadata["annotations"] = dict(cfg.ingress_annotations)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": ingress_spec,
    }


def make_autoscaler(spec: WorkloadSpec, cfg: KubernetesConfig) -> Manifest | None:
    """A CPU HorizontalPodAutoscaler between ``minInstances`` (at least 1) and ``maxInstances``,
    or None when they are equal (the Deployment's fixed ``replicas`` then applies).

    Without Knative there is no request-driven scaling: CPU use is the closest signal the
    cluster offers out of the box (metrics-server); ``concurrency`` and scale to zero need
    Knative (``docs/knative.md``).
    """
    if not autoscaled(spec):
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec, cfg),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": object_name(spec.container_id),
            },
            "minReplicas": min_replicas(spec),
            "maxReplicas": spec.scaling.max_instances,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": cfg.hpa_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }
