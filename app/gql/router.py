"""The ``/graphql`` endpoint: GraphiQL, HTTP (POST, GET for queries) and WebSocket subscriptions.

HTTP clients send ``Authorization: Bearer …`` as for REST. Without a valid token an operation
that reads or writes data answers HTTP 200 with a GraphQL error ``extensions.code:
UNAUTHENTICATED`` (the GraphQL-over-HTTP convention; partial results stay possible), while
introspection and the GraphiQL page need no token.

WebSocket clients authenticate in ``connection_init`` with ``{"Authorization": "Bearer …"}``;
a missing or invalid token refuses the connection (graphql-transport-ws closes it with 4403,
legacy graphql-ws answers ``connection_error``). The token is checked again on every operation,
and the socket is closed (4403, reason "token expired: …") when it expires, running
subscriptions included: a client reconnects with a fresh token.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Sequence
from typing import Any

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from fastapi import Request, Response, WebSocket
from fastapi.responses import HTMLResponse
from graphql import GraphQLError, OperationDefinitionNode, OperationType, parse
from starlette.websockets import WebSocketState
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.http import GraphQLRequestData
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from app.console import graphiql_page
from app.domain.errors import FieldError, MalformedInput, Unauthenticated
from app.gql.context import Context, make_context
from app.gql.errors import error_extensions
from app.gql.schema import DOCUMENT_CACHE_SIZE, MAX_TOKENS, schema
from app.limits import JsonTooDeep, loads_json

WS_TOKEN_EXPIRED = 4403
WS_TOKEN_EXPIRED_REASON = "token expired: reconnect with a fresh token"


class DockyardGraphQLRouter(GraphQLRouter[Context, None]):
    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        # Strawberry's own page loads GraphiQL from a CDN; ours from Dockyard (app.console).
        return graphiql_page()

    def decode_json(self, data: str | bytes) -> object:
        """Request bodies and WebSocket messages, with nesting depth bounded: too deep is
        reported as unparsable JSON (HTTP 400; WebSocket close 4400) instead of a 500."""
        try:
            return loads_json(data)
        except JsonTooDeep as e:
            raise json.JSONDecodeError(str(e), "", 0) from None

    def parse_json(self, data: str | bytes) -> Any:
        """A body that is not JSON, or not a JSON object (or list of them), is answered as REST
        answers it: 400 problem+json ``MALFORMED_JSON`` naming ``body`` (the error propagates to
        the app's problem handlers), not a text/plain 400 or a 500."""
        try:
            value = self.decode_json(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise MalformedInput([FieldError("body", "is not valid JSON")]) from None
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(item, dict) for item in items):
            raise MalformedInput(
                [
                    FieldError(
                        "body", 'must be a JSON object such as {"query": "{ viewer { subject } }"}'
                    )
                ]
            )
        return value

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        params: Any = context.connection_params
        if isinstance(params, dict):
            token = params.get("Authorization", params.get("authorization"))
            if isinstance(token, str):
                context.authorization = token
        try:
            principal = await context.principal()
        except Unauthenticated as e:
            raise ConnectionRejectionError({"message": e.detail, **error_extensions(e)}) from e
        if principal.valid_until is not None and isinstance(context.request, WebSocket):
            context.expiry = asyncio.create_task(
                _close_at_expiry(context.request, principal.valid_until), name="ws-token-expiry"
            )
        return UnsetType()  # acknowledge without a payload

    async def run(
        self,
        request: Request | WebSocket,
        context: Context | UnsetType = UNSET,
        root_value: UnsetType | None = UNSET,
    ) -> Any:
        try:
            return await super().run(request, context, root_value)  # type: ignore[arg-type]
        finally:
            if isinstance(context, Context) and context.expiry is not None:
                context.expiry.cancel()

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        """Plain HTTP cannot carry a subscription: a 400 that says where it goes (executed as
        a query it ended in a masked "internal error")."""
        if _is_subscription(request_data):
            raise HTTPException(
                400,
                "subscription: subscriptions are served over WebSocket at /graphql "
                "(graphql-transport-ws or graphql-ws), not over a plain HTTP request",
            )
        return await super().execute_single(
            request, request_adapter, sub_response, context, root_value, request_data
        )


async def _close_at_expiry(websocket: WebSocket, valid_until: float) -> None:
    """Close the socket when its token expires (4403, as a refused ``connection_init``), so
    running subscriptions end too; the client reconnects with a fresh token."""
    await asyncio.sleep(max(0.0, valid_until - time.time()))
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(RuntimeError, OSError):
            await websocket.close(code=WS_TOKEN_EXPIRED, reason=WS_TOKEN_EXPIRED_REASON)


def _is_subscription(request_data: GraphQLRequestData) -> bool:
    if not request_data.query:
        return False
    if len(request_data.query) > MAX_CACHED_DOCUMENT:
        return _names_subscription(request_data.query, request_data.operation_name)
    return _names_subscription_cached(request_data.query, request_data.operation_name)


MAX_CACHED_DOCUMENT = 16_384
"""Longer documents are parsed every time, so the cache below holds at most 256 x 16 KiB."""


def _names_subscription(query: str, wanted: str | None) -> bool:
    """Whether the document's operation (``wanted``, or any) is a subscription."""
    try:
        document = parse(query, max_tokens=MAX_TOKENS)
    except GraphQLError:
        return False  # the schema reports the syntax error
    return any(
        isinstance(node, OperationDefinitionNode)
        and node.operation == OperationType.SUBSCRIPTION
        and (wanted is None or (node.name is not None and node.name.value == wanted))
        for node in document.definitions
    )


# Cached by text, as the schema's own parser cache is: clients send the same documents again.
_names_subscription_cached = functools.lru_cache(maxsize=DOCUMENT_CACHE_SIZE)(_names_subscription)


def graphql_router(*, allowed_origins: Sequence[str] = ()) -> GraphQLRouter[Context, None]:
    """The router to include at ``/graphql``; ``allowed_origins`` also guards WebSockets."""
    return DockyardGraphQLRouter(
        schema, context_getter=make_context, allowed_origins=allowed_origins
    )
