"""The public shapes of containers and revisions, as both APIs show them (JSON names)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, PlainSerializer

from app.domain.models import Container, Revision
from app.domain.spec import ContainerSpec
from app.domain.status import status_reason_text


def as_utc(moment: datetime) -> datetime:
    """Databases without time zones (SQLite) hand back naive UTC datetimes."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def rfc3339(moment: datetime) -> str:
    return as_utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


Timestamp = Annotated[datetime, PlainSerializer(rfc3339, return_type=str)]


class _Camel(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)


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


class RevisionView(_Camel):
    containerID: str
    revisionNumber: int
    image: str
    dateCreated: Timestamp
    createdBy: str
    spec: dict[str, Any]


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


def container_view(container: Container, *, ingress_domain: str) -> ContainerView:
    spec = ContainerSpec.model_validate(container.spec)
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
        urls=[container_url(container.slug, domain=ingress_domain)],
        desiredGPUs=spec.desired_gpus,
        revision=container.generation,
        readyRevision=container.ready_revision,
    )


def revision_view(revision: Revision) -> RevisionView:
    return RevisionView(
        containerID=revision.container_id,
        revisionNumber=revision.revision_number,
        image=revision.image,
        dateCreated=as_utc(revision.date_created),
        createdBy=revision.created_by,
        spec=revision.spec,
    )
