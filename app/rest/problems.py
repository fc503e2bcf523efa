"""RFC 9457 problem details for every error the REST API returns."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.domain.errors import (
    Conflict,
    DomainError,
    FieldError,
    Forbidden,
    MalformedInput,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    ValidationFailed,
    clip,
)
from app.observability.logs import current_request_id

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger(__name__)

STATUS: dict[type[DomainError], int] = {
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    ValidationFailed: 422,
    MalformedInput: 400,
    PayloadTooLarge: 413,
}
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = clip(instance, 200)
    if (request_id := current_request_id()) is not None:
        body["requestId"] = request_id
    if errors is not None:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def www_authenticate(detail: str) -> str:
    """The challenge of a 401: the description reduced to printable ASCII without quotes, so
    no header can be split (CR/LF), fail to encode (non-Latin-1) or break its quoting."""
    text = detail.removeprefix("invalid_token: ")
    description = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)[:200]
    return f'Bearer error="invalid_token", error_description="{description}"'


def domain_problem(error: DomainError, instance: str | None = None) -> JSONResponse:
    status = STATUS.get(type(error), 500)
    headers = None
    if isinstance(error, Unauthenticated):
        headers = {"WWW-Authenticate": www_authenticate(error.detail)}
    errors = error.errors if isinstance(error, ValidationFailed) else None
    return problem(
        status, error.code, error.detail, errors=errors, headers=headers, instance=instance
    )


def _request_validation(error: RequestValidationError) -> JSONResponse:
    errors: list[FieldError] = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        if item["type"] == "json_invalid":
            return problem(
                400,
                "MALFORMED_JSON",
                "body: the request body is not valid JSON",
                errors=[FieldError("body", "is not valid JSON")],
            )
        source, *rest = loc or ["body"]
        field = ".".join(rest) if rest else source
        message = "is required" if item["type"] == "missing" else str(item["msg"]).lower()
        errors.append(FieldError(field, message))
    return problem(422, ValidationFailed.code, "; ".join(str(e) for e in errors), errors=errors)


def install(app: FastAPI) -> None:
    """Route every error through problem+json; unexpected ones are logged and masked."""

    @app.exception_handler(DomainError)
    async def _domain(request: Request, error: DomainError) -> JSONResponse:
        return domain_problem(error, instance=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, error: RequestValidationError) -> JSONResponse:
        return _request_validation(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(error.status_code, "HTTP_ERROR")
        return problem(
            error.status_code,
            code,
            str(error.detail),
            instance=request.url.path,
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem(
            500, "INTERNAL", "internal error; it has been logged", instance=request.url.path
        )
