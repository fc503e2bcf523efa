"""The GraphQL schema: every resolver calls exactly one service function, the one REST calls.

Exported as ``graphql/schema.graphql`` with ``strawberry export-schema app.gql.schema:schema``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator
from typing import Annotated

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from app.gql.context import Context
from app.gql.errors import ErrorCodes, Unavailable, log_errors, masking
from app.gql.execution import CachingExecutionContext
from app.gql.metrics import OperationMetrics
from app.gql.types import (
    PORT_SCALAR,
    Container,
    ContainerPage,
    ContainerStatus,
    CreateContainerInput,
    GpuModelPage,
    LogLine,
    Port,
    RevisionPage,
    TrafficTargetInput,
    UpdateContainerInput,
    Viewer,
    provided_fields,
)
from app.gql.validation import TextValidationCache
from app.services import containers as svc
from app.services.streams import StatusChanges

Info = strawberry.Info[Context, None]

# Query-cost guards, far above what real clients need. The depth limiter skips introspection
# fields (GraphiQL's introspection query nests `ofType` deeply); the token limit bounds those.
MAX_DEPTH = 10
MAX_ALIASES = 15
MAX_TOKENS = 2000
STATUS_POLL_SECONDS = 1.0


@strawberry.type
class Query:
    @strawberry.field(description="The caller's containers, newest first (`GET /v1/containers`).")
    async def containers(
        self,
        info: Info,
        page: int = 1,
        rows_per_page: int = svc.DEFAULT_ROWS_PER_PAGE,
        all_users: Annotated[
            bool,
            strawberry.argument(name="all", description="Every user's containers (ADMIN only)."),
        ] = False,
        search: Annotated[
            str | None,
            strawberry.argument(description="Only containers whose name contains this."),
        ] = None,
        status: Annotated[
            ContainerStatus | None,
            strawberry.argument(description="Only containers with this status."),
        ] = None,
        after: Annotated[
            str | None,
            strawberry.argument(
                description="Continue after this position: `nextCursor` of the previous page."
            ),
        ] = None,
    ) -> ContainerPage:
        result = await info.context.call(
            svc.list_containers,
            inline=svc.list_runs_inline(info.context.state.ctx),
            page=page,
            rows_per_page=rows_per_page,
            all_users=all_users,
            search=search,
            status=status.value if status is not None else None,
            after=after,
        )
        return ContainerPage.from_page(result)

    @strawberry.field(description="One container (`GET /v1/containers/{id}`).")
    async def container(self, info: Info, id: strawberry.ID) -> Container:
        return Container.from_view(await info.context.call(svc.get_container, container_id=id))

    @strawberry.field(description="A container's revisions, newest first.")
    async def container_revisions(
        self,
        info: Info,
        id: strawberry.ID,
        page: int = 1,
        rows_per_page: int = svc.DEFAULT_ROWS_PER_PAGE,
    ) -> RevisionPage:
        result = await info.context.call(
            svc.list_revisions, container_id=id, page=page, rows_per_page=rows_per_page
        )
        return RevisionPage.from_page(result)

    @strawberry.field(description="The GPU models containers may ask for.")
    async def gpu_models(self, info: Info) -> GpuModelPage:
        await info.context.principal()
        return GpuModelPage.from_page(svc.list_gpu_models(ctx=info.context.state.ctx))

    @strawberry.field(description="Who the bearer token says the caller is.")
    async def viewer(self, info: Info) -> Viewer:
        principal = await info.context.principal()
        return Viewer(subject=principal.subject, roles=sorted(principal.roles))


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Create and deploy a container (`POST /v1/containers`).")
    async def create_container(self, info: Info, input: CreateContainerInput) -> Container:
        view = await info.context.call(svc.create_container, data=provided_fields(input))
        return Container.from_view(view)

    @strawberry.mutation(description="Change a container as a new revision and deploy it.")
    async def update_container(
        self, info: Info, id: strawberry.ID, input: UpdateContainerInput
    ) -> Container:
        view = await info.context.call(
            svc.update_container, container_id=id, data=provided_fields(input)
        )
        return Container.from_view(view)

    @strawberry.mutation(description="Delete a container; returns its id.")
    async def delete_container(self, info: Info, id: strawberry.ID) -> strawberry.ID:
        await info.context.call(svc.delete_container, container_id=id)
        return id

    @strawberry.mutation(description="Deploy a copy of an earlier revision as a new revision.")
    async def rollback_container(
        self, info: Info, id: strawberry.ID, revision_number: int
    ) -> Container:
        view = await info.context.call(
            svc.rollback_container, container_id=id, revision_number=revision_number
        )
        return Container.from_view(view)

    @strawberry.mutation(
        description="Set where a container's requests go (`PUT /v1/containers/{id}/traffic`); "
        "makes no new revision."
    )
    async def set_traffic(
        self, info: Info, id: strawberry.ID, traffic: list[TrafficTargetInput]
    ) -> Container:
        view = await info.context.call(
            svc.set_traffic,
            container_id=id,
            data=[provided_fields(target) for target in traffic],
        )
        return Container.from_view(view)

    @strawberry.mutation(
        description="Run the current spec again as a new revision (e.g. after a failed pull)."
    )
    async def redeploy_container(self, info: Info, id: strawberry.ID) -> Container:
        view = await info.context.call(svc.redeploy_container, container_id=id)
        return Container.from_view(view)


async def _clock() -> AsyncGenerator[object, None]:
    while True:
        await asyncio.sleep(STATUS_POLL_SECONDS)
        yield None


def _status_changes(info: Info, container_id: str) -> StatusChanges:
    """Change signals from the streams provider (watching from this call on), or a clock when
    the process has none."""
    streams = info.context.streams
    if streams is not None:
        return streams.status(container_id)
    return _clock()


@strawberry.type
class Subscription:
    @strawberry.subscription(description="A container's output; `follow` keeps streaming.")
    async def container_logs(
        self, info: Info, id: strawberry.ID, tail: int | None = None, follow: bool = True
    ) -> AsyncGenerator[LogLine, None]:
        await info.context.call(svc.get_container, container_id=id)
        streams = info.context.streams
        if streams is None:
            raise Unavailable("no runtime configured: this server cannot stream logs")
        # aclosing: a client that unsubscribes closes this generator at a yield, and the
        # subscription (queue, demand, upstream) must be released now, not when it is collected.
        async with contextlib.aclosing(streams.logs(str(id), tail=tail, follow=follow)) as chunks:
            async for chunk in chunks:
                for event in chunk:
                    yield LogLine.from_event(event)

    @strawberry.subscription(
        description="The container now, then again after each change, including each deploy "
        "phase its newest revision enters (`phases`)."
    )
    async def container_status(
        self, info: Info, id: strawberry.ID
    ) -> AsyncGenerator[Container, None]:
        # Watch before the first read: a change between the two is then not lost.
        changes = _status_changes(info, str(id))
        try:
            current = await info.context.call(svc.get_container_status, container_id=id)
            yield Container.from_view(current)
            async for _change in changes:
                latest = await info.context.call(svc.get_container_status, container_id=id)
                if latest != current:
                    current = latest
                    yield Container.from_view(current)
        finally:
            await changes.aclose()


# A console sends the same few documents over and over: Strawberry's parser cache and the
# validation cache of app.gql.validation (LRU, bounded, shared by all requests) skip parsing and
# validating them again. The validation cache is keyed by the rule classes, and the depth and
# alias limiters build a new rule class per instance; so the rules are built once here and every
# request adds these same classes.
DEPTH_LIMIT = QueryDepthLimiter(max_depth=MAX_DEPTH)
ALIAS_LIMIT = MaxAliasesLimiter(max_alias_count=MAX_ALIASES)
COST_RULES = [*DEPTH_LIMIT.validation_rules, *ALIAS_LIMIT.validation_rules]
DOCUMENT_CACHE_SIZE = 256


class DockyardSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        log_errors(errors)


schema = DockyardSchema(
    query=Query,
    mutation=Mutation,
    subscription=Subscription,
    config=StrawberryConfig(scalar_map={Port: PORT_SCALAR}),
    # Completed list items reused per selection (app.gql.execution).
    execution_context_class=CachingExecutionContext,
    extensions=[
        functools.partial(AddValidationRules, COST_RULES),
        functools.partial(MaxTokensLimiter, max_token_count=MAX_TOKENS),
        functools.partial(ParserCache, maxsize=DOCUMENT_CACHE_SIZE),
        functools.partial(TextValidationCache, maxsize=DOCUMENT_CACHE_SIZE),
        ErrorCodes,
        masking,
        OperationMetrics,
    ],
)
