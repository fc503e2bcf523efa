"""How failures reach GraphQL clients: a stable ``extensions.code``, the same codes as REST.

Domain errors keep their message and gain ``extensions.code`` (and ``extensions.fields`` for
invalid input, the same list REST returns as ``errors``). GraphQL's own errors (syntax, unknown
field, bad variable type, query-cost guards) pass unchanged. Anything else is a bug: it is logged
with its traceback and masked so internals never leak; expected client errors are not logged
(one debug line), so a flood of bad requests cannot flood the log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from graphql import GraphQLError, VariableDefinitionNode
from strawberry.extensions import MaskErrors, SchemaExtension

from app.domain.errors import MAX_DETAIL_TEXT, DomainError, ValidationFailed, clip

UNEXPECTED_MESSAGE = "internal error; it has been logged"
log = logging.getLogger(__name__)


class Unavailable(DomainError):
    """A feature needs a part of the platform this process does not run (e.g. a runtime)."""

    code = "UNAVAILABLE"


def error_extensions(error: DomainError) -> dict[str, Any]:
    """``extensions`` of the GraphQL error for a domain error."""
    extensions: dict[str, Any] = {"code": error.code}
    if isinstance(error, ValidationFailed):
        extensions["fields"] = [{"field": e.field, "message": e.message} for e in error.errors]
    return extensions


def should_mask_error(error: GraphQLError) -> bool:
    """Mask errors raised by our code unless they are expected (domain) errors."""
    original = error.original_error
    return original is not None and not isinstance(original, DomainError | GraphQLError)


def log_errors(errors: list[GraphQLError]) -> None:
    """Client errors (bad documents or variables, domain errors: the client is told, nothing
    to act on) are one short debug line; only unexpected errors get a traceback."""
    for error in errors:
        original = error.original_error
        if original is None or isinstance(original, DomainError | GraphQLError):
            code = original.code if isinstance(original, DomainError) else "GRAPHQL_VALIDATION"
            log.debug("graphql client error %s: %s", code, clip(error.message, 200))
        else:
            path = ".".join(str(part) for part in error.path or ())
            log.error("graphql: unexpected error in %s", path or "the operation", exc_info=original)


def masking() -> MaskErrors:
    return MaskErrors(should_mask_error=should_mask_error, error_message=UNEXPECTED_MESSAGE)


# graphql-core names the offending spot of a variable, e.g. "… invalid value at .port: …"
# (3.3) or "… invalid value 80 at 'input.port'; …" (3.2).
_VARIABLE_PATH = re.compile(r" at '?\w*\.([\w.\[\]]+)'?[:;] ")


def _variable_error_extensions(error: GraphQLError) -> dict[str, Any] | None:
    """BAD_USER_INPUT for a variable GraphQL could not coerce (e.g. port sent as a number)."""
    if not error.nodes or not isinstance(error.nodes[0], VariableDefinitionNode):
        return None
    extensions: dict[str, Any] = {"code": "BAD_USER_INPUT"}
    if match := _VARIABLE_PATH.search(error.message):
        detail = error.message[match.end() :].split("\n", 1)[0]
        extensions["fields"] = [{"field": match.group(1), "message": detail}]
    return extensions


class ErrorCodes(SchemaExtension):
    """Adds ``extensions.code`` (and ``fields``) to domain errors and to bad variables."""

    @staticmethod
    def _annotate(result: object) -> None:
        for error in getattr(result, "errors", None) or ():
            if not isinstance(error, GraphQLError):
                continue
            # graphql-core quotes the offending value ("got invalid value <1 MB>"): clip it.
            error.message = clip(error.message, MAX_DETAIL_TEXT)
            if isinstance(error.original_error, DomainError):
                extensions = error_extensions(error.original_error)
            elif (variable := _variable_error_extensions(error)) is not None:
                extensions = variable
            else:
                continue
            error.extensions = {**(error.extensions or {}), **extensions}

    def on_operation(self) -> Iterator[None]:
        yield
        self._annotate(self.execution_context.result)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        self._annotate(result)
        yield None
