"""Runtime adapter for the Docker Engine API (Docker, or Podman's Docker-compatible socket).

Mapping: one engine container per instance of a revision, the first named
``dockyard-<container_id>-r<revision>``, the others ``…-r<revision>-i<k>``, labelled with
:data:`LABEL_CONTAINER_ID`, :data:`LABEL_REVISION`, :data:`LABEL_REPLICA` (``k``; a container
without it is instance 0) and ``LABEL_MANAGED_BY=dockyard``. :meth:`DockerRuntime.scale` creates
the missing instances and removes the surplus, highest ``k`` first, never one still starting
unless asked to (a GPU revision may take many minutes to start). Each container port is published
on ``127.0.0.1`` with an ephemeral host port; the data plane reaches the ready instances at the
``endpoints`` that :meth:`DockerRuntime.observe` reports (lowest ``k`` first). An instance left
``created`` by a Dockyard that died between creating and starting it (a leader killed mid-deploy)
is adopted: :meth:`DockerRuntime.observe` counts it in ``instances_unstarted``, and the next
:meth:`DockerRuntime.scale` starts it, or removes it first when it is surplus. Exited instances
follow the engine's restart policy (``on-failure``, at most ``crashloop_restarts``), then fail.

Starting an instance costs what ``docker run`` costs and no more: create (first: the image is
looked for, and pulled, only when the engine answers 404), start, inspect for the published
port. A scale right after an observe that saw no instance of the revision does not list again,
and the observe right after a scale that made every engine container of the container reads the
inspect made after their start (once, within :data:`FRESH_SECONDS`). The new instance's port is
then dialed (from the event loop until it accepts, at most :data:`READINESS_WATCH_SECONDS`), and
the moment it accepts the runtime says so: to its ``ready_listeners`` (the activator forwards
the requests it holds) and as a runtime event (the reconciler looks at once instead of at its
next poll). Instances with probes are the prober's to judge, as before.

The official ``docker`` SDK is synchronous: every call runs in a worker thread
(``asyncio.to_thread``). The long-lived streams of :meth:`DockerRuntime.watch` and
:meth:`DockerRuntime.log_batches` are read asynchronously with aiohttp instead
(``app.runtime.engine_streams``): no thread per stream, and a chatty container's log is parsed
in blocks rather than one SDK call per line.

Limits of the local engine, on purpose:

- **Ephemeral storage** is enforced with ``storage_opt={"size": ...}`` only where the engine
  supports it (overlay on xfs with ``pquota``; devicemapper, btrfs, zfs). By default the adapter
  tries once, and when the engine refuses the option it remembers that and creates containers
  without it: the limit is then **not enforced locally** (it still is on Kubernetes). Podman 4.3 on
  overlay/ext4 refuses it.
- **GPUs** are requested with a ``DeviceRequest``. An engine that refuses it, or that silently drops
  it (Podman 4.x's compat API ignores ``DeviceRequests``), makes :meth:`DockerRuntime.apply` raise
  :class:`RuntimeRejected`; a GPU workload never runs without its GPU.
- Images are not pulled with credentials; a missing image that cannot be pulled is reported by
  :meth:`DockerRuntime.observe` as ``FAILED``/``ImagePullBackOff`` (kept in memory; the next
  :meth:`DockerRuntime.apply` of that revision tries again, so a restart loses nothing). Nothing
  retries a failed pull on its own (a wrong name or a missing tag does not heal): the status says
  that a redeploy is needed, which makes a new revision and pulls again.
- A revision that fails to deploy while its process runs (crash loop, wrong port, readiness
  timeout) has its engine container stopped, and keeps reporting the reason it failed; one that
  was ready once is never stopped for a failed probe. A process listening
  on other ports than the declared one (read from ``/proc/<pid>/net/tcp`` when Dockyard runs on
  the engine's host) fails after :data:`PORT_MISMATCH_GRACE_SECONDS` with ``PortMismatch``,
  naming the declared port, the ports the image exposes and those the process listens on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import logging
import os
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import docker
import docker.errors
import docker.models.containers
import docker.types
import docker.utils
import urllib3.exceptions

from app.domain.logtime import NS, parse_ns, to_datetime, to_ns
from app.runtime.base import (
    LABEL_CONTAINER_ID,
    LABEL_GPU,
    LABEL_IMAGE_READY_AT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_REPLICA,
    LABEL_REVISION,
    LABEL_SCHEDULED_AT,
    MANAGED_BY,
    Capabilities,
    LogLine,
    Phase,
    Probes,
    ReadyListener,
    RevisionState,
    RuntimeAdapterError,
    RuntimeConflict,
    RuntimeEvent,
    RuntimeRejected,
    RuntimeUnavailable,
    WorkloadSpec,
)
from app.runtime.engine_streams import EngineStreams, LogParser, read_json_lines, read_log_batches
from app.runtime.probing import Prober, Target, budget_of, probes_from_label, probes_to_label

T = TypeVar("T")
log = logging.getLogger(__name__)

MANAGED_FILTER = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
LABEL_PROBES = "dockyard.dev/probes"
"""The revision's health probes (JSON, ``app.runtime.probing``); absent: the port accepts."""
LABEL_PORT = "dockyard.dev/port"
"""The container port the revision serves on, when probes publish more than one."""
LIST_ATTEMPTS = 3
LOG_TAIL_ON_FAILURE = 5
PORT_MISMATCH_GRACE_SECONDS = 3.0
"""A process that listens on other ports but not the declared one fails after this long (it may
open its ports one after the other), instead of at the readiness timeout."""
FAILED_STOP_TIMEOUT = 2
"""Seconds a failed revision's process gets between SIGTERM and SIGKILL when it is stopped."""
ABSENT_HINT_SECONDS = 1.0
"""How long an observe that saw no instance of a revision spares the next scale of it a listing
(the reconciler scales right after it observes, in the same pass; the hint is used once)."""
FRESH_SECONDS = 0.5
"""How long the inspect made right after a start stands in for the listing of the next observe
(used once)."""
READINESS_WATCH_SECONDS = 10.0
"""How long the readiness watch of a new instance dials its port before it leaves the rest to the
reconciler's polling (a start-up slower than this is not the latency that matters)."""
READINESS_DIAL_MAX_GAP = 0.02
"""Longest pause between two dials of the readiness watch (it starts at 2 ms and grows)."""
_TCP_LISTEN = "0A"
_STREAM_NAMES = {0: "stdout", 1: "stdout", 2: "stderr"}


@dataclasses.dataclass(frozen=True)
class _Started:
    """An instance this process just created, started and inspected."""

    engine_id: str
    endpoint: str
    model: Any
    """The SDK's container, with the attributes of the inspect after its start."""
    accepting: bool
    """Its port accepted a connection right after that inspect."""


def container_name(container_id: str, revision: int, replica: int = 0) -> str:
    """The engine name of one instance; the first keeps the name of one-instance revisions."""
    base = f"dockyard-{container_id}-r{revision}"
    return base if replica == 0 else f"{base}-i{replica}"


def container_labels(
    spec: WorkloadSpec,
    instance: str | None = None,
    extra: Mapping[str, str] | None = None,
    replica: int = 0,
) -> dict[str, str]:
    labels = {
        **(extra or {}),
        LABEL_CONTAINER_ID: spec.container_id,
        LABEL_REVISION: str(spec.revision),
        LABEL_REPLICA: str(replica),
        LABEL_MANAGED_BY: MANAGED_BY,
    }
    if spec.gpu > 0:
        labels[LABEL_GPU] = str(spec.gpu)
    if spec.probes != Probes():
        labels[LABEL_PROBES] = probes_to_label(spec.probes)
        labels[LABEL_PORT] = str(spec.port)
    if instance is not None:
        labels[LABEL_INSTANCE] = instance
    return labels


def container_create_kwargs(
    spec: WorkloadSpec,
    *,
    crashloop_restarts: int = 3,
    enforce_storage: bool = False,
    instance: str | None = None,
    extra_labels: Mapping[str, str] | None = None,
    replica: int = 0,
) -> dict[str, Any]:
    """Keyword arguments of ``client.containers.create`` for one revision; pure.

    Kubernetes semantics for ``command``/``arguments``: ``command`` replaces the image's
    entrypoint, ``arguments`` its CMD; a command without arguments drops the image's CMD.
    """
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "name": container_name(spec.container_id, spec.revision, replica),
        "labels": container_labels(spec, instance, extra_labels, replica),
        "environment": dict(spec.env),
        "ports": {f"{port}/tcp": ("127.0.0.1", None) for port in sorted(_published_ports(spec))},
        "restart_policy": {"Name": "on-failure", "MaximumRetryCount": crashloop_restarts},
        "detach": True,
    }
    if spec.cpu > 0:
        kwargs["nano_cpus"] = round(spec.cpu * 1e9)
    if spec.ram_bytes > 0:
        kwargs["mem_limit"] = spec.ram_bytes
    if spec.command is not None:
        kwargs["entrypoint"] = list(spec.command)
        kwargs["command"] = list(spec.arguments) if spec.arguments is not None else []
    elif spec.arguments is not None:
        kwargs["command"] = list(spec.arguments)
    if spec.gpu > 0:
        kwargs["device_requests"] = [
            docker.types.DeviceRequest(count=spec.gpu, capabilities=[["gpu"]])
        ]
    if enforce_storage and spec.ephemeral_storage_bytes > 0:
        kwargs["storage_opt"] = {"size": str(spec.ephemeral_storage_bytes)}
    return kwargs


def _published_ports(spec: WorkloadSpec) -> set[int]:
    """The revision's port, and the other ports its HTTP/TCP probes check (Dockyard's checker
    reaches them on 127.0.0.1 like the data plane)."""
    ports = {spec.port}
    for probe in (spec.probes.startup, spec.probes.readiness, spec.probes.liveness):
        if probe is not None and probe.action != "exec" and probe.port:
            ports.add(probe.port)
    return ports


def parse_engine_time(value: str) -> datetime | None:
    """An engine RFC 3339 timestamp (nanoseconds, ``Z`` or offset) as aware UTC; None for the
    engine's zero time (``0001-01-01T00:00:00Z``: never started) and for garbage."""
    ns = parse_ns(value.strip())
    if ns is None or ns <= 0:
        return None
    return to_datetime(ns)


def _api_error_text(e: docker.errors.APIError) -> str:
    explanation = getattr(e, "explanation", None)
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return str(explanation or e)


def _translate(e: Exception, action: str) -> RuntimeAdapterError:
    """Map a docker SDK / transport error to the project's runtime errors."""
    if isinstance(e, docker.errors.APIError):
        status = e.status_code or 500
        text = f"{action}: {_api_error_text(e)}"
        if status == 409:
            return RuntimeConflict(text)
        if 400 <= status < 500:
            return RuntimeRejected(text)
        return RuntimeUnavailable(text)
    return RuntimeUnavailable(f"{action}: container engine unreachable: {e}")


def _is_transport_error(e: BaseException) -> bool:
    # requests' exceptions derive from OSError; DockerException covers e.g. a bad base_url.
    return isinstance(e, OSError | urllib3.exceptions.HTTPError | docker.errors.DockerException)


def listening_ports(pid: int, proc: str = "/proc") -> set[int] | None:
    """TCP ports a process's network namespace listens on, read from ``/proc/<pid>/net/tcp``
    and ``tcp6`` (the engine reports the pid; this works when Dockyard runs on the engine's
    host with the right to read them). None when that cannot be told."""
    if pid <= 0:
        return None
    try:
        if os.stat(f"{proc}/{pid}/ns/net").st_ino == os.stat(f"{proc}/self/ns/net").st_ino:
            return None  # the host's own network: its ports are not the container's to judge
    except OSError:
        pass  # no namespace links (e.g. a copied /proc tree): read the tables as they are
    ports: set[int] = set()
    read_any = False
    for table in ("tcp", "tcp6"):
        try:
            with open(f"{proc}/{pid}/net/{table}", encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except (OSError, UnicodeDecodeError):
            continue
        read_any = True
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == _TCP_LISTEN:
                with contextlib.suppress(ValueError, IndexError):
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports if read_any else None


def _ports_text(ports: set[int] | list[str]) -> str:
    return ", ".join(str(p) for p in sorted(ports))


def _declared_port(attrs: dict[str, Any]) -> str | None:
    """The container port Dockyard published (``8080`` of ``8080/tcp``)."""
    ports = (attrs.get("HostConfig") or {}).get("PortBindings") or (
        (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    )
    for key in ports:
        return str(key).split("/", 1)[0]
    return None


class DockerRuntime:
    """:class:`app.runtime.base.Runtime` on a Docker Engine API socket."""

    name = "docker"
    capabilities = Capabilities(autoscales=False, scale_to_zero=True, traffic_split=True)
    """Dockyard's own data plane (proxy, activator, autoscaler) does the serverless part."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        readiness_timeout: float = 60.0,
        gpu_readiness_timeout: float = 1800.0,
        crashloop_restarts: int = 3,
        connect_timeout: float = 0.5,
        api_timeout: float = 60.0,
        enforce_storage: bool | None = None,
        api_version: str = "1.41",
        stop_timeout: int = 10,
        instance: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Create the client without contacting the engine.

        ``gpu_readiness_timeout``: the start-up budget of a GPU revision instead of
        ``readiness_timeout`` (loading a model can take many minutes).
        ``stop_timeout``: seconds a retired revision gets between SIGTERM and SIGKILL.
        ``enforce_storage``: None probes the engine on first use, True/False forces it.
        ``instance``: when set, containers carry ``dockyard.dev/instance`` and this runtime sees
        only its own, so two Dockyard installations on one engine never collect each other's
        containers as orphans.
        ``labels``: extra labels put on every engine container (``DOCKYARD_DOCKER_LABELS``); the
        test suite and the benchmarks mark theirs with a run label and remove only those.
        ``api_version`` is pinned (1.41: Podman 4's compat API, any Docker >= 20.10) because the
        SDK's ``auto`` would query the engine here, in a constructor that must not do I/O.
        """
        self.base_url = base_url
        self.readiness_timeout = readiness_timeout
        self.gpu_readiness_timeout = gpu_readiness_timeout
        self.crashloop_restarts = crashloop_restarts
        self.connect_timeout = connect_timeout
        self._enforce_storage = enforce_storage
        self.stop_timeout = stop_timeout
        self.instance = instance
        self.labels = dict(labels or {})
        self._client: Any = docker.DockerClient(
            base_url=base_url, version=api_version, timeout=int(api_timeout)
        )
        self._failures: dict[tuple[str, int], RevisionState] = {}
        self._stopped: dict[tuple[str, int], RevisionState] = {}
        """Failed revisions whose engine container we stopped, with the reason they failed."""
        self._ever_ready: set[tuple[str, int]] = set()
        """Revisions seen ready: one that served is never stopped for a failed probe (a slow
        machine can miss one), only revisions that failed to deploy are."""
        self._exposed: dict[str, list[str]] = {}
        """Image id -> the ports its config exposes (``EXPOSE``)."""
        self._engine_streams = EngineStreams(
            base_url, api_version=api_version, connect_timeout=max(connect_timeout, 5.0)
        )
        self._prober = Prober(self._exec_probe, self._restart_instance)
        self.ready_listeners: list[ReadyListener] = []
        """Called on the event loop with ``(container id, revision, endpoints)`` the moment a
        new instance's port accepts, before any observe says so (the activator forwards the
        requests it holds then; ``app.runtime.base.SignalsReady``)."""
        self._fresh: dict[str, tuple[float, list[Any]]] = {}
        """Container id -> its engine containers, every one created, started and inspected by
        the scale that just ran (``_found``)."""
        self._observed: dict[str, tuple[float, set[int]]] = {}
        """Container id -> when this process last observed it, and the revisions that had
        engine containers then (``_present``)."""
        self._readiness: dict[str, asyncio.Task[None]] = {}
        """Engine id -> the task dialing a new instance's port until it accepts."""
        self._watchers: set[asyncio.Queue[RuntimeEvent | Exception | None]] = set()

    # -- plumbing -------------------------------------------------------------------------------

    def _managed_filter(self) -> list[str]:
        labels = [MANAGED_FILTER]
        if self.instance is not None:
            labels.append(f"{LABEL_INSTANCE}={self.instance}")
        return labels

    def _check_socket(self, action: str) -> None:
        """Fail fast when a unix socket is missing.

        The SDK's unix transport leaks the socket object when ``connect`` fails (a
        ``ResourceWarning`` later); checking the path first avoids that for the common case of an
        engine that is not running at all.
        """
        url = self.base_url or ""
        for prefix in ("unix://", "http+unix://"):
            if url.startswith(prefix):
                path = "/" + url[len(prefix) :].lstrip("/")
                if not os.path.exists(path):
                    raise RuntimeUnavailable(
                        f"{action}: container engine unreachable: no socket at {path}"
                    ) from FileNotFoundError(errno.ENOENT, "no such socket", path)

    async def _call(self, action: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self._check_socket(action)
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except RuntimeAdapterError:
            raise
        except docker.errors.APIError as e:
            raise _translate(e, action) from e
        except Exception as e:
            if _is_transport_error(e):
                raise _translate(e, action) from e
            raise

    def _list(self, container_id: str | None = None, *, sparse: bool = False) -> list[Any]:
        labels = self._managed_filter()
        if container_id is not None:
            labels.append(f"{LABEL_CONTAINER_ID}={container_id}")
        for attempt in range(LIST_ATTEMPTS):
            try:
                found = self._client.containers.list(
                    all=True, sparse=sparse, filters={"label": labels}, ignore_removed=True
                )
                break
            except docker.errors.APIError as e:
                # Podman answers 500 "no such container" (Docker: 404, which the SDK ignores)
                # when a listed container is removed before its inspect: list again.
                if attempt == LIST_ATTEMPTS - 1 or "no such container" not in str(e).lower():
                    raise
        else:  # pragma: no cover - the loop either breaks or raises
            raise AssertionError("unreachable")
        result = []
        for c in found:
            c_labels = self._labels(c)
            if c_labels.get(LABEL_MANAGED_BY) != MANAGED_BY:
                continue
            if self.instance is not None and c_labels.get(LABEL_INSTANCE) != self.instance:
                continue
            if container_id is not None and c_labels.get(LABEL_CONTAINER_ID) != container_id:
                continue
            result.append(c)
        return result

    @staticmethod
    def _labels(c: Any) -> dict[str, str]:
        labels = c.attrs.get("Labels") or c.attrs.get("Config", {}).get("Labels") or {}
        return dict(labels)

    @classmethod
    def _revision(cls, c: Any) -> int | None:
        try:
            return int(cls._labels(c).get(LABEL_REVISION, ""))
        except ValueError:
            return None

    @classmethod
    def _replica(cls, c: Any) -> int:
        """Which instance of its revision; containers made before instances existed are 0."""
        try:
            return int(cls._labels(c).get(LABEL_REPLICA, "0"))
        except ValueError:
            return 0

    # -- apply / scale -------------------------------------------------------------------------

    async def apply(self, spec: WorkloadSpec) -> None:
        started = await self._call(
            f"apply {container_name(spec.container_id, spec.revision)}",
            self._scale_sync,
            spec,
            1,
            False,
            False,
        )
        self._announce(spec, started)

    async def scale(self, spec: WorkloadSpec, instances: int, *, urgent: bool = False) -> None:
        started = await self._call(
            f"scale {container_name(spec.container_id, spec.revision)} to {instances}",
            self._scale_sync,
            spec,
            max(instances, 0),
            urgent,
            True,
        )
        self._announce(spec, started)

    def _present(self, spec: WorkloadSpec) -> tuple[dict[int, Any], bool]:
        """The revision's instances by ``k``, and whether the container was known to have no
        engine container at all. When this process's observe of the container, just before
        (the reconciler observes, then scales, in one pass under its lock), saw none of the
        revision, that answer is used once instead of listing again: a create that meets an
        instance made meanwhile gets a 409, and the instance is then looked up."""
        seen = self._observed.pop(spec.container_id, None)
        if (
            seen is not None
            and time.monotonic() - seen[0] < ABSENT_HINT_SECONDS
            and spec.revision not in seen[1]
        ):
            empty = not seen[1]
            seen[1].add(spec.revision)  # it has instances from now on: a second scale lists
            self._observed[spec.container_id] = seen
            return {}, empty
        present = {
            self._replica(c): c
            for c in self._list(spec.container_id)
            if self._revision(c) == spec.revision
        }
        return present, False

    def _scale_sync(
        self, spec: WorkloadSpec, instances: int, urgent: bool, shrink: bool, relist: bool = True
    ) -> list[_Started]:
        """Create, start or remove instances; returns the instances started here whose
        readiness is their port accepting (``_announce``)."""
        present, empty = self._present(spec)
        started: list[_Started] = []
        for _, c in sorted(present.items())[:instances]:  # the lowest instances stay
            if self._status(c) == "created":
                # created but never started: a failed start before a restart of ours, or a
                # replica (a killed leader) that died between creating and starting it
                log.info("starting %s: created but never started", c.name)
                self._start(spec, c)
                with contextlib.suppress(docker.errors.NotFound):
                    c.reload()  # started now: not a never-started victim below
        if len(present) < instances:
            free = (k for k in range(instances + len(present)) if k not in present)
            for _ in range(instances - len(present)):
                replica = next(free)
                outcome = self._create_instance(spec, replica)
                if outcome is None:
                    return started
                if outcome == "exists":
                    if relist and not present and not started:
                        # made since the observe this pass relied on: look it up (listing)
                        return self._scale_sync(spec, instances, urgent, shrink, relist=False)
                    continue  # created concurrently by another apply
                if outcome:
                    started.append(outcome)
            if empty and len(started) == instances:
                # every engine container of the container was made and inspected just now:
                # the observe that follows (the reconciler's, in the same pass) reads these
                self._fresh[spec.container_id] = (
                    time.monotonic(),
                    [item.model for item in started],
                )
            return started
        if not shrink or len(present) <= instances:
            return started
        if instances == 0:
            self._failures.pop((spec.container_id, spec.revision), None)
        surplus = len(present) - instances
        for c in self._victims(spec.container_id, spec.revision, present, urgent)[:surplus]:
            self._remove_container(c, graceful=True)
        return started

    def _victims(
        self, container_id: str, revision: int, present: dict[int, Any], urgent: bool
    ) -> list[Any]:
        """Instances to remove when shrinking, in order: never-started ones, failed ones, then
        ready ones from the highest instance down (the data plane is told the lowest ones
        first), then, only when urgent, those still starting."""
        unstarted, failed, ready, starting = [], [], [], []
        for _, c in sorted(present.items(), reverse=True):
            if self._status(c) == "created":
                unstarted.append(c)  # never started: it serves nothing and is not starting
                continue
            phase = self._state_of(container_id, revision, c).phase
            if phase is Phase.FAILED:
                failed.append(c)
            elif phase is Phase.READY:
                ready.append(c)
            elif urgent:
                starting.append(c)
        return unstarted + failed + ready + starting

    def _create_instance(
        self, spec: WorkloadSpec, replica: int
    ) -> _Started | Literal["exists", ""] | None:
        """Create and start one instance. Returns None when the revision cannot run (image,
        GPUs), ``"exists"`` when an instance of that name is there already, else the started
        instance (inspected after its start) when its readiness is its port accepting, or
        ``""``.

        Create first: the image is looked for (and pulled) only when the engine says it is
        missing, which saves a round trip on every start of an image that is present."""
        name = container_name(spec.container_id, spec.revision, replica)
        scheduled = str(time.time_ns())
        moments = {LABEL_SCHEDULED_AT: scheduled, LABEL_IMAGE_READY_AT: scheduled}
        try:
            try:
                container = self._create(spec, replica, moments)
            except docker.errors.NotFound:  # no such image (Docker and Podman answer 404)
                if not self._ensure_image(spec):
                    return None
                moments[LABEL_IMAGE_READY_AT] = str(time.time_ns())
                container = self._create(spec, replica, moments)
        except docker.errors.APIError as e:
            if e.status_code == 409 or "already in use" in _api_error_text(e):
                # created concurrently, or since the observe we relied on (Podman answers 500
                # "the container name ... is already in use", Docker 409)
                return "exists"
            if spec.gpu > 0:
                raise RuntimeRejected(
                    f"{name}: the container engine refused {spec.gpu} GPU(s): {_api_error_text(e)}"
                ) from e
            raise RuntimeRejected(
                f"{name}: the container engine refused the spec: {_api_error_text(e)}"
            ) from e
        if spec.gpu > 0:
            container.reload()
            if not container.attrs.get("HostConfig", {}).get("DeviceRequests"):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
                raise RuntimeRejected(
                    f"{name}: the container engine ignored the request for {spec.gpu} GPU(s) "
                    "(no GPU support on this engine); not running it without GPUs"
                )
        if not self._start(spec, container) or spec.probes != Probes():
            return ""  # probes: the prober says when it is ready
        try:
            container.reload()  # the published port; ``docker run`` asks for it too
        except docker.errors.APIError:  # gone already (Podman: 500 "no such container")
            return ""  # the next observe says what became of it
        endpoint = self._endpoint(container.attrs, spec.port)
        if not endpoint:
            return ""
        return _Started(str(container.id), endpoint, container, self._port_open(endpoint))

    def _start(self, spec: WorkloadSpec, container: Any) -> bool:
        """Start an instance; False when it could not (the failure is kept for observe)."""
        key = (spec.container_id, spec.revision)
        try:
            container.start()
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as e:
            self._failures[key] = RevisionState(
                container_id=spec.container_id,
                revision=spec.revision,
                phase=Phase.FAILED,
                reason="StartError",
                message=f"{container.name} could not start: {_api_error_text(e)}",
            )
            return False
        self._failures.pop(key, None)
        self._stopped.pop(key, None)  # a new instance runs: an earlier stop no longer speaks
        return True

    def _ensure_image(self, spec: WorkloadSpec) -> bool:
        """True when the image is present locally, pulling it once if needed."""
        key = (spec.container_id, spec.revision)
        try:
            self._client.images.get(spec.image)
            return True
        except docker.errors.ImageNotFound:
            pass
        repository, tag = docker.utils.parse_repository_tag(spec.image)
        pull_error = ""
        try:
            for event in self._client.api.pull(repository, tag=tag, stream=True, decode=True):
                if isinstance(event, dict) and event.get("error"):
                    pull_error = str(event["error"])
            self._client.images.get(spec.image)
            return True
        except docker.errors.APIError as e:
            pull_error = pull_error or _api_error_text(e)
        self._failures[key] = RevisionState(
            container_id=spec.container_id,
            revision=spec.revision,
            phase=Phase.FAILED,
            reason="ImagePullBackOff",
            message=f"image {spec.image} not found locally and could not be pulled"
            + (f": {pull_error.strip()}" if pull_error else "")
            + "; nothing retries by itself: fix the image (push it, or `podman build`/"
            "`podman import` it locally) and redeploy (`dockyard redeploy`, "
            "POST /v1/containers/{id}/redeploy)",
        )
        return False

    def _create(
        self, spec: WorkloadSpec, replica: int = 0, moments: Mapping[str, str] | None = None
    ) -> Any:
        wants_storage = spec.ephemeral_storage_bytes > 0 and self._enforce_storage is not False
        kwargs = container_create_kwargs(
            spec,
            crashloop_restarts=self.crashloop_restarts,
            enforce_storage=wants_storage,
            instance=self.instance,
            extra_labels={**self.labels, **(moments or {})},
            replica=replica,
        )
        kwargs.pop("detach", None)
        try:
            return self._create_container(kwargs)
        except docker.errors.APIError as e:
            if not wants_storage or "storage-opt" not in _api_error_text(e).lower():
                raise
            if self._enforce_storage is True:
                raise RuntimeRejected(
                    f"{kwargs['name']}: the container engine cannot limit ephemeral storage: "
                    f"{_api_error_text(e)}"
                ) from e
        # The engine cannot limit the writable layer: remember it, run without the limit.
        self._enforce_storage = False
        kwargs.pop("storage_opt", None)
        return self._create_container(kwargs)

    def _create_container(self, kwargs: dict[str, Any]) -> Any:
        """``client.containers.create`` without the inspect the SDK makes after it (one engine
        round trip less on every start): the model knows its id and name, which is all that
        starting it needs; ``reload()`` fills the rest when asked."""
        args = docker.models.containers._create_container_args(
            {**kwargs, "version": self._client.api.api_version}
        )
        created = self._client.api.create_container(**args)
        return self._client.containers.prepare_model(
            {"Id": created["Id"], "Name": "/" + str(kwargs["name"])}
        )

    # -- retire / remove / list -----------------------------------------------------------------

    async def retire(self, container_id: str, *, keep: set[int]) -> None:
        await self._call(f"retire {container_id}", self._remove_sync, container_id, set(keep))

    async def remove(self, container_id: str) -> None:
        await self._call(f"remove {container_id}", self._remove_sync, container_id, None)

    def _remove_sync(self, container_id: str, keep: set[int] | None) -> None:
        self._fresh.pop(container_id, None)
        if keep is None:
            self._observed.pop(container_id, None)
        for failures in (self._failures, self._stopped):
            for key in list(failures):
                if key[0] == container_id and (keep is None or key[1] not in keep):
                    failures.pop(key, None)
        self._ever_ready -= {
            key
            for key in self._ever_ready
            if key[0] == container_id and (keep is None or key[1] not in keep)
        }
        kept = set()
        for c in self._list(container_id, sparse=True):
            if keep is not None and self._revision(c) in keep:
                kept.add(str(c.id))
                continue
            # graceful for a retired revision still serving (SIGTERM, then SIGKILL)
            self._remove_container(c, graceful=keep is not None)
        self._prober.forget_missing(container_id, kept)

    def _remove_container(self, c: Any, *, graceful: bool) -> None:
        try:
            if graceful:
                c.stop(timeout=self.stop_timeout)
            c.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            # Podman answers 500 "removal already in progress" for concurrent removes.
            if "in progress" not in _api_error_text(e).lower():
                raise

    async def list_managed(self) -> dict[str, set[int]]:
        return await self._call("list managed containers", self._list_managed_sync)

    def _list_managed_sync(self) -> dict[str, set[int]]:
        result: dict[str, set[int]] = {}
        for c in self._list(sparse=True):
            cid = self._labels(c).get(LABEL_CONTAINER_ID)
            revision = self._revision(c)
            if cid and revision is not None:
                result.setdefault(cid, set()).add(revision)
        return result

    # -- readiness of new instances -------------------------------------------------------------

    def _announce(self, spec: WorkloadSpec, started: list[_Started]) -> None:
        """Say the moment each new instance's port accepts (``ready_listeners``) rather than at
        the reconciler's next look. One that accepted when it was dialed right after its start
        is announced now (the caller observes next and sees it); the others are dialed from the
        event loop until they accept, which also queues the container for the reconciler (a
        runtime event). Only instances whose readiness is their port accepting (no probes) are
        announced; the prober says it for the others."""
        budget = min(self.readiness_timeout, READINESS_WATCH_SECONDS)
        for item in started:
            if item.accepting:
                self._tell_ready(spec.container_id, spec.revision, (item.endpoint,))
                continue
            engine_id = item.engine_id
            if engine_id in self._readiness:
                continue
            task = asyncio.create_task(
                self._await_port(spec.container_id, spec.revision, item.endpoint, budget),
                name=f"dockyard-readiness-{engine_id[:12]}",
            )
            self._readiness[engine_id] = task
            task.add_done_callback(functools.partial(self._readiness_done, engine_id))

    def _readiness_done(self, engine_id: str, _task: asyncio.Task[None]) -> None:
        self._readiness.pop(engine_id, None)

    async def _await_port(
        self, container_id: str, revision: int, endpoint: str, budget: float
    ) -> None:
        host, _, port = endpoint.rpartition(":")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        gap = 0.002
        while True:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, int(port)), self.connect_timeout
                )
            except (OSError, TimeoutError):
                if loop.time() + gap > deadline:
                    return  # the reconciler's polling and its readiness budget take over
                await asyncio.sleep(gap)
                gap = min(gap * 1.5, READINESS_DIAL_MAX_GAP)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            break
        self._tell_ready(container_id, revision, (endpoint,))
        self._changed(container_id)

    def _tell_ready(self, container_id: str, revision: int, endpoints: tuple[str, ...]) -> None:
        for listener in list(self.ready_listeners):
            try:
                listener(container_id, revision, endpoints)
            except Exception:
                log.exception("a readiness listener failed")

    def _changed(self, container_id: str) -> None:
        """Queue an event for every ``watch`` (the reconciler re-observes the container)."""
        for queue in list(self._watchers):
            queue.put_nowait(RuntimeEvent(container_id=container_id))

    # -- observe --------------------------------------------------------------------------------

    async def observe(self, container_id: str) -> list[RevisionState]:
        self._prober.ensure_running()
        seen_at = time.monotonic()
        states = await self._call(f"observe {container_id}", self._observe_sync, container_id)
        self._observed[container_id] = (
            seen_at,
            {state.revision for state in states if state.instances_desired},
        )
        return states

    async def _exec_probe(
        self, engine_id: str, command: tuple[str, ...], limit: float
    ) -> tuple[int, str]:
        """Run an ``exec`` probe's command in the instance (the engine's exec API); the caller
        stops waiting after ``limit`` seconds."""

        def run() -> tuple[int, str]:
            c = self._client.containers.get(engine_id)
            code, output = c.exec_run(list(command), stdout=True, stderr=True)
            text = output.decode("utf-8", "replace") if isinstance(output, bytes) else ""
            return int(code if code is not None else -1), text

        return await self._call(f"exec probe in {engine_id[:12]}", run)

    async def _restart_instance(self, engine_id: str) -> None:
        """Restart an instance whose liveness probe failed (SIGTERM, ``stop_timeout``, SIGKILL)."""

        def run() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self._client.containers.get(engine_id).restart(timeout=self.stop_timeout)

        await self._call(f"restart {engine_id[:12]}", run)

    def _observe_sync(self, container_id: str) -> list[RevisionState]:
        instances: dict[int, list[tuple[int, RevisionState]]] = {}
        unstarted: dict[int, int] = {}
        found = self._found(container_id)
        self._prober.forget_missing(container_id, {str(c.id) for c in found})
        for c in found:
            revision = self._revision(c)
            if revision is None:
                continue
            if self._never_started(container_id, revision, c):
                unstarted[revision] = unstarted.get(revision, 0) + 1
            stopped = self._stopped.get((container_id, revision))
            if stopped is not None:
                state = stopped
            else:
                state = self._state_of(container_id, revision, c)
                key = (container_id, revision)
                if state.phase is Phase.READY:
                    self._ever_ready.add(key)
                elif (
                    state.phase is Phase.FAILED
                    and key not in self._ever_ready
                    and self._status(c) in ("running", "restarting")
                ):
                    state = self._stop_failed(c, state)
            instances.setdefault(revision, []).append((self._replica(c), state))
        states = {
            revision: dataclasses.replace(
                _revision_state(container_id, revision, found),
                instances_unstarted=unstarted.get(revision, 0),
            )
            for revision, found in instances.items()
        }
        for (cid, revision), failure in list(self._failures.items()):
            if cid == container_id and (
                revision not in states
                or states[revision].reason in ("ContainerCreating", "StartError")
            ):
                states[revision] = dataclasses.replace(
                    failure, instances_desired=len(instances.get(revision, ()))
                )
        return [states[r] for r in sorted(states)]

    def _found(self, container_id: str) -> list[Any]:
        """The container's engine containers: listed, unless the scale just before made every
        one of them and inspected it after its start (the reconciler observes right after it
        scales, in the same pass): that inspect is used once, and the port is dialed anew."""
        fresh = self._fresh.pop(container_id, None)
        if fresh is not None and time.monotonic() - fresh[0] < FRESH_SECONDS:
            return fresh[1]
        return self._list(container_id)

    def _never_started(self, container_id: str, revision: int, c: Any) -> bool:
        """An engine container of ours left ``created``: its creator died before starting it
        (a leader killed mid-deploy; here one scale call creates and starts an instance, and
        the reconciler never observes a container while it scales it). One whose start this
        process saw fail is not counted: that revision is failed, and only a new apply or
        scale tries the start again."""
        return self._status(c) == "created" and (container_id, revision) not in self._failures

    @staticmethod
    def _status(c: Any) -> str:
        state = c.attrs.get("State") or {}
        return str(state.get("Status") or c.status or "").lower()

    def _stop_failed(self, c: Any, state: RevisionState) -> RevisionState:
        """A failed revision does not keep running (and using cpu, memory, a port): stop its
        engine container, and keep reporting why it failed rather than its exit code."""
        stopped = self._stopped[(state.container_id, state.revision)] = RevisionState(
            state.container_id,
            state.revision,
            Phase.FAILED,
            state.reason,
            state.message + " (its engine container was stopped)",
        )
        try:
            c.stop(timeout=FAILED_STOP_TIMEOUT)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            # Still reported as failed; the next observe tries to stop it again.
            self._stopped.pop((state.container_id, state.revision), None)
            raise _translate(e, f"stop failed {c.name}") from e
        return stopped

    def _exposed_ports(self, attrs: dict[str, Any]) -> list[str] | None:
        """What the image's config exposes, e.g. ``["8080/tcp"]``; None when unknown."""
        image_id = str(attrs.get("Image") or "")
        if not image_id:
            return None
        if image_id not in self._exposed:
            try:
                config = self._client.images.get(image_id).attrs.get("Config") or {}
            except docker.errors.APIError:
                return None
            self._exposed[image_id] = sorted((config.get("ExposedPorts") or {}).keys())
        return self._exposed[image_id]

    def _port_evidence(self, attrs: dict[str, Any], endpoint: str) -> tuple[str, str, set[int]]:
        """``(declared port, what is known about the ports, ports the process listens on)``."""
        declared = _declared_port(attrs) or "?"
        exposed = self._exposed_ports(attrs)
        parts = [f"published as {endpoint}"]
        if exposed is not None:
            parts.append(
                f"the image exposes {_ports_text(exposed)}"
                if exposed
                else "the image exposes no port (no EXPOSE in its config)"
            )
        listening = listening_ports(int((attrs.get("State") or {}).get("Pid") or 0))
        if listening is not None:
            parts.append(
                f"the process listens on TCP {_ports_text(listening)}"
                if listening
                else "the process listens on no TCP port yet"
            )
        return declared, "; ".join(parts), listening or set()

    def _state_of(self, container_id: str, revision: int, c: Any) -> RevisionState:
        attrs = c.attrs
        state = attrs.get("State") or {}
        status = str(state.get("Status") or c.status or "").lower()
        restarts = int(attrs.get("RestartCount") or 0)
        exit_code = state.get("ExitCode")
        labels = self._labels(c)
        probes = probes_from_label(labels.get(LABEL_PROBES, ""))
        port = int(labels[LABEL_PORT]) if labels.get(LABEL_PORT, "").isdigit() else None
        endpoint = self._endpoint(attrs, port)
        started_at = parse_engine_time(str(state.get("StartedAt") or ""))
        budget = (
            self.gpu_readiness_timeout if self._labels(c).get(LABEL_GPU) else self.readiness_timeout
        )
        now = datetime.now(UTC)
        since_start = (now - started_at).total_seconds() if started_at else 0.0

        moments = engine_moments(self._labels(c), started_at)

        def result(phase: Phase, reason: str = "", message: str = "") -> RevisionState:
            return RevisionState(
                container_id, revision, phase, reason, message, endpoint, moments=moments
            )

        restarting = self._prober.restart_verdict(str(c.id)) if probes is not None else None
        if restarting is not None and status != "running":
            return result(restarting.phase, restarting.reason, restarting.message)
        if status == "running":
            if restarts > self.crashloop_restarts:
                return result(
                    Phase.FAILED, "CrashLoopBackOff", self._crash_message(c, exit_code, restarts)
                )
            if endpoint is None:
                return result(Phase.FAILED, "NoPort", "the engine published no host port")
            if probes is not None and port is not None:
                target = Target(
                    engine_id=str(c.id),
                    container_id=container_id,
                    started=str(state.get("StartedAt") or ""),
                    probes=probes,
                    port=port,
                    addresses=self._addresses(attrs),
                )
                verdict = self._prober.verdict(
                    target, since_start=since_start, budget=budget_of(probes, budget)
                )
                return result(verdict.phase, verdict.reason, verdict.message)
            if self._port_open(endpoint):
                return result(Phase.READY)
            declared, evidence, listening = self._port_evidence(attrs, endpoint)
            mismatch = listening and declared.isdigit() and int(declared) not in listening
            if mismatch and since_start >= PORT_MISMATCH_GRACE_SECONDS:
                return result(
                    Phase.FAILED,
                    "PortMismatch",
                    f"nothing listens on the declared port {declared} ({evidence}); set port "
                    f"to the one the process serves on, e.g. {min(listening)}",
                )
            if since_start > budget:
                return result(
                    Phase.FAILED,
                    "ReadinessTimeout",
                    f"port {declared} did not accept connections within "
                    f"{budget:g}s of start (running for {since_start:.0f}s; "
                    f"{evidence})",
                )
            return result(
                Phase.PENDING,
                "ContainerStarting",
                f"waiting for port {declared} to accept connections ({evidence})",
            )
        if status == "restarting":
            if restarts >= self.crashloop_restarts:
                return result(
                    Phase.FAILED, "CrashLoopBackOff", self._crash_message(c, exit_code, restarts)
                )
            return result(
                Phase.PENDING,
                "Restarting",
                f"restarting after exit code {exit_code} ({restarts} restarts so far)",
            )
        if status in ("exited", "dead", "stopped"):
            if state.get("OOMKilled"):
                return result(
                    Phase.FAILED, "OOMKilled", self._crash_message(c, exit_code, restarts)
                )
            will_restart = (
                exit_code not in (0, None)
                and restarts < self.crashloop_restarts
                and since_start <= budget
            )
            if will_restart:
                return result(
                    Phase.PENDING,
                    "Restarting",
                    f"restarting after exit code {exit_code} ({restarts} restarts so far)",
                )
            reason = "CrashLoopBackOff" if restarts > 0 else "Exited"
            return result(Phase.FAILED, reason, self._crash_message(c, exit_code, restarts))
        if status == "paused":
            return result(Phase.PENDING, "Paused", "the container is paused")
        created_at = parse_engine_time(str(attrs.get("Created") or ""))
        if (
            status == "created"
            and created_at is not None
            and (now - created_at).total_seconds() > budget
        ):
            # The engine keeps no error for a failed start (Podman): report it anyway.
            return result(
                Phase.FAILED,
                "StartError",
                f"the container was created but not started within {budget:g}s",
            )
        return result(Phase.PENDING, "ContainerCreating", f"container is {status or 'unknown'}")

    @staticmethod
    def _addresses(attrs: dict[str, Any]) -> dict[int, str]:
        """Container port -> published ``127.0.0.1:<host port>``."""
        found: dict[int, str] = {}
        ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
        for key, bindings in ports.items():
            number = str(key).split("/", 1)[0]
            for binding in bindings or []:
                if binding.get("HostPort") and number.isdigit():
                    found.setdefault(int(number), f"127.0.0.1:{binding['HostPort']}")
        return found

    @classmethod
    def _endpoint(cls, attrs: dict[str, Any], port: int | None = None) -> str | None:
        if port is not None:
            return cls._addresses(attrs).get(port)
        ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
        for bindings in ports.values():
            for binding in bindings or []:
                host_port = binding.get("HostPort")
                if host_port:
                    return f"127.0.0.1:{host_port}"
        return None

    def _port_open(self, endpoint: str) -> bool:
        host, _, port = endpoint.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=self.connect_timeout):
                return True
        except OSError:
            return False

    def _crash_message(self, c: Any, exit_code: Any, restarts: int) -> str:
        message = f"exited with code {exit_code}"
        if restarts:
            message += f" after {restarts} restart(s)"
        try:
            raw = c.logs(stdout=True, stderr=True, tail=LOG_TAIL_ON_FAILURE)
        except docker.errors.APIError:
            raw = b""
        lines = [ln for ln in raw.decode("utf-8", "replace").splitlines() if ln.strip()]
        if lines:
            message += "; last log lines:\n" + "\n".join(lines[-LOG_TAIL_ON_FAILURE:])
        return message

    # -- streams --------------------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """Engine streams (logs, events) open right now."""
        return self._engine_streams.open_streams

    async def watch(self) -> AsyncIterator[RuntimeEvent]:
        """The engine's events for managed containers, merged with the prober's (an instance
        became ready, stopped being ready, or was restarted for its liveness probe)."""
        self._check_socket("events")
        queue: asyncio.Queue[RuntimeEvent | Exception | None] = asyncio.Queue()
        self._prober.subscribe(queue)
        self._watchers.add(queue)
        pump = asyncio.create_task(self._pump_events(queue), name="dockyard-engine-events")
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self._prober.unsubscribe(queue)
            self._watchers.discard(queue)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _pump_events(self, queue: asyncio.Queue[RuntimeEvent | Exception | None]) -> None:
        try:
            async with contextlib.aclosing(self._engine_events()) as events:
                async for event in events:
                    queue.put_nowait(event)
        except Exception as e:
            queue.put_nowait(e)
        else:
            queue.put_nowait(None)

    async def _engine_events(self) -> AsyncGenerator[RuntimeEvent, None]:
        filters = docker.utils.convert_filters(
            {"label": self._managed_filter(), "type": ["container"]}
        )
        async with self._engine_streams.open("events", "/events", {"filters": filters}) as response:
            async for event in read_json_lines(response):
                attributes = (event.get("Actor") or {}).get("Attributes") or {}
                cid = attributes.get(LABEL_CONTAINER_ID)
                if cid and attributes.get(LABEL_MANAGED_BY, MANAGED_BY) == MANAGED_BY:
                    yield RuntimeEvent(container_id=cid)

    async def log_batches(
        self,
        container_id: str,
        *,
        revision: int | None = None,
        follow: bool = True,
        tail: int | None = 100,
        since: datetime | None = None,
    ) -> AsyncIterator[list[LogLine]]:
        target = await self._call(f"logs {container_id}", self._log_target, container_id, revision)
        if target is None:
            return
        engine_id, target_revision = target
        params = {
            "stdout": "1",
            "stderr": "1",
            "timestamps": "1",
            "follow": "1" if follow else "0",
            "tail": "all" if tail is None else str(max(tail, 0)),
        }
        since_ns = None
        if since is not None:
            since_ns = to_ns(since)
            # The engine filters to the second (Podman's ``since`` is whole seconds); the parser
            # drops the earlier lines of that second.
            params["since"] = str(max(since_ns // NS, 0))
        parser = LogParser(target_revision, since_ns=since_ns)
        # No socket check here: ``_call`` above made it.
        async with self._engine_streams.open(
            f"logs {container_id}", f"/containers/{engine_id}/logs", params
        ) as response:
            async for batch in read_log_batches(response, parser):
                yield batch

    def _log_target(self, container_id: str, revision: int | None) -> tuple[str, int] | None:
        candidates = []
        for c in self._list(container_id, sparse=True):
            rev = self._revision(c)
            if rev is not None and (revision is None or rev == revision):
                candidates.append((rev, str(c.id)))
        if not candidates:
            return None
        rev, engine_id = max(candidates)
        return engine_id, rev

    async def close(self) -> None:
        watches = list(self._readiness.values())
        for task in watches:
            task.cancel()
        for task in watches:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._prober.close()
        await self._engine_streams.close()
        await asyncio.to_thread(self._client.close)


def engine_moments(
    labels: Mapping[str, str], started_at: datetime | None
) -> tuple[tuple[str, int], ...]:
    """The deploy moments one engine container tells (pure): scheduled and image ready from the
    labels Dockyard stamped at creation, started from the engine's ``State.StartedAt``."""
    found: list[tuple[str, int]] = []
    for phase, label in (("scheduled", LABEL_SCHEDULED_AT), ("imageReady", LABEL_IMAGE_READY_AT)):
        value = labels.get(label, "")
        if value.isdigit():
            found.append((phase, int(value)))
    if started_at is not None and started_at.year > 1970:
        found.append(("started", to_ns(started_at)))
    return tuple(found)


def _revision_state(
    container_id: str, revision: int, instances: list[tuple[int, RevisionState]]
) -> RevisionState:
    """One revision's state from its instances' (lowest instance first): ready when one is ready,
    failed when all failed, else starting."""
    ordered = [state for _, state in sorted(instances, key=lambda item: item[0])]
    ready = [state for state in ordered if state.phase is Phase.READY]
    endpoints = tuple(state.endpoint for state in ready if state.endpoint)
    if ready:
        return RevisionState(
            container_id,
            revision,
            Phase.READY,
            endpoint=endpoints[0] if endpoints else None,
            endpoints=endpoints,
            instances_ready=len(ready),
            instances_desired=len(ordered),
            moments=ordered[0].moments,
        )
    failed = [state for state in ordered if state.phase is Phase.FAILED]
    first = (
        failed[0]
        if len(failed) == len(ordered)
        else next(state for state in ordered if state.phase is not Phase.FAILED)
    )
    return dataclasses.replace(first, instances_desired=len(ordered))
