"""Pure builder of the Knative Serving ``Service`` that runs one container.

Like ``k8s_manifests`` (whose helpers it shares, so both runtimes give a revision the same
resources, GPU placement and hardening), a ``WorkloadSpec`` and a ``KubernetesConfig`` go in and a
JSON-ready dict comes out; the driver applies it server-side as field manager ``dockyard``.

What maps to what (documented in ``docs/knative.md``):

- one Knative ``Service`` per container, named like the Deployment (``dy-<id>``); its revision
  template is named ``dy-<id>-r<revision>``, so Knative's revision names are Dockyard's numbers;
- ``Scaling`` becomes the per-revision annotations ``autoscaling.knative.dev/min-scale``,
  ``max-scale`` and ``target`` (a *soft* target of in-flight requests per instance, as Dockyard's
  ``concurrency``). ``containerConcurrency`` (Knative's *hard* limit, requests beyond it queue in
  the activator/queue-proxy) stays unset, i.e. 0 = unlimited: the API has no hard-limit knob, and
  a hard limit equal to the target would queue every burst instead of letting the autoscaler add
  instances;
- ``scale_to_zero_after_seconds``: Knative decides to scale to zero once the stable window
  (``autoscaling.knative.dev/window``, 60 s by default) saw no request, and then keeps the last pod
  for ``scale-to-zero-pod-retention-period``. The idle time is therefore split into the window
  (shortened, never below Knative's 6 s minimum, when the idle time is under 60 s) and the
  retention period (the rest);
- no ``readinessProbe`` unless the spec has ``probes.readiness``: Knative's queue-proxy then
  probes the port over TCP aggressively, the same readiness test as the Deployment runtime, but
  with a faster cold start. The spec's probes map as on Deployments
  (``k8s_manifests.container_probes``); Knative accepts only the container's port on them (it
  runs readiness probes from its queue-proxy), other ports are refused when applied;
- GPU revisions get ``serving.knative.dev/progress-deadline`` (default 30 min) so a pod waiting
  for a GPU node to be provisioned is not reaped after Knative's default 10 minutes;
- ``traffic`` becomes ``spec.traffic`` (``revisionName`` or ``latestRevision: true``, ``percent``,
  ``tag``); a tagged target gets its own URL from Knative (``status.traffic[].url``).

Knative refuses pod fields it does not know to be safe: a pod-level ``securityContext``,
``terminationGracePeriodSeconds`` and ``privileged: true`` are not accepted, so the seccomp
profile and ``runAsNonRoot`` go on the container; ``affinity`` and ``tolerations`` are only
accepted when the ``config-features`` flags ``kubernetes.podspec-affinity`` and
``kubernetes.podspec-tolerations`` are enabled (``k8s/knative/config-features-patch.yaml``).
"""

from __future__ import annotations

from app.runtime.base import LABEL_REVISION, Scaling, WorkloadSpec
from app.runtime.k8s_manifests import (
    ANNOTATION_GPU_MODELS,
    CONTAINER_NAME,
    KubernetesConfig,
    Manifest,
    container_probes,
    container_resources,
    gpu_affinity,
    labels,
    namespace_for,
    object_name,
)

API_VERSION = "serving.knative.dev/v1"
GROUP = "serving.knative.dev"
VERSION = "v1"
KNATIVE_PORT_NAME = "http1"
"""Knative accepts only ``http1`` or ``h2c`` as the port name (it selects the protocol)."""
ANNOTATION_MIN_SCALE = "autoscaling.knative.dev/min-scale"
ANNOTATION_MAX_SCALE = "autoscaling.knative.dev/max-scale"
ANNOTATION_TARGET = "autoscaling.knative.dev/target"
ANNOTATION_WINDOW = "autoscaling.knative.dev/window"
ANNOTATION_RETENTION = "autoscaling.knative.dev/scale-to-zero-pod-retention-period"
ANNOTATION_PROGRESS_DEADLINE = "serving.knative.dev/progress-deadline"
LABEL_KNATIVE_SERVICE = "serving.knative.dev/service"
LABEL_KNATIVE_REVISION = "serving.knative.dev/revision"
FEATURE_AFFINITY = "kubernetes.podspec-affinity"
FEATURE_TOLERATIONS = "kubernetes.podspec-tolerations"
GPU_FEATURES = (FEATURE_AFFINITY, FEATURE_TOLERATIONS)
"""The ``config-features`` flags a GPU revision needs (affinity on the GPU label, tolerations)."""
_MIN_WINDOW_SECONDS = 6
_REVISION_SUFFIX_ROOM = 13  # "-r" and up to 11 digits keep the revision name a DNS label


def service_name(container_id: str) -> str:
    """The Knative Service of a container: the Deployment's name, short enough for revisions."""
    return object_name(container_id)[: 63 - _REVISION_SUFFIX_ROOM].rstrip("-")


def revision_name(container_id: str, revision: int) -> str:
    """Knative's name of Dockyard's revision ``revision`` (Knative needs the service prefix)."""
    return f"{service_name(container_id)}-r{revision}"


def revision_number(name: str, container_id: str) -> int | None:
    """Dockyard's revision number of a Knative revision name, if it is one of ours."""
    prefix = f"{service_name(container_id)}-r"
    suffix = name.removeprefix(prefix)
    return int(suffix) if name.startswith(prefix) and suffix.isdigit() else None


def scaling_annotations(scaling: Scaling, cfg: KubernetesConfig) -> dict[str, str]:
    """Knative's per-revision autoscaling annotations for Dockyard's ``Scaling``."""
    annotations = {
        ANNOTATION_MIN_SCALE: str(scaling.min_instances),
        ANNOTATION_MAX_SCALE: str(scaling.max_instances),
        ANNOTATION_TARGET: str(scaling.concurrency),
    }
    idle = scaling.scale_to_zero_after_seconds
    window = cfg.knative_stable_window_seconds
    if idle < window:
        window = max(_MIN_WINDOW_SECONDS, idle)
        annotations[ANNOTATION_WINDOW] = f"{window}s"
    annotations[ANNOTATION_RETENTION] = f"{max(0, idle - window)}s"
    return annotations


def _container(spec: WorkloadSpec, cfg: KubernetesConfig) -> Manifest:
    security: Manifest = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if cfg.drop_all_capabilities:
        security["capabilities"] = {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    if cfg.run_as_non_root:
        security["runAsNonRoot"] = True
    container: Manifest = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "ports": [{"name": KNATIVE_PORT_NAME, "containerPort": spec.port, "protocol": "TCP"}],
        "env": [{"name": key, "value": value} for key, value in sorted(spec.env.items())],
        "resources": container_resources(spec, cfg),
        **container_probes(spec, default_readiness=None),
        "securityContext": security,
    }
    if spec.command is not None:
        container["command"] = list(spec.command)
    if spec.arguments is not None:
        container["args"] = list(spec.arguments)
    return container


def traffic(spec: WorkloadSpec) -> list[Manifest]:
    """``spec.traffic`` of the Knative Service for the container's traffic targets."""
    targets: list[Manifest] = []
    for target in spec.traffic:
        entry: Manifest = {"percent": target.percent}
        if target.latest or target.revision is None:
            entry["latestRevision"] = True
        else:
            entry["latestRevision"] = False
            entry["revisionName"] = revision_name(spec.container_id, target.revision)
        if target.tag:
            entry["tag"] = target.tag
        targets.append(entry)
    return targets


def make_knative_service(spec: WorkloadSpec, cfg: KubernetesConfig) -> Manifest:
    """The ``serving.knative.dev/v1`` Service running revision ``spec.revision`` of a container."""
    pod_spec: Manifest = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [_container(spec, cfg)],
    }
    template_annotations = {
        LABEL_REVISION: str(spec.revision),
        **scaling_annotations(spec.scaling, cfg),
    }
    if spec.gpu > 0:
        pod_spec["tolerations"] = [toleration.to_dict() for toleration in cfg.gpu_tolerations]
        affinity = gpu_affinity(spec, cfg)
        if affinity is not None:
            pod_spec["affinity"] = affinity
        template_annotations[ANNOTATION_PROGRESS_DEADLINE] = (
            f"{cfg.knative_gpu_progress_deadline_seconds}s"
        )
        if spec.desired_gpus:
            template_annotations[ANNOTATION_GPU_MODELS] = ", ".join(
                gpu.name for gpu in spec.desired_gpus
            )
    if cfg.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in cfg.image_pull_secrets]
    return {
        "apiVersion": API_VERSION,
        "kind": "Service",
        "metadata": {
            "name": service_name(spec.container_id),
            "namespace": namespace_for(spec.owner, cfg),
            "labels": labels(spec),
            "annotations": {LABEL_REVISION: str(spec.revision)},
        },
        "spec": {
            "template": {
                "metadata": {
                    "name": revision_name(spec.container_id, spec.revision),
                    "labels": labels(spec),
                    "annotations": template_annotations,
                },
                "spec": pod_spec,
            },
            "traffic": traffic(spec),
        },
    }


def needs_gpu_features(manifest: Manifest) -> bool:
    """Whether the rendered Service uses pod fields behind Knative's GPU feature flags."""
    pod_spec = manifest["spec"]["template"]["spec"]
    return "affinity" in pod_spec or "tolerations" in pod_spec
