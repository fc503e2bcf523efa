"""Pick the runtime the settings ask for (``auto``: Kubernetes, then Docker/Podman, then none)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from app.runtime.base import Runtime
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


def make_runtime(
    kind: Literal["auto", "docker", "kubernetes", "none"],
    *,
    docker_host: str | None,
    readiness_timeout: float,
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
    if kind == "kubernetes" or (kind == "auto" and _kubernetes_configured()):
        from app.runtime.k8s import KubernetesRuntime

        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return KubernetesRuntime.in_cluster(kubernetes_config)
        return KubernetesRuntime.from_kubeconfig(kubernetes_config)
    from app.runtime.local import local_engine

    engine = local_engine(
        docker_host=docker_host,
        data_dir=data_dir or Path(".dockyard"),
        candidates=LOCAL_SOCKETS,
        readiness_timeout=readiness_timeout,
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
