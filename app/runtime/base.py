"""The contract between the reconciler and a container runtime.

The reconciler only speaks this protocol, so the local engine (Docker/Podman) and Kubernetes are
interchangeable. Adapters translate their client library's exceptions into the ones below (raised
``from e``) and never touch the database: they get a ``WorkloadSpec`` in and report
``RevisionState`` out.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, Protocol, runtime_checkable

from app.domain.logtime import to_datetime
from app.domain.traffic import ObservedUrls

LABEL_CONTAINER_ID = "dockyard.dev/container-id"
LABEL_REVISION = "dockyard.dev/revision"
LABEL_MANAGED_BY = "dockyard.dev/managed-by"
LABEL_INSTANCE = "dockyard.dev/instance"
"""Which Dockyard installation (database) owns the object, for engines shared by several."""
LABEL_REPLICA = "dockyard.dev/replica"
"""Which instance of its revision an engine container is (0 for the first one)."""
LABEL_GPU = "dockyard.dev/gpu"
LABEL_SCHEDULED_AT = "dockyard.dev/scheduled-at"
LABEL_IMAGE_READY_AT = "dockyard.dev/image-ready-at"
"""Nanoseconds since the epoch when the engine container was asked for and its image was found
or pulled: the engine keeps no such moments itself, the deploy timeline needs them."""
"""GPUs of the revision (only on GPU workloads): they get the long start-up budget."""
MANAGED_BY = "dockyard"


@dataclass(frozen=True)
class GpuSelector:
    """One acceptable GPU model, with the node-label values that identify it."""

    code: str
    name: str
    label_values: tuple[str, ...]


@dataclass(frozen=True)
class Scaling:
    """How many instances of one revision may run, and when (part of the revision's spec, so it
    travels with a rollback). Defaults are Cloud Run's: scale to zero, 80 in-flight requests per
    instance."""

    min_instances: int = 0
    max_instances: int = 100
    concurrency: int = 80
    """Target of in-flight requests per instance (Knative's ``autoscaling.knative.dev/target``)."""
    scale_to_zero_after_seconds: int = 900
    """Idle time without requests after which the revision drops to ``min_instances``."""


@dataclass(frozen=True)
class TrafficTarget:
    """A share of a container's traffic (per container, not per revision: changing it makes no
    new revision, as with Knative's Route apart from its Configuration)."""

    percent: int
    revision: int | None = None
    """A fixed revision number, or None with ``latest`` for the newest ready revision."""
    latest: bool = False
    tag: str | None = None
    """Gives the target its own URL ``<tag>---<slug>.<domain>``, even at 0 %."""


@dataclass(frozen=True)
class Probe:
    """One health probe of a revision, with Kubernetes' defaults (``app.domain.spec``)."""

    action: str
    """``httpGet``, ``tcpSocket`` or ``exec``."""
    port: int = 0
    """Container port of ``httpGet`` and ``tcpSocket`` (the revision's port unless set)."""
    path: str = "/"
    command: tuple[str, ...] = ()
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    def describe(self) -> str:
        """What the probe does, for status messages: ``GET :8080/ready``."""
        if self.action == "httpGet":
            return f"GET :{self.port}{self.path}"
        if self.action == "tcpSocket":
            return f"TCP connect :{self.port}"
        return "exec " + " ".join(self.command)


@dataclass(frozen=True)
class Probes:
    """A revision's probes; none set means the default readiness check (the port accepts TCP
    connections) and no liveness check."""

    startup: Probe | None = None
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup_budget_seconds: int | None = None
    """How long an instance may take to become ready; None: the runtime's default (or the
    startup probe's ``initialDelaySeconds + failureThreshold * periodSeconds``)."""

    def budget(self) -> int | None:
        if self.startup_budget_seconds is not None:
            return self.startup_budget_seconds
        if self.startup is not None:
            s = self.startup
            return s.initial_delay_seconds + s.failure_threshold * s.period_seconds
        return None


LATEST_ONLY: tuple[TrafficTarget, ...] = (TrafficTarget(percent=100, latest=True),)


@dataclass(frozen=True)
class Capabilities:
    """What a runtime does for serverless features, so the API can refuse what it cannot do."""

    autoscales: bool = False
    """The runtime scales revisions by itself (Knative); else Dockyard's autoscaler asks it."""
    scale_to_zero: bool = False
    traffic_split: bool = False
    """Traffic to several revisions by percent, and tag URLs."""


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything a runtime needs to run one revision of one container."""

    container_id: str
    revision: int
    name: str
    owner: str
    slug: str
    image: str
    cpu: float
    ram: str
    ram_bytes: int
    gpu: int
    ephemeral_storage: str
    ephemeral_storage_bytes: int
    port: int
    command: tuple[str, ...] | None = None
    arguments: tuple[str, ...] | None = None
    env: dict[str, str] = field(default_factory=dict)
    desired_gpus: tuple[GpuSelector, ...] = ()
    scaling: Scaling = field(default_factory=Scaling)
    probes: Probes = field(default_factory=Probes)
    traffic: tuple[TrafficTarget, ...] = LATEST_ONLY
    """The container's traffic at the time of this apply; used by runtimes that route by
    themselves (Knative). The local runtime is routed by Dockyard's own data plane."""


class Phase(enum.StrEnum):
    """What the runtime says about one revision."""

    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class RevisionState:
    """The observed state of one revision of a container in the runtime."""

    container_id: str
    revision: int
    phase: Phase
    reason: str = ""
    message: str = ""
    endpoint: str | None = None
    """``host:port`` where the revision serves, when the runtime exposes one locally."""
    endpoints: tuple[str, ...] = ()
    """``host:port`` of every ready instance, when the runtime exposes them locally."""
    instances_ready: int = 0
    instances_desired: int = 0
    """Instances the runtime is asked to run (or, on Knative, decided to run); a READY revision
    with 0 desired is scaled to zero: healthy, not failed."""
    moments: tuple[tuple[str, int], ...] = ()
    """Deploy phases the runtime saw (``app.domain.phases`` names: scheduled, imageReady,
    started…) with when, in nanoseconds since the epoch."""
    instances_unstarted: int = 0
    """Instances that exist but were never started and that nothing in this process is starting
    (a replica that died between creating an engine container and starting it, e.g. a leader
    killed mid-deploy): counted in ``instances_desired``, yet asking the runtime to scale the
    revision (even to the same count) is what starts them, or removes them when surplus."""


@dataclass(frozen=True)
class RuntimeEvent:
    """Something changed for this container in the runtime; the reconciler re-observes it."""

    container_id: str


ReadyListener = Callable[[str, int, tuple[str, ...]], None]
"""``(container id, revision, endpoints)``: an instance of the revision accepts connections now."""


class LogLine(NamedTuple):
    """One line of a revision's output. A tuple: a chatty container makes tens of thousands a
    second, and this is the cheapest record Python builds."""

    ns: int
    """When the runtime received the line: nanoseconds since the epoch (``app.domain.logtime``)."""
    line: str
    stream: str
    revision: int

    @property
    def timestamp(self) -> datetime:
        return to_datetime(self.ns)


class RuntimeAdapterError(Exception):
    """Base of every error a runtime adapter raises."""


class RuntimeUnavailable(RuntimeAdapterError):
    """The engine or API server cannot be reached; temporary, retried with backoff."""


class RuntimeConflict(RuntimeAdapterError):
    """The runtime refused a write because the object changed underneath; retry after re-reading."""


class RuntimeRejected(RuntimeAdapterError):
    """The runtime refused the spec permanently (e.g. GPUs on an engine without GPU support)."""


@runtime_checkable
class Runtime(Protocol):
    """A place where revisions of containers run."""

    name: str
    capabilities: Capabilities
    """What the API may accept for this runtime (scale to zero, traffic split and tags)."""

    async def apply(self, spec: WorkloadSpec) -> None:
        """Make sure this revision is (being) run, with at least one instance; idempotent. Other
        revisions keep running."""

    async def scale(self, spec: WorkloadSpec, instances: int, *, urgent: bool = False) -> None:
        """Run ``instances`` instances of this revision: create the missing ones, remove the
        surplus (highest instance first; one still starting only when ``urgent``); idempotent.
        0 leaves no instance of the revision in the runtime."""

    async def retire(self, container_id: str, *, keep: set[int]) -> None:
        """Remove every revision of the container not in ``keep``; idempotent."""

    async def remove(self, container_id: str) -> None:
        """Remove every runtime object of the container; idempotent."""

    async def observe(self, container_id: str) -> list[RevisionState]:
        """The state of every revision of the container present in the runtime."""

    async def list_managed(self) -> dict[str, set[int]]:
        """Every container id with Dockyard-managed objects, and the revisions present."""

    def watch(self) -> AsyncIterator[RuntimeEvent]:
        """Events for managed objects, for as long as the caller iterates."""
        ...

    def log_batches(
        self,
        container_id: str,
        *,
        revision: int | None = None,
        follow: bool = True,
        tail: int | None = 100,
        since: datetime | None = None,
    ) -> AsyncIterator[list[LogLine]]:
        """Log lines of the container's revision (the newest present one when None), in order,
        in non-empty batches of whatever the runtime delivered together."""
        ...

    async def close(self) -> None:
        """Release clients and connections."""


@runtime_checkable
class SignalsReady(Protocol):
    """A runtime that says the moment a new instance accepts connections (the local engine
    dials the port of each instance it starts), before its next observe would: the activator
    forwards the requests it holds for the revision then, while the reconciler records it."""

    ready_listeners: list[ReadyListener]


@runtime_checkable
class ReportsUrls(Protocol):
    """A runtime that routes by itself and says where (Knative): the reconciler stores what it
    reports and the API shows those URLs rather than ones derived from the slug."""

    async def observed_urls(self, container_id: str) -> ObservedUrls | None:
        """The container's main URL and tag URLs as the runtime serves them now; None when the
        runtime has no object for the container."""
