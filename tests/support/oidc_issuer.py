"""A small OpenID Connect issuer over real HTTP on 127.0.0.1, for the console's sign-in tests.

It serves discovery, JWKS, an authorization endpoint that signs in ``user`` at once (no login
form) and a token endpoint that redeems a code once, for the same client and redirect URI, and
only with the PKCE verifier whose S256 challenge came with the authorization request. Access
tokens are RS256 JWTs with ``aud`` and roles as Dockyard expects.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    method: str


@dataclass
class Issuer:
    client_id: str = "dockyard-console"
    user: str = "oidc-alice"
    roles: list[str] = field(default_factory=list)
    audience: str = "dockyard"
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, auto_kid=True))
    grants: dict[str, Grant] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def access_token(self) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": self.audience,
            "sub": self.user,
            "roles": self.roles,
            "iat": now,
            "exp": now + 600,
        }
        return jwt.encode({"alg": "RS256", "kid": self.key.kid}, claims, self.key)

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            return 400, {}, b"unknown client or response type"
        code = secrets.token_urlsafe(16)
        self.grants[code] = Grant(
            client_id=query["client_id"],
            redirect_uri=query["redirect_uri"],
            challenge=query.get("code_challenge", ""),
            method=query.get("code_challenge_method", ""),
        )
        location = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
        return 302, {"Location": location}, b""

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        self.token_requests.append(form)
        grant = self.grants.pop(form.get("code", ""), None)

        def error(kind: str) -> tuple[int, dict[str, str], bytes]:
            return 400, {"Content-Type": "application/json"}, json.dumps({"error": kind}).encode()

        if grant is None or form.get("grant_type") != "authorization_code":
            return error("invalid_grant")
        if (
            form.get("client_id") != grant.client_id
            or form.get("redirect_uri") != grant.redirect_uri
        ):
            return error("invalid_client")
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if grant.method != "S256" or not secrets.compare_digest(expected, grant.challenge):
            return error("invalid_grant")
        body = {"access_token": self.access_token(), "token_type": "Bearer", "expires_in": 600}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def start(self) -> Issuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, value: Any) -> None:
                self._send(200, {"Content-Type": "application/json"}, json.dumps(value).encode())

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if parts.path == "/.well-known/openid-configuration":
                    self._json(
                        {
                            "issuer": issuer.url,
                            "authorization_endpoint": f"{issuer.url}/authorize",
                            "token_endpoint": f"{issuer.url}/token",
                            "jwks_uri": f"{issuer.url}/jwks",
                            "code_challenge_methods_supported": ["S256"],
                        }
                    )
                elif parts.path == "/jwks":
                    self._json(KeySet([issuer.key]).as_dict(private=False))
                elif parts.path == "/authorize":
                    self._send(*issuer.authorize(query))
                else:
                    self._send(404, {}, b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if self.path == "/token":
                    self._send(*issuer.token(form))
                else:
                    self._send(404, {}, b"")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
