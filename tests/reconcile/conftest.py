"""The service context the reconciler tests share: the real app state on the test database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.server import build_state
from app.services.context import ServiceContext
from app.settings import Settings


@pytest.fixture
def ctx(settings: Settings) -> Iterator[ServiceContext]:
    context = build_state(settings).ctx
    yield context
    context.engine.dispose()
