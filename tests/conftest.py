"""Fixtures shared by every transport's tests: a real app on SQLite in a temporary directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.auth import LocalKeys
from app.deps import AppState
from app.server import create_app
from app.settings import Settings

Mint = Callable[..., str]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, runtime="none")


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def state(app: FastAPI) -> AppState:
    dockyard: AppState = app.state.dockyard
    return dockyard


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def token(app: FastAPI, settings: Settings) -> Mint:
    """``token("alice", ["ADMIN"])``: a bearer token the app accepts."""
    keys = LocalKeys(settings)

    def mint(subject: str = "alice", roles: Sequence[str] = ()) -> str:
        return keys.mint(subject=subject, roles=list(roles), ttl_seconds=3600)

    return mint


@pytest.fixture
def auth(token: Mint) -> Callable[..., dict[str, str]]:
    """``auth("bob")``: the Authorization header of a fresh token."""

    def header(subject: str = "alice", roles: Sequence[str] = ()) -> dict[str, str]:
        return {"Authorization": f"Bearer {token(subject, roles)}"}

    return header
