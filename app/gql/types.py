"""GraphQL types mirroring the REST JSON: same names (camelCase), same values, same meaning.

A REST response object and the GraphQL selection of all its fields are equal JSON, and a REST
request body can be sent unchanged as the ``input`` variable of ``createContainer``.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import Enum
from typing import TYPE_CHECKING, Any, NewType, cast

import strawberry
from strawberry.scalars import JSON
from strawberry.types.base import get_object_definition
from strawberry.utils.str_converters import to_camel_case

from app.domain.views import (
    ContainerStatusView,
    ContainerView,
    CursorPage,
    GpuModelView,
    Page,
    PhaseView,
    RevisionView,
    ScalingView,
    TrafficView,
    rfc3339,
)
from app.services import containers as svc

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


@strawberry.type(description="When a revision entered a deploy phase, and how long it stayed.")
class RevisionPhase:
    phase: str = strawberry.field(
        description="accepted, scheduled, imageReady, started, ready, serving, or failed."
    )
    at: str = strawberry.field(description="RFC 3339 UTC with nanoseconds.")
    duration_ms: float | None = strawberry.field(
        description="Until the next phase began; null for the last one."
    )
    reason: str | None = strawberry.field(description="For failed: the phase it failed in and why.")

    @classmethod
    def from_view(cls, view: PhaseView) -> RevisionPhase:
        return cls(phase=view.phase, at=view.at, duration_ms=view.durationMs, reason=view.reason)


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
    phases: list[RevisionPhase] = strawberry.field(
        description="The deploy timeline: each phase entered, in order."
    )
    instances_desired: int = strawberry.field(
        description="Instances the autoscaler (or runtime) decided to run; 0 = scaled to zero."
    )
    instances_ready: int
    serving_state: str = strawberry.field(
        description="starting, serving, scaled-to-zero, failed or retired; empty until observed."
    )
    state_reason: str = strawberry.field(
        description="Why the revision failed; kept after it scales to zero."
    )
    state_message: str
    traffic_percent: int = strawberry.field(
        description="The share of the container's main URL this revision serves now."
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
            phases=[RevisionPhase.from_view(p) for p in view.phases],
            instances_desired=view.instancesDesired,
            instances_ready=view.instancesReady,
            serving_state=view.servingState,
            state_reason=view.stateReason,
            state_message=view.stateMessage,
            traffic_percent=view.trafficPercent,
        )


@strawberry.type(description="How many instances of a revision run, and when.")
class Scaling:
    min_instances: int = strawberry.field(description="0 allows scale to zero.")
    max_instances: int
    concurrency: int = strawberry.field(description="Target in-flight requests per instance.")
    scale_to_zero_after_seconds: int = strawberry.field(
        description="Idle seconds before the revision drops to minInstances."
    )

    @classmethod
    def from_view(cls, view: ScalingView) -> Scaling:
        return cls(
            min_instances=view.minInstances,
            max_instances=view.maxInstances,
            concurrency=view.concurrency,
            scale_to_zero_after_seconds=view.scaleToZeroAfterSeconds,
        )


@strawberry.type(description="A share of a container's traffic, as it resolves now.")
class TrafficTarget:
    revision: int | None = strawberry.field(
        description="The revision served (for `latest`: the newest ready one; null if none)."
    )
    latest: bool
    percent: int
    tag: str | None
    url: str | None = strawberry.field(description="The tag's own URL, when tagged.")

    @classmethod
    def from_view(cls, view: TrafficView) -> TrafficTarget:
        return cls(
            revision=view.revision,
            latest=view.latest,
            percent=view.percent,
            tag=view.tag,
            url=view.url,
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
    scaling: Scaling = strawberry.field(description="Scaling of the newest revision's spec.")
    traffic: list[TrafficTarget] = strawberry.field(
        description="Where requests go; change it with `setTraffic` (no new revision)."
    )
    probes: JSON | None = strawberry.field(
        default=None,
        description="Health probes of the newest revision (REST JSON, defaults filled in); "
        "null: the port accepting TCP connections is the readiness check.",
    )
    known_phases: strawberry.Private[list[PhaseView] | None] = None
    """Loaded with the container by the status subscription; otherwise read on demand."""
    completed_selections: strawberry.Private[dict[Any, Any] | None] = None
    """Listed objects only: their completed values per selection (``app.gql.execution``)."""

    @strawberry.field(
        description="The newest revision's deploy phases so far (those of `revisions[0]`): "
        "`containerStatus` emits the container again each time one is recorded."
    )
    async def phases(self, info: strawberry.Info[Context, None]) -> list[RevisionPhase]:
        known = self.known_phases
        if known is None:
            views = await info.context.revisions.load(str(self.id))
            newest = next((v for v in views if v.revisionNumber == self.revision), None)
            known = newest.phases if newest is not None else []
        return [RevisionPhase.from_view(p) for p in known]

    @strawberry.field(
        description="Revisions, newest first: a page of at most 100 like "
        "`GET /v1/containers/{id}/revisions` (the first page is batched across containers; "
        "`containerRevisions` also gives the total)."
    )
    async def revisions(
        self,
        info: strawberry.Info[Context, None],
        page: int = 1,
        rows_per_page: int = svc.MAX_ROWS_PER_PAGE,
    ) -> list[Revision]:
        if page == 1 and rows_per_page == svc.MAX_ROWS_PER_PAGE:
            views = (await info.context.revisions.load(str(self.id)))[:rows_per_page]
        else:
            result = await info.context.call(
                svc.list_revisions,
                container_id=str(self.id),
                page=page,
                rows_per_page=rows_per_page,
            )
            views = result.items
        return [Revision.from_view(view) for view in views]

    @classmethod
    def from_listed_view(cls, view: ContainerView) -> Container:
        """``from_view`` for the items of a list: the same object again for the same view (the
        list hands out one view object per unchanged row, ``svc.VIEW_CACHE_SIZE``), so polling
        a list does not rebuild its items. Nothing mutates these objects after they are built."""
        key = id(view)
        cached = _CONTAINER_OBJECTS.get(key)
        if cached is not None and cached[0] is view:
            _CONTAINER_OBJECTS.move_to_end(key)
            return cached[1]
        built = cls.from_view(view)
        built.completed_selections = {}  # immutable and shared: its completions can be kept
        _CONTAINER_OBJECTS[key] = (view, built)  # holding the view keeps its id unique
        if len(_CONTAINER_OBJECTS) > svc.VIEW_CACHE_SIZE:
            _CONTAINER_OBJECTS.popitem(last=False)
        return built

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
            scaling=Scaling.from_view(view.scaling),
            traffic=[TrafficTarget.from_view(target) for target in view.traffic],
            probes=cast(JSON, view.probes),
            known_phases=view.phases if isinstance(view, ContainerStatusView) else None,
        )


_CONTAINER_OBJECTS: OrderedDict[int, tuple[ContainerView, Container]] = OrderedDict()
"""``Container.from_listed_view``'s objects by view identity, least recently used first (the event
loop's only: resolvers run there)."""


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
            items=[Container.from_listed_view(item) for item in page.items],
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


@strawberry.input(description="Scaling of a revision; fields left out keep their value.")
class ScalingInput:
    min_instances: int | None = strawberry.UNSET
    max_instances: int | None = strawberry.UNSET
    concurrency: int | None = strawberry.UNSET
    scale_to_zero_after_seconds: int | None = strawberry.UNSET


@strawberry.input(description="One traffic target: exactly one of `revision` or `latest: true`.")
class TrafficTargetInput:
    revision: int | None = strawberry.UNSET
    latest: bool | None = strawberry.UNSET
    percent: int | None = strawberry.field(default=strawberry.UNSET, description="0-100.")
    tag: str | None = strawberry.field(
        default=strawberry.UNSET, description="Own URL <tag>---<slug>.<domain>, even at 0 %."
    )


def _port_value(value: object) -> object:
    # Handed to the service untouched: it accepts "8080" and 8080, and refuses anything else
    # with the same field-named BAD_USER_INPUT as REST.
    return value


Port = NewType("Port", object)
"""A port given as ``"8080"`` or ``8080``; mapped to the ``Port`` scalar in the schema config."""

PORT_SCALAR = strawberry.scalar(
    name="Port",
    description='A port number, as a string ("8080") or a number (8080), as REST accepts it.',
    serialize=str,
    parse_value=_port_value,
)


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
    port: Port | None = strawberry.field(
        default=strawberry.UNSET, description='e.g. "8080" or 8080.'
    )
    desired_gpus: list[str] | None = strawberry.field(default=strawberry.UNSET, name="desiredGPUs")
    scaling: ScalingInput | None = strawberry.UNSET
    probes: JSON | None = strawberry.field(
        default=strawberry.UNSET,
        description='Health probes, the REST JSON object, e.g. {"readiness": {"httpGet": '
        '{"path": "/ready"}}}; validated like REST (errors name e.g. '
        "probes.readiness.httpGet.path).",
    )


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
    port: Port | None = strawberry.UNSET
    desired_gpus: list[str] | None = strawberry.field(default=strawberry.UNSET, name="desiredGPUs")
    scaling: ScalingInput | None = strawberry.UNSET
    probes: JSON | None = strawberry.field(
        default=strawberry.UNSET,
        description='Health probes, the REST JSON object, e.g. {"readiness": {"httpGet": '
        '{"path": "/ready"}}}; validated like REST (errors name e.g. '
        "probes.readiness.httpGet.path).",
    )


def provided_fields(
    data: CreateContainerInput | UpdateContainerInput | ScalingInput | TrafficTargetInput,
) -> dict[str, Any]:
    """The input as the JSON object the client sent: REST names, absent fields left out."""
    definition = get_object_definition(data, strict=True)
    given: dict[str, Any] = {}
    for field in definition.fields:
        value = getattr(data, field.python_name)
        if isinstance(value, ScalingInput):
            value = provided_fields(value)
        if value is not strawberry.UNSET:
            given[field.graphql_name or to_camel_case(field.python_name)] = value
    return given
