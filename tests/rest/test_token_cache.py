"""The verified-token cache: bounded, never past ``exp``, and removed JWKS keys stop working
within the documented time (with a real OIDC issuer on 127.0.0.1)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc.jwk import RSAKey

import app.auth
from app.auth import (
    JWKS_MAX_AGE_SECONDS,
    TOKEN_CACHE_SECONDS,
    LocalKeys,
    OidcVerifier,
    TokenCache,
)
from app.domain.errors import Unauthenticated
from app.domain.principal import Principal
from app.settings import Settings
from tests.rest.test_auth import _Issuer


class Clock:
    """Moves ``time.time`` and ``time.monotonic`` forward together (joserfc reads the same)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real_time, real_monotonic = time.time, time.monotonic
        monkeypatch.setattr(time, "time", lambda: real_time() + self.offset)
        monkeypatch.setattr(time, "monotonic", lambda: real_monotonic() + self.offset)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
def issuer() -> Iterator[_Issuer]:
    server = _Issuer()
    yield server
    server.close()


def counting_decode(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = app.auth.jwt.decode

    def decode(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(app.auth.jwt, "decode", decode)
    return calls


def test_a_verified_token_is_checked_once_then_served_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = LocalKeys(Settings(data_dir=tmp_path))
    token = keys.mint(subject="alice", roles=["ADMIN"], ttl_seconds=600)
    calls = counting_decode(monkeypatch)
    assert keys.cached(token) is None
    first = keys.verify(token)
    assert keys.cached(token) == first == keys.verify(token)
    assert first == Principal(subject="alice", roles=frozenset({"ADMIN"}))
    assert len(calls) == 1
    with pytest.raises(Unauthenticated):  # failures are never cached
        keys.verify(token[:-4] + "AAAA")
    assert keys.cached(token[:-4] + "AAAA") is None


def test_the_cache_never_outlives_exp(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path, auth_leeway_seconds=0)
    keys = LocalKeys(settings)
    short = keys.mint(subject="alice", roles=[], ttl_seconds=5)
    long = keys.mint(subject="bob", roles=[], ttl_seconds=3600)
    keys.verify(short)
    keys.verify(long)
    clock.advance(5)
    assert keys.cached(short) is None  # exp reached: no longer served from the cache
    with pytest.raises(Unauthenticated):
        keys.verify(short)
    assert keys.cached(long) is not None
    clock.advance(TOKEN_CACHE_SECONDS)  # entries age out even before exp: verified again
    assert keys.cached(long) is None
    calls = counting_decode(monkeypatch)
    assert keys.verify(long).subject == "bob"
    assert calls == [long]


def test_the_cache_is_bounded() -> None:
    cache = TokenCache(size=2)
    far = time.time() + 3600
    for name in ("a", "b", "c"):
        cache.put(name, Principal(subject=name), exp=far)
    assert cache.get("a") is None
    assert cache.get("b") is not None and cache.get("c") is not None
    cache.get("b")  # recently used: "c" goes first
    cache.put("d", Principal(subject="d"), exp=far)
    assert cache.get("c") is None and cache.get("b") is not None


def test_a_key_removed_from_the_jwks_stops_working_within_the_bound(
    tmp_path: Path, issuer: _Issuer, clock: Clock
) -> None:
    verifier = OidcVerifier(Settings(data_dir=tmp_path, auth_issuer=issuer.url))
    old = issuer.token(exp=int(time.time()) + 7200)
    assert verifier.verify(old).subject == "alice"
    issuer.keys = [RSAKey.generate_key(2048, auto_kid=True)]  # the issuer revokes its key
    clock.advance(JWKS_MAX_AGE_SECONDS / 2)
    assert verifier.verify(old).subject == "alice"  # within the bound it may still pass
    clock.advance(JWKS_MAX_AGE_SECONDS / 2 + TOKEN_CACHE_SECONDS + 1)
    assert verifier.cached(old) is None
    with pytest.raises(Unauthenticated):
        verifier.verify(old)
    assert verifier.verify(issuer.token(sub="carol")).subject == "carol"  # the new key works


def test_an_unreachable_issuer_keeps_the_known_keys(
    tmp_path: Path, issuer: _Issuer, clock: Clock
) -> None:
    verifier = OidcVerifier(Settings(data_dir=tmp_path, auth_issuer=issuer.url))
    assert verifier.verify(issuer.token()).subject == "alice"
    issuer.close()
    clock.advance(JWKS_MAX_AGE_SECONDS + 1)
    assert verifier.verify(issuer.token(sub="bob")).subject == "bob"


def test_rest_requests_verify_a_token_once(
    client: TestClient, token: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_decode(monkeypatch)
    headers = {"Authorization": f"Bearer {token('alice')}"}
    for _ in range(5):
        assert client.get("/v1/containers", headers=headers).status_code == 200
    assert len(calls) == 1
    bad = {"Authorization": "Bearer " + token("alice")[:-4] + "AAAA"}
    assert client.get("/v1/containers", headers=bad).status_code == 401
