"""Per-process state and the authentication dependency shared by both transports.

Authentication happens once, here; authorization happens in the services after the object is
loaded. REST routes and the GraphQL context both depend on ``current_principal``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from app.auth import TokenVerifier, bearer_token
from app.domain.principal import Principal
from app.reconcile import Reconciler
from app.services.context import ServiceContext
from app.settings import Settings

if TYPE_CHECKING:
    from app.autoscale import Autoscaler
    from app.dataplane.activator import Activator
    from app.observability.metrics import Metrics
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
    metrics: Metrics | None = None
    # Serverless on the local runtime: the activator holds requests for revisions at zero (every
    # replica), the autoscaler decides instance counts (acts on the leader only).
    activator: Activator | None = None
    autoscaler: Autoscaler | None = None


def app_state(connection: HTTPConnection) -> AppState:
    state: AppState = connection.app.state.dockyard
    return state


def authenticate(state: AppState, authorization: str | None) -> Principal:
    """The principal of an ``Authorization`` header value; Unauthenticated otherwise."""
    return state.verifier.verify(bearer_token(authorization))


SESSION_COOKIE = "dockyard_session"
"""The console's session after an OIDC sign-in (``app.console.oidc``): an access token."""


def authorization_of(connection: HTTPConnection) -> str | None:
    """The ``Authorization`` header, or else the console's session cookie as a bearer token.

    The cookie is Secure, HttpOnly and SameSite=Strict, so other sites cannot make a browser
    send it; its token is verified exactly as a header's. Other origins of the same site can
    (a container's page on ``<slug>.<ingress domain>``), so a request or WebSocket whose
    ``Origin`` is not Dockyard's own gets no credentials from the cookie.
    """
    header = connection.headers.get("authorization")
    if header:
        return header
    token = connection.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    origin = connection.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != connection.headers.get("host"):
        return None
    return f"Bearer {token}"


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
    return await authenticate_async(app_state(request), authorization_of(request))


async def service_context(request: Request) -> ServiceContext:
    return app_state(request).ctx


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
Ctx = Annotated[ServiceContext, Depends(service_context)]
