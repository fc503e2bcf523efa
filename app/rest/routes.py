"""The /v1 REST routes: translation only, each one calls one service function."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.deps import Ctx, CurrentPrincipal
from app.domain.errors import FieldError, MalformedInput
from app.domain.spec import ContainerInput
from app.domain.traffic import traffic_from_body
from app.domain.views import ContainerView, GpuModelView, Page, RevisionView
from app.limits import MAX_JSON_DEPTH, JsonTooDeep, loads_json
from app.services import containers as svc

router = APIRouter(prefix="/v1")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/problem+json": {}}}
    for code, text in [
        (401, "Unauthorized"),
        (403, "Forbidden"),
        (404, "Not Found"),
        (422, "Invalid input; `errors` names each field"),
    ]
}


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


_SPEC_SCHEMA = ContainerInput.model_json_schema(by_alias=True)
_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inlined(_SPEC_SCHEMA, _SPEC_SCHEMA.get("$defs", {}))}
        },
    }
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
PageParam = Annotated[int, Query(description="1-based page number")]
RowsParam = Annotated[int, Query(alias="rowsPerPage", description="Items per page, at most 100")]


@router.get("/containers", response_model=Page[ContainerView], responses=_ERRORS)
async def list_containers(
    principal: CurrentPrincipal,
    ctx: Ctx,
    page: PageParam = 1,
    rows_per_page: RowsParam = 10,
    all: Annotated[bool, Query(description="Every user's containers (ADMIN only)")] = False,
    search: Annotated[
        str | None, Query(description="Only containers whose name contains this")
    ] = None,
    status: Annotated[
        str | None,
        Query(description="Only containers with this status (deploying, deployed, failed)"),
    ] = None,
) -> Page[ContainerView]:
    return await run_in_threadpool(
        lambda: svc.list_containers(
            ctx=ctx,
            principal=principal,
            page=page,
            rows_per_page=rows_per_page,
            all_users=all,
            search=search,
            status=status,
        )
    )


@router.get("/containers/{id}", response_model=ContainerView, responses=_ERRORS)
async def get_container(id: str, principal: CurrentPrincipal, ctx: Ctx) -> ContainerView:
    return await run_in_threadpool(
        lambda: svc.get_container(ctx=ctx, principal=principal, container_id=id)
    )


@router.post(
    "/containers",
    status_code=201,
    response_model=ContainerView,
    responses=_ERRORS,
    openapi_extra=_SPEC_BODY,
)
async def create_container(payload: Json, principal: CurrentPrincipal, ctx: Ctx) -> ContainerView:
    return await run_in_threadpool(
        lambda: svc.create_container(ctx=ctx, principal=principal, data=payload)
    )


@router.put(
    "/containers/{id}", response_model=ContainerView, responses=_ERRORS, openapi_extra=_SPEC_BODY
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
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["revisionNumber"],
                        "properties": {"revisionNumber": {"type": "integer"}},
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
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
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


@router.post("/containers/{id}/redeploy", response_model=ContainerView, responses=_ERRORS)
async def redeploy_container(id: str, principal: CurrentPrincipal, ctx: Ctx) -> ContainerView:
    """Run the current spec again as a new revision (a fresh engine container and image pull),
    e.g. after a failed pull; nothing retries a failed pull by itself. No body is needed."""
    return await run_in_threadpool(
        lambda: svc.redeploy_container(ctx=ctx, principal=principal, container_id=id)
    )


@router.get("/gpu-models", response_model=Page[GpuModelView], responses=_ERRORS)
async def list_gpu_models(principal: CurrentPrincipal, ctx: Ctx) -> Page[GpuModelView]:
    return svc.list_gpu_models(ctx=ctx)
