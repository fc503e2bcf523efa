"""Errors the domain raises; transports map each ``code`` to their own form (HTTP status,
GraphQL ``extensions.code``), so both APIs report the same failure the same way."""

from __future__ import annotations

from dataclasses import dataclass

MAX_FIELD_TEXT = 120
MAX_MESSAGE_TEXT = 400
MAX_DETAIL_TEXT = 2000


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (marked with …): client input such as a 1 MB id or
    field name is never echoed back whole in an error."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class FieldError:
    """One offending input field and how to fix it (both clipped to a readable length)."""

    field: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "field", clip(self.field, MAX_FIELD_TEXT))
        object.__setattr__(self, "message", clip(self.message, MAX_MESSAGE_TEXT))

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class DomainError(Exception):
    """Base of expected failures; ``code`` is stable and documented."""

    code = "INTERNAL"

    def __init__(self, detail: str) -> None:
        detail = clip(detail, MAX_DETAIL_TEXT)
        super().__init__(detail)
        self.detail = detail


class Unauthenticated(DomainError):
    code = "UNAUTHENTICATED"


class Forbidden(DomainError):
    code = "FORBIDDEN"


class NotFound(DomainError):
    code = "NOT_FOUND"


class Conflict(DomainError):
    code = "CONFLICT"


class ValidationFailed(DomainError):
    code = "BAD_USER_INPUT"

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(str(error) for error in errors))
        self.errors = errors


class MalformedInput(ValidationFailed):
    """The request body is not parseable at all (not JSON)."""

    code = "MALFORMED_JSON"


class PayloadTooLarge(DomainError):
    """The request body is over the server's limit (``DOCKYARD_MAX_REQUEST_BODY_BYTES``)."""

    code = "PAYLOAD_TOO_LARGE"

    def __init__(self, limit: int) -> None:
        super().__init__(f"body: the request body is larger than the limit of {limit} bytes")
        self.limit = limit
