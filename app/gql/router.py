"""The ``/graphql`` endpoint: GraphiQL, HTTP (POST, GET for queries) and WebSocket subscriptions.

HTTP clients send ``Authorization: Bearer …`` as for REST. Without a valid token an operation
that reads or writes data answers HTTP 200 with a GraphQL error ``extensions.code:
UNAUTHENTICATED`` (the GraphQL-over-HTTP convention; partial results stay possible), while
introspection and the GraphiQL page need no token.

WebSocket clients authenticate in ``connection_init`` with ``{"Authorization": "Bearer …"}``;
a missing or invalid token refuses the connection (graphql-transport-ws closes it with 4403,
legacy graphql-ws answers ``connection_error``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.types.unset import UnsetType

from app.console import graphiql_page
from app.domain.errors import Unauthenticated
from app.gql.context import Context, make_context
from app.gql.errors import error_extensions
from app.gql.schema import schema


class DockyardGraphQLRouter(GraphQLRouter[Context, None]):
    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        # Strawberry's own page loads GraphiQL from a CDN; ours from Dockyard (app.console).
        return graphiql_page()

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        params: Any = context.connection_params
        if isinstance(params, dict):
            token = params.get("Authorization", params.get("authorization"))
            if isinstance(token, str):
                context.authorization = token
        try:
            await context.principal()
        except Unauthenticated as e:
            raise ConnectionRejectionError({"message": e.detail, **error_extensions(e)}) from e
        return UnsetType()  # acknowledge without a payload


def graphql_router(*, allowed_origins: Sequence[str] = ()) -> GraphQLRouter[Context, None]:
    """The router to include at ``/graphql``; ``allowed_origins`` also guards WebSockets."""
    return DockyardGraphQLRouter(
        schema, context_getter=make_context, allowed_origins=allowed_origins
    )
