"""The authentication and authorization matrix on every route, and OIDC with a real JWKS server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from app.auth import LOCAL_ISSUER, LocalKeys, OidcVerifier, roles_from_claims
from app.domain.errors import Unauthenticated
from app.server import create_app
from app.settings import Settings

ROUTES = [
    ("get", "/v1/containers"),
    ("post", "/v1/containers"),
    ("get", "/v1/containers/{id}"),
    ("put", "/v1/containers/{id}"),
    ("delete", "/v1/containers/{id}"),
    ("get", "/v1/containers/{id}/revisions"),
    ("post", "/v1/containers/{id}/rollback"),
    ("get", "/v1/gpu-models"),
]
OWNED_ROUTES = [route for route in ROUTES if "{id}" in route[1]]


def _call(
    client: TestClient, method: str, path: str, container_id: str, headers: dict[str, str]
) -> Any:
    kwargs: dict[str, Any] = {"headers": headers}
    if method in ("post", "put"):
        kwargs["json"] = (
            {"revisionNumber": 1}
            if path.endswith("rollback")
            else {"name": "other", "image": "busybox:1.36"}
        )
    return getattr(client, method)(path.format(id=container_id), **kwargs)


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": LOCAL_ISSUER,
        "aud": "dockyard",
        "sub": "alice",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        **overrides,
    }


@pytest.fixture
def container_id(client: TestClient, auth: Any) -> str:
    response = client.post(
        "/v1/containers", json={"name": "mine", "image": "busybox:1.36"}, headers=auth("alice")
    )
    return str(response.json()["id"])


def _signed_by_stranger(**claims: Any) -> str:
    key = ECKey.generate_key("P-256", auto_kid=True)
    return jwt.encode({"alg": "ES256", "kid": key.kid}, _claims(**claims), key)


def _bad_credentials(settings: Settings) -> dict[str, dict[str, str]]:
    own_key = ECKey.import_key(json.loads((settings.data_dir / "signing-key.json").read_text()))

    def signed(**claims: Any) -> str:
        return jwt.encode({"alg": "ES256", "kid": own_key.kid}, _claims(**claims), own_key)

    valid = signed()
    header, payload, signature = valid.split(".")
    tampered_payload = jwt.encode(
        {"alg": "ES256", "kid": own_key.kid}, _claims(sub="root"), own_key
    ).split(".")[1]
    return {
        "anonymous": {},
        "garbage": {"Authorization": "Bearer not.a.jwt"},
        "wrong scheme": {"Authorization": f"Basic {valid}"},
        "forged signature": {"Authorization": f"Bearer {_signed_by_stranger()}"},
        "tampered payload": {"Authorization": f"Bearer {header}.{tampered_payload}.{signature}"},
        "expired": {"Authorization": f"Bearer {signed(exp=int(time.time()) - 3600)}"},
        "not yet valid": {"Authorization": f"Bearer {signed(nbf=int(time.time()) + 3600)}"},
        "wrong issuer": {"Authorization": f"Bearer {signed(iss='https://evil.example')}"},
        "wrong audience": {"Authorization": f"Bearer {signed(aud='someone-else')}"},
        "no subject": {"Authorization": f"Bearer {signed(sub='')}"},
        "alg none": {"Authorization": "Bearer " + ".".join(["eyJhbGciOiJub25lIn0", payload, ""])},
    }


@pytest.mark.parametrize("method,path", ROUTES)
def test_bad_credentials_are_401_with_www_authenticate(
    client: TestClient, settings: Settings, container_id: str, method: str, path: str
) -> None:
    for case, headers in _bad_credentials(settings).items():
        response = _call(client, method, path, container_id, headers)
        assert response.status_code == 401, (case, response.text)
        assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"'), case
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "UNAUTHENTICATED"


def test_a_token_of_another_data_dir_says_what_to_check(
    client: TestClient, tmp_path: Path
) -> None:
    other = LocalKeys(Settings(data_dir=tmp_path / "elsewhere"))
    token = other.mint(subject="alice", roles=[], ttl_seconds=60)
    response = client.get("/v1/containers", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    detail = response.json()["detail"]
    assert "another data directory's key" in detail and "DOCKYARD_DATA_DIR" in detail


@pytest.mark.parametrize("method,path", OWNED_ROUTES)
def test_other_users_are_403_owner_and_admin_pass(
    client: TestClient, auth: Any, container_id: str, method: str, path: str
) -> None:
    other = _call(client, method, path, container_id, auth("mallory"))
    assert other.status_code == 403, other.text
    assert other.json()["code"] == "FORBIDDEN"
    admin = _call(client, method, path, container_id, auth("root", "ADMIN"))
    assert admin.status_code in (200, 204), admin.text
    if method != "delete":
        owner = _call(client, method, path, container_id, auth("alice"))
        assert owner.status_code == 200, owner.text


def test_admin_update_keeps_the_owner(client: TestClient, auth: Any, container_id: str) -> None:
    response = client.put(
        f"/v1/containers/{container_id}", json={"cpu": 2}, headers=auth("root", "ADMIN")
    )
    assert response.json()["createdBy"] == "alice"
    revisions = client.get(f"/v1/containers/{container_id}/revisions", headers=auth()).json()
    assert revisions["items"][0]["createdBy"] == "root"


def test_roles_claim_paths() -> None:
    assert roles_from_claims({"roles": ["ADMIN"]}, "roles") == {"ADMIN"}
    assert roles_from_claims({"realm_access": {"roles": ["ADMIN", "x"]}}, "roles") == {"ADMIN", "x"}
    assert roles_from_claims({"groups": {"r": ["A"]}}, "groups.r") == {"A"}
    assert roles_from_claims({"scope": "a b"}, "scope") == {"a", "b"}
    assert roles_from_claims({}, "roles") == frozenset()


def test_signing_key_is_created_once_and_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/db.sqlite")
    create_app(settings).state.dockyard.ctx.engine.dispose()
    key_file = tmp_path / "signing-key.json"
    first = key_file.read_text()
    assert key_file.stat().st_mode & 0o077 == 0
    create_app(settings).state.dockyard.ctx.engine.dispose()
    assert key_file.read_text() == first


class _Issuer:
    """A real OIDC issuer on 127.0.0.1: discovery document and JWKS over HTTP."""

    def __init__(self) -> None:
        self.keys: list[RSAKey] = [RSAKey.generate_key(2048, auto_kid=True)]
        self.jwks_requests = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/realms/test/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/certs"}
                elif self.path == "/realms/test/certs":
                    issuer.jwks_requests += 1
                    body = {"keys": [k.as_dict(private=False) for k in issuer.keys]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/realms/test"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, key: RSAKey | None = None, **claims: Any) -> str:
        key = key or self.keys[-1]
        body = _claims(iss=self.url, **claims)
        return jwt.encode({"alg": "RS256", "kid": key.kid}, body, key)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def issuer() -> Iterator[_Issuer]:
    server = _Issuer()
    yield server
    server.close()


def test_oidc_mode_verifies_with_the_issuers_jwks(
    tmp_path: Path, database_url: str, issuer: _Issuer
) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, auth_issuer=issuer.url, runtime="none"
    )
    with TestClient(create_app(settings)) as client:
        token = issuer.token(realm_access={"roles": ["ADMIN"]})
        ok = client.get("/v1/containers?all=true", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200, ok.text
        # a token of the local key is not accepted in OIDC mode
        stranger = _signed_by_stranger(iss=issuer.url)
        refused = client.get("/v1/containers", headers={"Authorization": f"Bearer {stranger}"})
        assert refused.status_code == 401


def test_oidc_keys_are_cached_and_refreshed_on_unknown_kid(
    tmp_path: Path, issuer: _Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.auth

    monkeypatch.setattr(app.auth, "JWKS_REFRESH_MIN_INTERVAL", 0.0)
    verifier = OidcVerifier(Settings(data_dir=tmp_path, auth_issuer=issuer.url))
    assert verifier.verify(issuer.token()).subject == "alice"
    assert verifier.verify(issuer.token(sub="bob")).subject == "bob"
    assert issuer.jwks_requests == 1
    issuer.keys.append(RSAKey.generate_key(2048, auto_kid=True))  # the issuer rotates its key
    assert verifier.verify(issuer.token(sub="carol")).subject == "carol"
    assert issuer.jwks_requests == 2
    with pytest.raises(Unauthenticated):
        verifier.verify(issuer.token(aud="other"))
    with pytest.raises(Unauthenticated, match="not in the issuer's JWKS"):
        verifier.verify(issuer.token(key=RSAKey.generate_key(2048, auto_kid=True)))
