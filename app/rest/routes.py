"""The /v1 REST routes: translation only, each one calls one service function."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from app.deps import Ctx, CurrentPrincipal, current_principal, service_context
from app.domain.errors import FieldError, MalformedInput
from app.domain.gpus import load_catalog
from app.domain.principal import Principal
from app.domain.spec import (
    MAX_CONCURRENCY,
    MAX_DESIRED_GPUS,
    MAX_ENV_ENTRIES,
    MAX_ENV_VALUE,
    MAX_IMAGE,
    MAX_ITEM_LENGTH,
    MAX_LIST_ITEMS,
    MAX_SCALE_TO_ZERO_AFTER,
    NAME_PATTERN,
    ContainerInput,
    Limits,
)
from app.domain.traffic import traffic_from_body
from app.domain.views import ContainerView, CursorPage, GpuModelView, Page, RevisionView
from app.limits import MAX_JSON_DEPTH, JsonTooDeep, loads_json
from app.rest import problems
from app.services import containers as svc
from app.services.context import ServiceContext

router = APIRouter(prefix="/v1")


def _inlined(schema: Any, defs: dict[str, Any]) -> Any:
    """A JSON schema with its local ``#/$defs/...`` references replaced by their targets (such
    references would point at the root of the OpenAPI document, where there are none)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inlined(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inlined(value, defs) for key, value in schema.items() if key != "$defs"}
    if isinstance(schema, list):
        return [_inlined(item, defs) for item in schema]
    return schema


_PROBLEM = {"application/problem+json": {"schema": {"$ref": problems.PROBLEM_REF}}}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    texts = {
        400: "MALFORMED_JSON: the body is not JSON (or nests deeper than 64 levels)",
        401: "UNAUTHENTICATED: missing, malformed or expired bearer token",
        403: "FORBIDDEN: the container belongs to another user",
        404: "NOT_FOUND",
        409: "CONFLICT: the name is taken, or a concurrent change won; retry",
        413: "PAYLOAD_TOO_LARGE: the body is over DOCKYARD_MAX_REQUEST_BODY_BYTES",
        422: "BAD_USER_INPUT: invalid input; `errors` names each field",
        503: "UNAVAILABLE: the database cannot be reached; retry",
    }
    return {code: {"description": texts[code], "content": _PROBLEM} for code in codes}


_ERRORS = _responses(401, 403, 404, 422, 503)
_LIST_ERRORS = _responses(401, 422, 503)
_WRITE_ERRORS = _responses(400, 401, 403, 404, 409, 413, 422, 503)
_CREATE_ERRORS = _responses(400, 401, 409, 413, 422, 503)


def _input_schema() -> dict[str, Any]:
    """The container spec as published: the domain's rules written as JSON Schema, so a
    document valid by the schema is accepted (schemathesis checks exactly that). The cpu/gpu
    maxima are the default limits (DOCKYARD_MAX_CPU/GPU); desiredGPUs lists the built-in
    catalog's codes and names."""
    schema = ContainerInput.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})
    # Fields without a hand-written rule below (scaling…) are published as pydantic writes them.
    generated = {key: _inlined(value, defs) for key, value in schema["properties"].items()}
    no_nul = {"type": "string", "pattern": "^[^\\x00]*$", "maxLength": MAX_ITEM_LENGTH}
    quantity = {
        "type": "string",
        "pattern": "^[1-9][0-9]{0,5}(Ki|Mi|Gi|Ti|k|M|G|T)?$",
        "examples": ["512Mi", "2Gi"],
    }
    gpu_names = sorted(
        {m.code for m in load_catalog().models} | {m.name for m in load_catalog().models}
    )
    limits = Limits()
    # Merged over the model's own schema: a field added to ContainerInput is published as the
    # model describes it until its rules are written here too.
    schema["properties"] = {
        **generated,
        "name": {"type": "string", "pattern": NAME_PATTERN.pattern, "maxLength": 63},
        "image": {
            "type": "string",
            "maxLength": MAX_IMAGE,
            "pattern": "^[a-z0-9]+([._/-][a-z0-9]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
            "|@sha256:[a-f0-9]{64})$",
            "examples": ["nginx:1.27"],
        },
        "cpu": {"type": "number", "exclusiveMinimum": 0, "maximum": limits.max_cpu},
        "ram": quantity,
        "gpu": {"type": "integer", "minimum": 0, "maximum": limits.max_gpu},
        "ephemeralStorage": quantity,
        "command": {
            "anyOf": [
                {"type": "array", "items": no_nul, "maxItems": MAX_LIST_ITEMS},
                {"type": "null"},
            ]
        },
        "arguments": {
            "anyOf": [
                {"type": "array", "items": no_nul, "maxItems": MAX_LIST_ITEMS},
                {"type": "null"},
            ]
        },
        "env": {
            "anyOf": [
                {
                    "type": "object",
                    "maxProperties": MAX_ENV_ENTRIES,
                    "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,255}$"},
                    "additionalProperties": {**no_nul, "maxLength": MAX_ENV_VALUE},
                },
                {"type": "null"},
            ]
        },
        "port": {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "pattern": "^[1-9][0-9]{0,3}$"},
            ],
            "examples": [8080],
        },
        "scaling": {
            "anyOf": [
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        name: {"anyOf": [{"type": "integer", **bounds}, {"type": "null"}]}
                        for name, bounds in (
                            ("minInstances", {"minimum": 0, "maximum": limits.max_instances}),
                            ("maxInstances", {"minimum": 1, "maximum": limits.max_instances}),
                            ("concurrency", {"minimum": 1, "maximum": MAX_CONCURRENCY}),
                            (
                                "scaleToZeroAfterSeconds",
                                {"minimum": 0, "maximum": MAX_SCALE_TO_ZERO_AFTER},
                            ),
                        )
                    },
                    "description": "Per revision; fields left out keep their value (defaults: "
                    "0, 100, 80, 900). minInstances may not exceed maxInstances.",
                },
                {"type": "null"},
            ]
        },
        "desiredGPUs": {
            "anyOf": [
                {"type": "array", "maxItems": MAX_DESIRED_GPUS, "items": {"enum": gpu_names}},
                {"type": "null"},
            ],
            "description": "GPU model codes or names in order of preference; needs gpu >= 1",
        },
    }
    # desiredGPUs needs at least one GPU.
    schema["if"] = {
        "required": ["desiredGPUs"],
        "properties": {"desiredGPUs": {"type": "array", "minItems": 1}},
    }
    schema["then"] = {"required": ["gpu"], "properties": {"gpu": {"minimum": 1}}}
    return schema


_INPUT_SCHEMA = _input_schema()
_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {**_INPUT_SCHEMA, "required": ["name", "image"]}}
        },
    }
}
_SPEC_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _INPUT_SCHEMA}}}
}


async def json_body(request: Request, _caller: CurrentPrincipal) -> Any:
    """The request body parsed as JSON whatever its Content-Type; the domain checks its shape.

    Depends on the caller: nothing of an unauthenticated request's body is read or parsed.
    """
    raw = await request.body()
    try:
        return loads_json(raw)
    except JsonTooDeep:
        raise MalformedInput(
            [FieldError("body", f"nests arrays/objects deeper than {MAX_JSON_DEPTH} levels")]
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MalformedInput([FieldError("body", "is not valid JSON")]) from None


Json = Annotated[Any, Depends(json_body)]
# Bounds are documented here and checked by the service (same messages as GraphQL).
PageParam = Annotated[
    int,
    Query(
        description="1-based page number",
        json_schema_extra={"minimum": 1, "maximum": svc.MAX_PAGE},
    ),
]
RowsParam = Annotated[
    int,
    Query(
        alias="rowsPerPage",
        description=f"Items per page, at most {svc.MAX_ROWS_PER_PAGE}",
        json_schema_extra={"minimum": 1, "maximum": svc.MAX_ROWS_PER_PAGE},
    ),
]


class ListQuery(BaseModel):
    """The query parameters of ``GET /v1/containers``, validated in one step by ``list_query``.

    FastAPI validates declared query parameters one by one, each through its own generic
    machinery: for six of them that was about a quarter of a cached 10-row list's CPU. One
    pydantic model validates them at once, with the same types and messages (the 422 names each
    field as ``query.<name>`` did), and FastAPI still documents them from this model.
    """

    page: int = Field(
        1,
        description="1-based page number",
        json_schema_extra={"minimum": 1, "maximum": svc.MAX_PAGE},
    )
    rows_per_page: int = Field(
        svc.DEFAULT_ROWS_PER_PAGE,
        alias="rowsPerPage",
        description=f"Items per page, at most {svc.MAX_ROWS_PER_PAGE}",
        json_schema_extra={"minimum": 1, "maximum": svc.MAX_ROWS_PER_PAGE},
    )
    all: bool = Field(False, description="Every user's containers (ADMIN only)")
    after: str | None = Field(
        None, description="Continue after this position: the `nextCursor` of the previous page"
    )
    search: str | None = Field(
        None,
        description="Only containers whose name contains this",
        json_schema_extra={"maxLength": svc.MAX_SEARCH_LENGTH},
    )
    status: str | None = Field(
        None,
        description="Only containers with this status",
        json_schema_extra={"enum": list(svc.STATUSES)},
    )


_LIST_QUERY_NAMES = tuple(field.alias or name for name, field in ListQuery.model_fields.items())


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The OpenAPI ``parameters`` FastAPI writes for ``model`` as query parameters (taken from
    a route that is only documented, so the published document stays exactly as it was)."""

    async def endpoint(query: Any) -> None:
        return None

    # (this module's annotations are strings; FastAPI needs the real one here)
    endpoint.__annotations__ = {"query": Annotated[model, Query()], "return": None}
    documented = APIRouter()
    documented.add_api_route("/", endpoint, methods=["GET"])
    document = get_openapi(title="", version="", routes=documented.routes)
    parameters: list[dict[str, Any]] = document["paths"]["/"]["get"]["parameters"]
    return parameters


def list_query(request: Request) -> ListQuery:
    """The list's query parameters; a 422 naming each bad one, as FastAPI answers (the last of
    repeated values counts, unknown names are ignored)."""
    params = request.query_params
    try:
        return ListQuery.model_validate(
            {name: params[name] for name in _LIST_QUERY_NAMES if name in params}
        )
    except ValidationError as e:
        raise RequestValidationError(
            [{**error, "loc": ("query", *error["loc"])} for error in e.errors(include_url=False)]
        ) from None


@dataclass(frozen=True)
class ListRequest:
    principal: Principal
    ctx: ServiceContext
    query: ListQuery


async def list_request(request: Request) -> ListRequest:
    """The caller, the service context and the query of a list request as one dependency: for
    the cheapest route of all, FastAPI's bookkeeping per dependency cost more than the three
    did. The caller comes first, as before: without a valid token it is a 401 whatever the
    parameters."""
    principal = await current_principal(request)
    return ListRequest(principal, await service_context(request), list_query(request))


@router.get(
    "/containers",
    response_model=CursorPage[ContainerView],
    responses=_LIST_ERRORS,
    openapi_extra={"parameters": _query_parameters(ListQuery)},
)
async def list_containers(listing: Annotated[ListRequest, Depends(list_request)]) -> Response:
    principal, ctx, query = listing.principal, listing.ctx, listing.query

    # The body is built by the service (views cached per row, JSON written once per view) and
    # answered as is: FastAPI would otherwise validate the page again against the response
    # model and serialize it anew. ``response_model`` still documents it in the OpenAPI.
    def body() -> bytes:
        return svc.list_containers_json(
            ctx=ctx,
            principal=principal,
            page=query.page,
            rows_per_page=query.rows_per_page,
            all_users=query.all,
            search=query.search,
            status=query.status,
            after=query.after,
        )

    content = body() if svc.list_runs_inline(ctx) else await run_in_threadpool(body)
    return Response(content, media_type="application/json")


@router.get("/containers/{id}", response_model=ContainerView, responses=_ERRORS)
async def get_container(id: str, principal: CurrentPrincipal, ctx: Ctx) -> ContainerView:
    return await run_in_threadpool(
        lambda: svc.get_container(ctx=ctx, principal=principal, container_id=id)
    )


@router.post(
    "/containers",
    status_code=201,
    response_model=ContainerView,
    responses=_CREATE_ERRORS,
    openapi_extra=_CREATE_BODY,
)
async def create_container(payload: Json, principal: CurrentPrincipal, ctx: Ctx) -> ContainerView:
    return await run_in_threadpool(
        lambda: svc.create_container(ctx=ctx, principal=principal, data=payload)
    )


@router.put(
    "/containers/{id}",
    response_model=ContainerView,
    responses=_WRITE_ERRORS,
    openapi_extra=_SPEC_BODY,
)
async def update_container(
    id: str, payload: Json, principal: CurrentPrincipal, ctx: Ctx
) -> ContainerView:
    return await run_in_threadpool(
        lambda: svc.update_container(ctx=ctx, principal=principal, container_id=id, data=payload)
    )


@router.delete("/containers/{id}", status_code=204, response_class=Response, responses=_ERRORS)
async def delete_container(id: str, principal: CurrentPrincipal, ctx: Ctx) -> Response:
    await run_in_threadpool(
        lambda: svc.delete_container(ctx=ctx, principal=principal, container_id=id)
    )
    return Response(status_code=204)


@router.get("/containers/{id}/revisions", response_model=Page[RevisionView], responses=_ERRORS)
async def list_revisions(
    id: str,
    principal: CurrentPrincipal,
    ctx: Ctx,
    page: PageParam = 1,
    rows_per_page: RowsParam = 10,
) -> Page[RevisionView]:
    return await run_in_threadpool(
        lambda: svc.list_revisions(
            ctx=ctx, principal=principal, container_id=id, page=page, rows_per_page=rows_per_page
        )
    )


@router.post(
    "/containers/{id}/rollback",
    response_model=ContainerView,
    responses=_WRITE_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["revisionNumber"],
                        "properties": {
                            "revisionNumber": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": svc.MAX_REVISION_NUMBER,
                            }
                        },
                    }
                }
            },
        }
    },
)
async def rollback_container(
    id: str, payload: Json, principal: CurrentPrincipal, ctx: Ctx
) -> ContainerView:
    number = payload.get("revisionNumber") if isinstance(payload, dict) else None
    return await run_in_threadpool(
        lambda: svc.rollback_container(
            ctx=ctx, principal=principal, container_id=id, revision_number=number
        )
    )


@router.put(
    "/containers/{id}/traffic",
    response_model=ContainerView,
    responses=_WRITE_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["traffic"],
                        "properties": {
                            "traffic": {
                                "type": "array",
                                "maxItems": 20,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "revision": {"type": "integer"},
                                        "latest": {"type": "boolean"},
                                        "percent": {
                                            "type": "integer",
                                            "minimum": 0,
                                            "maximum": 100,
                                        },
                                        "tag": {"type": "string"},
                                    },
                                },
                            }
                        },
                    }
                }
            },
        }
    },
)
async def set_traffic(
    id: str, payload: Json, principal: CurrentPrincipal, ctx: Ctx
) -> ContainerView:
    """Where the container's requests go, by percent and tag; makes no new revision."""
    traffic = traffic_from_body(payload)
    return await run_in_threadpool(
        lambda: svc.set_traffic(ctx=ctx, principal=principal, container_id=id, data=traffic)
    )


@router.post(
    "/containers/{id}/redeploy",
    response_model=ContainerView,
    responses=_responses(401, 403, 404, 409, 422, 503),
)
async def redeploy_container(id: str, principal: CurrentPrincipal, ctx: Ctx) -> ContainerView:
    """Run the current spec again as a new revision (a fresh engine container and image pull),
    e.g. after a failed pull; nothing retries a failed pull by itself. No body is needed."""
    return await run_in_threadpool(
        lambda: svc.redeploy_container(ctx=ctx, principal=principal, container_id=id)
    )


@router.get("/gpu-models", response_model=Page[GpuModelView], responses=_responses(401))
async def list_gpu_models(principal: CurrentPrincipal, ctx: Ctx) -> Page[GpuModelView]:
    return svc.list_gpu_models(ctx=ctx)
