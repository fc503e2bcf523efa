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

import json
from collections.abc import Sequence
from typing import Any

from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.types.unset import UnsetType

from app.domain.errors import FieldError, MalformedInput, Unauthenticated
from app.gql.context import Context, make_context
from app.gql.errors import error_extensions
from app.gql.schema import schema


class DockyardGraphQLRouter(GraphQLRouter[Context, None]):
    def parse_json(self, data: str | bytes) -> Any:
        """A body that is not JSON, or not a JSON object (or list of them), is answered as REST
        answers it: 400 problem+json ``MALFORMED_JSON`` naming ``body`` (the error propagates to
        the app's problem handlers), not a text/plain 400 or a 500."""
        try:
            value = json.loads(data)
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
            await context.principal()
        except Unauthenticated as e:
            raise ConnectionRejectionError({"message": e.detail, **error_extensions(e)}) from e
        return UnsetType()  # acknowledge without a payload


def graphql_router(*, allowed_origins: Sequence[str] = ()) -> GraphQLRouter[Context, None]:
    """The router to include at ``/graphql``; ``allowed_origins`` also guards WebSockets."""
    return DockyardGraphQLRouter(
        schema, context_getter=make_context, allowed_origins=allowed_origins
    )
