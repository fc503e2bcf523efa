"""The per-request (per-WebSocket) GraphQL context: app state, the caller and the loaders.

The caller is authenticated lazily, on the first resolver that needs it, with the same function
as REST (``app.deps.authenticate_async``): introspection and the GraphiQL page work without a token,
and an operation that touches data without one fails with ``UNAUTHENTICATED``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from strawberry.dataloader import DataLoader
from strawberry.fastapi import BaseContext

from app.deps import AppState, app_state, authenticate_async, authorization_of
from app.domain.errors import Unauthenticated
from app.domain.principal import Principal
from app.domain.views import RevisionView
from app.services import containers as svc

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.services.streams import ContainerStreams

T = TypeVar("T")
TOKEN_EXPIRED = "the bearer token has expired"


class Context(BaseContext):
    def __init__(self, state: AppState, authorization: str | None) -> None:
        super().__init__()
        self.state = state
        self.authorization = authorization
        self._principal: Principal | None = None
        # WebSocket only: closes the socket when the token expires (app.gql.router).
        self.expiry: asyncio.Task[None] | None = None
        # Not cached: a WebSocket context lives as long as the connection, and a subscription
        # must see revisions written after it started. Batching within one tick still applies.
        self.revisions = DataLoader[str, list[RevisionView]](self._load_revisions, cache=False)

    @property
    def streams(self) -> ContainerStreams | None:
        return self.state.streams

    async def principal(self) -> Principal:
        """The authenticated caller; raises Unauthenticated without a valid bearer token.

        Checked on every operation: a WebSocket context outlives its token, and an operation
        after the token's ``exp`` (plus leeway) is refused as REST refuses it.
        """
        if self._principal is None:
            # Verification may fetch the issuer's keys over HTTP: off the event loop unless cached.
            self._principal = await authenticate_async(self.state, self.authorization)
        if self._principal.expired(time.time()):
            raise Unauthenticated(f"invalid_token: {TOKEN_EXPIRED}")
        return self._principal

    async def call(self, service: Callable[..., T], /, *, inline: bool = False, **kwargs: Any) -> T:
        """Run a (synchronous, database-bound) service function as the caller, in a thread; on
        the event loop with ``inline`` (where the service says that is cheaper, e.g. the
        container list on SQLite: ``svc.list_runs_inline``)."""
        principal = await self.principal()
        if inline:
            return service(ctx=self.state.ctx, principal=principal, **kwargs)
        return await run_in_threadpool(service, ctx=self.state.ctx, principal=principal, **kwargs)

    async def _load_revisions(self, container_ids: list[str]) -> list[list[RevisionView]]:
        grouped = await self.call(svc.revisions_of, container_ids=container_ids)
        return [grouped[container_id] for container_id in container_ids]


async def make_context(connection: HTTPConnection) -> Context:
    """FastAPI dependency building the context of an HTTP request or a WebSocket connection.

    WebSockets carry the token in the ``connection_init`` payload instead of a header;
    ``GraphQLRouter.on_ws_connect`` sets it. The console's session cookie stands in for a
    missing header on both (``app.deps.authorization_of``).
    """
    return Context(app_state(connection), authorization_of(connection))
