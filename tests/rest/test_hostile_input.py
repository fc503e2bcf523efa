"""Hostile and malformed input (issue 16): each case once answered 500, dropped the connection,
echoed client text or grew the server; each must now get a short, safe 4xx."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

Auth = Callable[..., dict[str, str]]


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


HOSTILE_HEADERS = [
    {"alg": "ES256", "kid": "é€"},  # non-Latin-1: once a 500 (header encoding)
    {"alg": "ES256", "kid": "a\r\nSet-Cookie: x=1"},  # CR/LF: once a dropped connection
    {"alg": "ES\u20ac", "kid": "k"},
    {"alg": "ES256\r\nX-Forged: 1", "kid": "k"},
    {"alg": "none"},
    {"kid": "\x00\x1b[31m"},
]
SAFE_TEXTS = {
    "the bearer token is malformed",
    "the bearer token is signed by an unknown key",
    "the bearer token's signature is invalid",
}


@pytest.mark.parametrize("header", HOSTILE_HEADERS)
def test_hostile_token_headers_get_a_fixed_401(client: TestClient, header: dict[str, Any]) -> None:
    token = f"{_b64(header)}.{_b64({'sub': 'x', 'aud': 'dockyard'})}.AAAA"
    response = client.get("/v1/containers", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    description = response.json()["detail"].removeprefix("invalid_token: ")
    assert description in SAFE_TEXTS
    challenge = response.headers["www-authenticate"]
    assert challenge == f'Bearer error="invalid_token", error_description="{description}"'


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "é.é.é", "x" * 5000, "..", "a.\x7f.b"])
def test_garbage_tokens_get_a_fixed_401(client: TestClient, token: str) -> None:
    response = client.get("/v1/containers", headers={"Authorization": f"Bearer {token}".encode()})
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid_token: the bearer token is malformed"
    assert "garbage" not in response.headers["www-authenticate"]
