"""The public shapes of containers and revisions, as both APIs show them (JSON names)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, PlainSerializer

from app.domain.logtime import format_ns, to_ns
from app.domain.models import Container, Revision
from app.domain.phases import timeline
from app.domain.spec import ContainerSpec, ScalingSpec
from app.domain.status import status_reason_text
from app.domain.traffic import (
    ObservedUrls,
    ResolvedTarget,
    percent_by_revision,
    resolve_traffic,
    tag_host,
    traffic_of,
)


def as_utc(moment: datetime) -> datetime:
    """Databases without time zones (SQLite) hand back naive UTC datetimes."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def rfc3339(moment: datetime) -> str:
    return as_utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


Timestamp = Annotated[datetime, PlainSerializer(rfc3339, return_type=str)]


class _Camel(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)


class ScalingView(_Camel):
    minInstances: int
    maxInstances: int
    concurrency: int
    scaleToZeroAfterSeconds: int


class TrafficView(_Camel):
    """One traffic target as it resolves now: ``revision`` is the number ``latest`` stands for
    (null while no revision is ready); ``url`` is the tag's own URL, when tagged."""

    revision: int | None
    latest: bool
    percent: int
    tag: str | None
    url: str | None


class ContainerView(_Camel):
    id: str
    name: str
    createdBy: str
    image: str
    cpu: float
    ram: str
    gpu: int
    ephemeralStorage: str
    command: list[str] | None
    arguments: list[str] | None
    env: dict[str, str]
    port: str
    dateCreated: Timestamp
    dateUpdated: Timestamp
    status: str
    statusReason: str | None
    urls: list[str] | None
    desiredGPUs: list[str] | None
    revision: int
    readyRevision: int | None
    scaling: ScalingView
    traffic: list[TrafficView]
    probes: dict[str, Any] | None = None
    """The newest revision's health probes with their defaults filled in; null: the default
    check (the port accepts TCP connections)."""


class PhaseView(_Camel):
    phase: str
    at: str
    """RFC 3339 UTC with nanoseconds."""
    durationMs: float | None
    """Until the next phase began; null for the last one."""
    reason: str | None = None


class ContainerStatusView(ContainerView):
    """One status event: the container and its newest revision's deploy phases so far (the
    revision ``revision``), so a watcher sees each phase as it is recorded."""

    phases: list[PhaseView] = []


class RevisionView(_Camel):
    containerID: str
    revisionNumber: int
    image: str
    dateCreated: Timestamp
    createdBy: str
    spec: dict[str, Any]
    phases: list[PhaseView] = []
    instancesDesired: int
    instancesReady: int
    servingState: str
    """starting, serving, scaled-to-zero, failed or retired; empty until first observed."""
    stateReason: str
    stateMessage: str
    """Why the revision failed; kept after it scales to zero."""
    trafficPercent: int
    """The share of the container's main URL this revision serves now."""


class GpuModelView(_Camel):
    code: str
    name: str


ItemT = TypeVar("ItemT", bound=BaseModel)


class Page(_Camel, Generic[ItemT]):
    items: list[ItemT]
    total: int
    page: int
    rowsPerPage: int


class CursorPage(Page[ItemT], Generic[ItemT]):
    """A page that can also be continued from a keyset position: pass ``nextCursor`` as
    ``after`` for the next page (null on the last page)."""

    nextCursor: str | None


def container_url(slug: str, *, domain: str) -> str:
    return f"{slug}.{domain}"


def resolved_traffic(container: Container) -> list[ResolvedTarget]:
    """The container's traffic with ``latest`` resolved to its newest ready revision."""
    return resolve_traffic(traffic_of(container.traffic), latest_ready=container.ready_revision)


def _scaling_view(scaling: ScalingSpec) -> ScalingView:
    return ScalingView.model_validate(scaling.to_json())


def container_view(container: Container, *, ingress_domain: str) -> ContainerView:
    spec = ContainerSpec.model_validate(container.spec)
    # A runtime that routes by itself (Knative) reports its own URLs: they win over the ones
    # derived from the slug, which that runtime's ingress does not serve.
    observed = ObservedUrls.from_json(container.observed_urls)

    def tag_url(tag: str) -> str:
        return observed.tags.get(tag) or tag_host(tag, container.slug, ingress_domain)

    traffic = [
        TrafficView(
            revision=target.revision,
            latest=target.latest,
            percent=target.percent,
            tag=target.tag,
            url=tag_url(target.tag) if target.tag else None,
        )
        for target in resolved_traffic(container)
    ]
    tag_urls = [target.url for target in traffic if target.url is not None]
    main_url = observed.url or container_url(container.slug, domain=ingress_domain)
    return ContainerView(
        id=container.id,
        name=spec.name,
        createdBy=container.created_by,
        image=spec.image,
        cpu=spec.cpu,
        ram=spec.ram,
        gpu=spec.gpu,
        ephemeralStorage=spec.ephemeral_storage,
        command=spec.command,
        arguments=spec.arguments,
        env=spec.env,
        port=str(spec.port),
        dateCreated=as_utc(container.date_created),
        dateUpdated=as_utc(container.date_updated),
        status=container.status,
        statusReason=status_reason_text(container),
        urls=[main_url, *tag_urls],
        desiredGPUs=spec.desired_gpus,
        revision=container.generation,
        readyRevision=container.ready_revision,
        scaling=_scaling_view(spec.scaling),
        traffic=traffic,
        probes=spec.probes.to_json() if spec.probes is not None else None,
    )


def phase_views(revision: Revision) -> list[PhaseView]:
    entries = timeline(revision.phases, accepted_ns=to_ns(as_utc(revision.date_created)))
    return [
        PhaseView(
            phase=e.phase,
            at=format_ns(e.at_ns),
            durationMs=None if e.duration_ms is None else round(e.duration_ms, 3),
            reason=e.reason or None,
        )
        for e in entries
    ]


def container_status_view(
    container: Container, newest: Revision | None, *, ingress_domain: str
) -> ContainerStatusView:
    view = container_view(container, ingress_domain=ingress_domain)
    return ContainerStatusView(
        **dict(view), phases=phase_views(newest) if newest is not None else []
    )


def traffic_shares(container: Container) -> dict[int, int]:
    """Percent of the main URL per revision number, for ``revision_view``."""
    return percent_by_revision(resolved_traffic(container))


def revision_view(revision: Revision, *, traffic_percent: int = 0) -> RevisionView:
    spec = ContainerSpec.model_validate(revision.spec).to_json()
    spec["port"] = str(spec["port"])  # a string, as the container's `port`
    return RevisionView(
        containerID=revision.container_id,
        revisionNumber=revision.revision_number,
        image=revision.image,
        dateCreated=as_utc(revision.date_created),
        createdBy=revision.created_by,
        phases=phase_views(revision),
        # Normalised, so revisions stored before a field existed show its default.
        spec=spec,
        instancesDesired=revision.instances_desired,
        instancesReady=revision.instances_ready,
        servingState=revision.serving_state,
        stateReason=revision.state_reason,
        stateMessage=revision.state_message,
        trafficPercent=traffic_percent,
    )
