"""The local engine, found or started on demand: what ``dockyard serve`` runs containers on.

:class:`LocalEngine` is a :class:`app.runtime.base.Runtime` that delegates to a
:class:`app.runtime.docker.DockerRuntime` on whichever engine socket answers *now*:

1. ``DOCKYARD_DOCKER_HOST`` (or ``DOCKER_HOST``) when set: only that one;
2. else the usual sockets (:data:`app.runtime.factory.LOCAL_SOCKETS`: Docker, rootful and
   rootless Podman);
3. else, when the ``podman`` binary is installed, a ``podman system service --time=0`` that this
   process starts on a private socket under the data directory, supervises (started again if it
   dies) and stops on :meth:`LocalEngine.close`.

The choice is made again whenever the chosen socket stops answering, and on every call while none
was found: an engine installed or started after the server is picked up without a restart. While
there is none, every call raises :class:`NoRuntime`, which the reconciler turns into the status
reason ``NoRuntime`` with the fix in its message (install Podman or set DOCKYARD_DOCKER_HOST).

Why a supervised ``podman system service`` rather than a library: Podman has no daemon and no
Python binding that runs containers; its Docker-compatible REST service is the supported way to
drive it from another process, and it is what the Docker adapter already speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from pathlib import Path

from app.runtime.base import (
    LogLine,
    ReadyListener,
    RevisionState,
    RuntimeEvent,
    RuntimeUnavailable,
    WorkloadSpec,
)
from app.runtime.docker import DockerRuntime

log = logging.getLogger(__name__)

NO_RUNTIME_MESSAGE = "no container engine is configured; install Podman or set DOCKYARD_DOCKER_HOST"
UNIX_PATH_MAX = 107
"""Longest unix socket path Linux accepts (``sun_path`` is 108 bytes with the final NUL)."""
SPAWN_BACKOFF_SECONDS = 5.0
"""Least time between two starts of the supervised Podman service (it may keep dying)."""


class NoRuntime(RuntimeUnavailable):  # named after the status reason
    """No container engine answers and none can be started here."""

    reason = "NoRuntime"

    def __init__(self, message: str = NO_RUNTIME_MESSAGE) -> None:
        super().__init__(message)


def socket_answers(path: str) -> bool:
    """True when something accepts connections on the unix socket ``path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(path)
    except OSError:
        return False
    return True


def _unix_path(url: str) -> str | None:
    for prefix in ("unix://", "http+unix://"):
        if url.startswith(prefix):
            return "/" + url[len(prefix) :].lstrip("/")
    return None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the Podman service when the server process dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class PodmanSupervisor:
    """Starts ``podman system service --time=0`` on a private socket and keeps it running."""

    def __init__(self, directory: Path, *, podman: str = "podman", start_timeout: float = 30.0):
        self.directory = directory
        self.podman = podman
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._last_spawn = -SPAWN_BACKOFF_SECONDS
        path = directory / "podman.sock"
        if len(str(path)) > UNIX_PATH_MAX:
            # The data dir is too deep for a socket path: use a private directory in /tmp.
            path = Path(tempfile.mkdtemp(prefix="dockyard-podman-")) / "podman.sock"
        self.socket_path = path
        self.log_path = directory / "podman-service.log"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def available(self) -> bool:
        return shutil.which(self.podman) is not None

    async def ensure(self) -> str | None:
        """The service's URL once it answers; starts it when it is not running (at most once per
        :data:`SPAWN_BACKOFF_SECONDS`). None when Podman is missing or would not start."""
        if self.running and socket_answers(str(self.socket_path)):
            return self.url
        if not self.running:
            if time.monotonic() - self._last_spawn < SPAWN_BACKOFF_SECONDS:
                return None
            if not self.available():
                return None
            self._spawn()
        return await self._wait_until_answering()

    def _spawn(self) -> None:
        self._last_spawn = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket of an earlier, dead service
        # Popen from the event loop's thread: PR_SET_PDEATHSIG fires when the *thread* that
        # forked exits, so a worker thread would kill the service with it.
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [self.podman, "system", "service", "--time=0", self.url],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,  # only prctl: no locks taken in the child
            )
        log.info(
            "started podman system service (pid %d) on %s; its log: %s",
            self.process.pid,
            self.url,
            self.log_path,
        )

    async def _wait_until_answering(self) -> str | None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.running:
                code = self.process.returncode if self.process is not None else None
                log.warning("podman system service exited with %s; see %s", code, self.log_path)
                return None
            if socket_answers(str(self.socket_path)):
                return self.url
            await asyncio.sleep(0.1)
        log.warning("podman system service did not open %s in time", self.socket_path)
        return None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.info("stopped podman system service on %s", self.url)


RuntimeFactory = Callable[[str], DockerRuntime]


class LocalEngine:
    """A Runtime on the Docker/Podman engine that answers now (see the module docstring)."""

    name = "docker"
    capabilities = DockerRuntime.capabilities

    def __init__(
        self,
        *,
        make: RuntimeFactory,
        docker_host: str | None,
        candidates: tuple[str, ...],
        supervisor: PodmanSupervisor | None,
    ) -> None:
        """``make(url)`` builds the adapter for a socket; ``docker_host`` pins the engine (no
        search, no Podman started); ``candidates`` are the unix socket paths tried in order."""
        self._make = make
        self.docker_host = docker_host
        self.candidates = candidates
        self.supervisor = supervisor
        self._current: DockerRuntime | None = None
        self._lock = asyncio.Lock()
        self._announced_missing = False
        self.ready_listeners: list[ReadyListener] = []
        """Shared with every adapter made here (``app.runtime.base.SignalsReady``)."""

    @property
    def base_url(self) -> str | None:
        """The socket in use, or None while no engine answers."""
        return self._current.base_url if self._current is not None else None

    @property
    def open_streams(self) -> int:
        return self._current.open_streams if self._current is not None else 0

    def _answers(self, url: str) -> bool:
        path = _unix_path(url)
        return path is None or socket_answers(path)  # tcp:// engines are taken as configured

    async def engine(self) -> DockerRuntime:
        """The adapter on the engine in use, choosing (again) when needed; :class:`NoRuntime`
        when there is none."""
        current = self._current
        if current is not None and current.base_url is not None and self._answers(current.base_url):
            return current
        async with self._lock:
            current = self._current
            if (
                current is not None
                and current.base_url is not None
                and self._answers(current.base_url)
            ):
                return current
            url = await self._choose()
            if url is None:
                if current is not None:
                    log.warning("container engine at %s stopped answering", current.base_url)
                    self._current = None
                    await current.close()
                if not self._announced_missing:
                    log.warning("%s", NO_RUNTIME_MESSAGE)
                    self._announced_missing = True
                if self.docker_host:
                    raise RuntimeUnavailable(
                        f"container engine unreachable at DOCKYARD_DOCKER_HOST={self.docker_host}"
                    )
                raise NoRuntime()
            if current is not None and current.base_url == url:
                return current
            if current is not None:
                self._current = None
                await current.close()
            self._current = self._make(url)
            self._current.ready_listeners = self.ready_listeners
            self._announced_missing = False
            supervised = self.supervisor is not None and url == self.supervisor.url
            log.info(
                "container engine: %s%s",
                url,
                " (podman system service started and supervised by Dockyard)" if supervised else "",
            )
            return self._current

    async def _choose(self) -> str | None:
        if self.docker_host:
            return self.docker_host if self._answers(self.docker_host) else None
        for path in self.candidates:
            if socket_answers(path):
                return f"unix://{path}"
        if self.supervisor is not None:
            return await self.supervisor.ensure()
        return None

    # -- Runtime --------------------------------------------------------------------------------

    async def apply(self, spec: WorkloadSpec) -> None:
        await (await self.engine()).apply(spec)

    async def scale(self, spec: WorkloadSpec, instances: int, *, urgent: bool = False) -> None:
        await (await self.engine()).scale(spec, instances, urgent=urgent)

    async def retire(self, container_id: str, *, keep: set[int]) -> None:
        await (await self.engine()).retire(container_id, keep=keep)

    async def remove(self, container_id: str) -> None:
        await (await self.engine()).remove(container_id)

    async def observe(self, container_id: str) -> list[RevisionState]:
        return await (await self.engine()).observe(container_id)

    async def list_managed(self) -> dict[str, set[int]]:
        return await (await self.engine()).list_managed()

    async def watch(self) -> AsyncIterator[RuntimeEvent]:
        engine = await self.engine()
        async for event in engine.watch():
            yield event

    async def log_batches(
        self,
        container_id: str,
        *,
        revision: int | None = None,
        follow: bool = True,
        tail: int | None = 100,
        since: datetime | None = None,
    ) -> AsyncIterator[list[LogLine]]:
        engine = await self.engine()
        async for batch in engine.log_batches(
            container_id, revision=revision, follow=follow, tail=tail, since=since
        ):
            yield batch

    async def close(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            await current.close()
        if self.supervisor is not None:
            await asyncio.to_thread(self.supervisor.stop)


def local_engine(
    *,
    docker_host: str | None,
    data_dir: Path,
    candidates: tuple[str, ...],
    readiness_timeout: float,
    gpu_readiness_timeout: float = 1800.0,
    stop_timeout: int = 10,
    instance: str | None = None,
    labels: Mapping[str, str] | None = None,
    start_podman: bool = True,
) -> LocalEngine:
    """The local engine of ``dockyard serve``; Podman is started under ``data_dir/podman`` only
    when no ``docker_host`` is pinned and ``start_podman`` is set."""

    def make(url: str) -> DockerRuntime:
        return DockerRuntime(
            url,
            readiness_timeout=readiness_timeout,
            gpu_readiness_timeout=gpu_readiness_timeout,
            stop_timeout=stop_timeout,
            instance=instance,
            labels=labels,
        )

    supervisor = None
    if start_podman and not docker_host:
        supervisor = PodmanSupervisor(data_dir.resolve() / "podman")
    return LocalEngine(
        make=make, docker_host=docker_host, candidates=candidates, supervisor=supervisor
    )
