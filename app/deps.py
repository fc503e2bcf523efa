"""Per-process state and the authentication dependency shared by both transports.

Authentication happens once, here; authorization happens in the services after the object is
loaded. REST routes and the GraphQL context both depend on ``current_principal``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from app.auth import TokenVerifier, bearer_token
from app.domain.principal import Principal
from app.reconcile import Reconciler
from app.services.context import ServiceContext
from app.settings import Settings

if TYPE_CHECKING:
    from app.services.streams import ContainerStreams


@dataclass
class AppState:
    settings: Settings
    ctx: ServiceContext
    verifier: TokenVerifier
    reconciler: Reconciler | None = None
    # Live logs and status changes for GraphQL subscriptions; None until a runtime and the
    # reconciler provide them (status then falls back to polling, logs are UNAVAILABLE).
    streams: ContainerStreams | None = None


def app_state(connection: HTTPConnection) -> AppState:
    state: AppState = connection.app.state.dockyard
    return state


def authenticate(state: AppState, authorization: str | None) -> Principal:
    """The principal of an ``Authorization`` header value; Unauthenticated otherwise."""
    return state.verifier.verify(bearer_token(authorization))


async def authenticate_async(state: AppState, authorization: str | None) -> Principal:
    """``authenticate`` for the event loop: a recently verified token costs a dict lookup; any
    other goes through ``verify`` in a worker thread (OIDC may fetch the issuer's keys)."""
    token = bearer_token(authorization)
    principal = state.verifier.cached(token)
    if principal is None:
        principal = await run_in_threadpool(state.verifier.verify, token)
    return principal


# Both dependencies are async on purpose: FastAPI runs a sync dependency in the threadpool, and
# that extra thread hop per request cost more than the work it did.
async def current_principal(request: Request) -> Principal:
    return await authenticate_async(app_state(request), request.headers.get("authorization"))


async def service_context(request: Request) -> ServiceContext:
    return app_state(request).ctx


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
Ctx = Annotated[ServiceContext, Depends(service_context)]
