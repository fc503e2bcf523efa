"""Pick the runtime the settings ask for.

``auto``: on Kubernetes (a kubeconfig, or in a cluster) Knative Serving when the cluster serves
``serving.knative.dev/v1`` (API discovery at start-up), else plain Deployments; then
Docker/Podman; then none. Set ``knative`` or ``kubernetes`` to skip the discovery.
"""

from __future__ import annotations

import logging
import os
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
    data_dir: Path | None = None,
    start_podman: bool = True,
) -> Runtime | None:
    """The runtime to use, or None for ``none`` (an API without a runtime).

    ``auto`` and ``docker`` give a :class:`app.runtime.local.LocalEngine`: it uses the configured
    socket, else the first usual one that answers, else a ``podman system service`` it starts
    under ``data_dir`` (``start_podman``); and it looks again whenever none answers, so an engine
    that starts later is picked up without a restart.
    """
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
        return kubernetes_runtime(
            deployments, kubernetes_config, knative=True if kind == "knative" else None
        )
    from app.runtime.local import local_engine

    engine = local_engine(
        docker_host=docker_host,
        data_dir=data_dir or Path(".dockyard"),
        candidates=LOCAL_SOCKETS,
        readiness_timeout=readiness_timeout,
        gpu_readiness_timeout=gpu_readiness_timeout,
        stop_timeout=stop_timeout,
        instance=instance,
        labels=docker_labels,
        start_podman=start_podman,
    )
    if docker_host:
        where = f"the engine at {docker_host}"
    else:
        where = "the first engine socket that answers among " + ", ".join(LOCAL_SOCKETS)
        if engine.supervisor is not None:
            where += f", else a podman system service on {engine.supervisor.url}"
    log.info("local runtime: %s (chosen at first use, again whenever it stops answering)", where)
    return engine
