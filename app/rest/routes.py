"""The /v1 REST routes: translation only, each one calls one service function."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.deps import Ctx, CurrentPrincipal
from app.domain.errors import FieldError, MalformedInput
from app.domain.spec import ContainerInput
from app.domain.views import ContainerView, CursorPage, GpuModelView, Page, RevisionView
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
_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ContainerInput.model_json_schema(by_alias=True)}
        },
    }
}


async def json_body(request: Request) -> Any:
    """The request body parsed as JSON whatever its Content-Type; the domain checks its shape."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MalformedInput([FieldError("body", "is not valid JSON")]) from None


Json = Annotated[Any, Depends(json_body)]
PageParam = Annotated[int, Query(description="1-based page number")]
RowsParam = Annotated[int, Query(alias="rowsPerPage", description="Items per page, at most 100")]


@router.get("/containers", response_model=CursorPage[ContainerView], responses=_ERRORS)
async def list_containers(
    principal: CurrentPrincipal,
    ctx: Ctx,
    page: PageParam = 1,
    rows_per_page: RowsParam = 10,
    all: Annotated[bool, Query(description="Every user's containers (ADMIN only)")] = False,
    after: Annotated[
        str | None,
        Query(description="Continue after this position: the `nextCursor` of the previous page"),
    ] = None,
) -> CursorPage[ContainerView]:
    return await run_in_threadpool(
        lambda: svc.list_containers(
            ctx=ctx,
            principal=principal,
            page=page,
            rows_per_page=rows_per_page,
            all_users=all,
            after=after,
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


@router.get("/gpu-models", response_model=Page[GpuModelView], responses=_ERRORS)
async def list_gpu_models(principal: CurrentPrincipal, ctx: Ctx) -> Page[GpuModelView]:
    return svc.list_gpu_models(ctx=ctx)
