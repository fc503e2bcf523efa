"""GraphQL types mirroring the REST JSON: same names (camelCase), same values, same meaning.

A REST response object and the GraphQL selection of all its fields are equal JSON, and a REST
request body can be sent unchanged as the ``input`` variable of ``createContainer``.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

import strawberry
from strawberry.scalars import JSON
from strawberry.types.base import get_object_definition
from strawberry.utils.str_converters import to_camel_case

from app.domain.views import (
    ContainerView,
    CursorPage,
    GpuModelView,
    Page,
    RevisionView,
    rfc3339,
)

if TYPE_CHECKING:
    from app.gql.context import Context
    from app.services.streams import LogEvent

TIMESTAMP = "RFC 3339 UTC time, e.g. 2023-09-22T15:36:06Z"


@strawberry.enum(description="Where a container is in its lifecycle; `statusReason` says why.")
class ContainerStatus(Enum):
    # Lowercase on purpose: the values are the REST JSON strings, unchanged.
    deploying = "deploying"
    deployed = "deployed"
    failed = "failed"


@strawberry.type(description="One revision: an immutable snapshot of a container's spec.")
class Revision:
    container_id: strawberry.ID = strawberry.field(name="containerID")
    revision_number: int
    image: str
    date_created: str = strawberry.field(description=TIMESTAMP)
    created_by: str
    spec: dict[str, Any] = strawberry.field(
        graphql_type=JSON, description="The complete spec, with REST field names."
    )

    @classmethod
    def from_view(cls, view: RevisionView) -> Revision:
        return cls(
            container_id=strawberry.ID(view.containerID),
            revision_number=view.revisionNumber,
            image=view.image,
            date_created=rfc3339(view.dateCreated),  # as REST serializes it
            created_by=view.createdBy,
            spec=view.spec,
        )


@strawberry.type(description="A serverless container: its current spec and observed status.")
class Container:
    id: strawberry.ID
    name: str
    created_by: str
    image: str
    cpu: float
    ram: str
    gpu: int
    ephemeral_storage: str
    command: list[str] | None
    arguments: list[str] | None
    env: dict[str, str] = strawberry.field(
        graphql_type=JSON, description="Environment variables: an object of strings."
    )
    port: str
    date_created: str = strawberry.field(description=TIMESTAMP)
    date_updated: str = strawberry.field(description=TIMESTAMP)
    status: ContainerStatus
    status_reason: str | None = strawberry.field(
        description="Why the status is what it is, e.g. `ImagePullBackOff: …`; null if all is well."
    )
    urls: list[str] | None
    desired_gpus: list[str] | None = strawberry.field(name="desiredGPUs")
    revision: int = strawberry.field(description="The newest revision number (the generation).")
    ready_revision: int | None = strawberry.field(
        description="The newest revision known to serve traffic, if any."
    )

    @strawberry.field(description="Every revision, newest first (batched across containers).")
    async def revisions(self, info: strawberry.Info[Context, None]) -> list[Revision]:
        views = await info.context.revisions.load(str(self.id))
        return [Revision.from_view(view) for view in views]

    @classmethod
    def from_view(cls, view: ContainerView) -> Container:
        return cls(
            id=strawberry.ID(view.id),
            name=view.name,
            created_by=view.createdBy,
            image=view.image,
            cpu=view.cpu,
            ram=view.ram,
            gpu=view.gpu,
            ephemeral_storage=view.ephemeralStorage,
            command=view.command,
            arguments=view.arguments,
            env=view.env,
            port=view.port,
            date_created=rfc3339(view.dateCreated),  # as REST serializes them
            date_updated=rfc3339(view.dateUpdated),
            status=ContainerStatus(view.status),
            status_reason=view.statusReason,
            urls=view.urls,
            desired_gpus=view.desiredGPUs,
            revision=view.revision,
            ready_revision=view.readyRevision,
        )


@strawberry.type(description="A GPU model containers may ask for in `desiredGPUs`.")
class GpuModel:
    code: str
    name: str

    @classmethod
    def from_view(cls, view: GpuModelView) -> GpuModel:
        return cls(code=view.code, name=view.name)


def _paging(page: Page[Any]) -> dict[str, int]:
    """The paging fields every page type shares."""
    return {"total": page.total, "page": page.page, "rows_per_page": page.rowsPerPage}


@strawberry.type
class ContainerPage:
    items: list[Container]
    total: int
    page: int
    rows_per_page: int
    next_cursor: str | None = strawberry.field(
        description="Pass as `after` for the next page; null on the last page."
    )

    @classmethod
    def from_page(cls, page: CursorPage[ContainerView]) -> ContainerPage:
        return cls(
            items=[Container.from_view(item) for item in page.items],
            next_cursor=page.nextCursor,
            **_paging(page),
        )


@strawberry.type
class RevisionPage:
    items: list[Revision]
    total: int
    page: int
    rows_per_page: int

    @classmethod
    def from_page(cls, page: Page[RevisionView]) -> RevisionPage:
        return cls(items=[Revision.from_view(item) for item in page.items], **_paging(page))


@strawberry.type
class GpuModelPage:
    items: list[GpuModel]
    total: int
    page: int
    rows_per_page: int

    @classmethod
    def from_page(cls, page: Page[GpuModelView]) -> GpuModelPage:
        return cls(items=[GpuModel.from_view(item) for item in page.items], **_paging(page))


@strawberry.type(description="The authenticated caller.")
class Viewer:
    subject: str
    roles: list[str]


@strawberry.type(description="One line a container wrote.")
class LogLine:
    timestamp: str = strawberry.field(description="RFC 3339 UTC time with nanoseconds.")
    line: str
    stream: str = strawberry.field(description="stdout or stderr.")
    revision: int | None = strawberry.field(description="The revision that wrote the line.")

    @classmethod
    def from_event(cls, event: LogEvent) -> LogLine:
        return cls(
            timestamp=event.timestamp_text,
            line=event.line,
            stream=event.stream,
            revision=event.revision,
        )


# Inputs are deliberately permissive (every field optional, `env` any JSON): the service
# validates the object exactly as it validates a REST body, so both APIs refuse the same input
# with the same field-named BAD_USER_INPUT errors instead of GraphQL coercion messages.


@strawberry.input(
    description="The JSON body of `POST /v1/containers`; `name` and `image` are required."
)
class CreateContainerInput:
    name: str | None = strawberry.UNSET
    image: str | None = strawberry.field(
        default=strawberry.UNSET, description="With an explicit tag, e.g. nginx:1.27."
    )
    cpu: float | None = strawberry.UNSET
    ram: str | None = strawberry.UNSET
    gpu: int | None = strawberry.UNSET
    ephemeral_storage: str | None = strawberry.UNSET
    command: list[str] | None = strawberry.UNSET
    arguments: list[str] | None = strawberry.UNSET
    env: JSON | None = strawberry.field(
        default=strawberry.UNSET, description='An object of strings, e.g. {"FOO": "bar"}.'
    )
    port: str | None = strawberry.field(default=strawberry.UNSET, description='e.g. "8080".')
    desired_gpus: list[str] | None = strawberry.field(default=strawberry.UNSET, name="desiredGPUs")


@strawberry.input(
    description="The JSON body of `PUT /v1/containers/{id}`: only the fields given change."
)
class UpdateContainerInput:
    name: str | None = strawberry.UNSET
    image: str | None = strawberry.UNSET
    cpu: float | None = strawberry.UNSET
    ram: str | None = strawberry.UNSET
    gpu: int | None = strawberry.UNSET
    ephemeral_storage: str | None = strawberry.UNSET
    command: list[str] | None = strawberry.UNSET
    arguments: list[str] | None = strawberry.UNSET
    env: JSON | None = strawberry.UNSET
    port: str | None = strawberry.UNSET
    desired_gpus: list[str] | None = strawberry.field(default=strawberry.UNSET, name="desiredGPUs")


def provided_fields(data: CreateContainerInput | UpdateContainerInput) -> dict[str, Any]:
    """The input as the JSON object the client sent: REST names, absent fields left out."""
    definition = get_object_definition(data, strict=True)
    given: dict[str, Any] = {}
    for field in definition.fields:
        value = getattr(data, field.python_name)
        if value is not strawberry.UNSET:
            given[field.graphql_name or to_camel_case(field.python_name)] = value
    return given
