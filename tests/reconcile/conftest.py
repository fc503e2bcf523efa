"""What the reconciler tests share: the real app state on the test database, and a reconciler on
it driving the ``runtime`` fixture each test module provides (in memory, Kubernetes, Knative)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.reconcile import Reconciler, ReconcilerOptions
from app.runtime.base import Runtime
from app.server import build_state
from app.services.context import ServiceContext
from app.settings import Settings


@pytest.fixture
def ctx(settings: Settings) -> Iterator[ServiceContext]:
    context = build_state(settings).ctx
    yield context
    context.engine.dispose()


@pytest.fixture
def reconciler(ctx: ServiceContext, runtime: Runtime) -> Reconciler:
    assert isinstance(runtime, Runtime)
    return Reconciler(
        engine=ctx.engine,
        runtime=runtime,
        catalog=ctx.catalog,
        options=ReconcilerOptions(drain_seconds=0.0),
    )
