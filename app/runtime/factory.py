"""Pick the runtime the settings ask for.

``auto``: on Kubernetes (a kubeconfig, or in a cluster) Knative Serving when the cluster serves
``serving.knative.dev/v1`` (API discovery at start-up), else plain Deployments; then
Docker/Podman; then none. Set ``knative`` or ``kubernetes`` to skip the discovery.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from app.runtime.base import Runtime
from app.runtime.k8s import KubernetesRuntime
from app.runtime.k8s_manifests import KubernetesConfig

log = logging.getLogger(__name__)

LOCAL_SOCKETS = (
    "/var/run/docker.sock",
    "/run/podman/podman.sock",
    f"/run/user/{os.getuid()}/podman/podman.sock",
)


def _kubernetes_configured() -> bool:
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    kubeconfig = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
    return any(Path(part).is_file() for part in kubeconfig.split(os.pathsep) if part)


def _socket_answers(url: str) -> bool:
    if not url.startswith("unix://"):
        return True  # tcp:// engines are taken as configured; errors surface as status reasons
    path = url.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(path)
    except OSError:
        return False
    return True


def _docker_url(configured: str | None) -> str | None:
    if configured:
        return configured
    for path in LOCAL_SOCKETS:
        if _socket_answers(f"unix://{path}"):
            return f"unix://{path}"
    return None


def kubernetes_runtime(
    deployments: KubernetesRuntime,
    config: KubernetesConfig | None,
    *,
    knative: bool | None = None,
) -> Runtime:
    """The Knative runtime on the same client when ``knative`` (None: when the cluster serves
    ``serving.knative.dev/v1``), else the Deployment runtime."""
    from app.runtime.knative import KnativeRuntime, serves_knative

    if knative is None:
        try:
            knative = serves_knative(deployments.api_client)
        except Exception as error:  # discovery failed: say so and run the plain path
            log.warning(
                "could not ask the cluster whether it serves Knative Serving (%s); using "
                "Deployments. Set DOCKYARD_RUNTIME=knative to use Knative regardless.",
                error,
            )
            knative = False
        log.info("Kubernetes runtime: %s", "Knative Serving" if knative else "Deployments")
    if knative:
        return KnativeRuntime(deployments.api_client, config)
    return deployments


def make_runtime(
    kind: Literal["auto", "docker", "kubernetes", "knative", "none"],
    *,
    docker_host: str | None,
    readiness_timeout: float,
    gpu_readiness_timeout: float = 1800.0,
    stop_timeout: int = 10,
    instance: str | None = None,
    docker_labels: Mapping[str, str] | None = None,
    kubernetes_config: KubernetesConfig | None = None,
) -> Runtime | None:
    """The runtime to use, or None (with a warning) when nothing can run containers."""
    if kind == "none":
        return None
    if kind in ("kubernetes", "knative") or (kind == "auto" and _kubernetes_configured()):
        from app.runtime.k8s import KubernetesRuntime

        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            deployments = KubernetesRuntime.in_cluster(kubernetes_config)
        else:
            deployments = KubernetesRuntime.from_kubeconfig(kubernetes_config)
        if kind == "kubernetes":
            return deployments
        return kubernetes_runtime(deployments, kubernetes_config, knative=kind == "knative")
    url = _docker_url(docker_host)
    if url is not None and (kind == "docker" or _socket_answers(url)):
        from app.runtime.docker import DockerRuntime

        return DockerRuntime(
            url,
            readiness_timeout=readiness_timeout,
            gpu_readiness_timeout=gpu_readiness_timeout,
            stop_timeout=stop_timeout,
            instance=instance,
            labels=docker_labels,
        )
    if kind == "docker":
        raise ValueError(
            "DOCKYARD_RUNTIME=docker but no engine socket was found; set DOCKYARD_DOCKER_HOST"
        )
    log.warning(
        "no container runtime found (no kubeconfig, no Docker/Podman socket): the API works, "
        "but containers stay 'deploying' until a runtime is configured"
    )
    return None
