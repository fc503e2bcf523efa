"""Bearer-token authentication, shared by REST, GraphQL and WebSocket subscriptions.

Two modes. Local (the embedded default): an ES256 key generated on first start in the data
directory signs tokens minted by ``dockyard token``. OIDC (``DOCKYARD_AUTH_ISSUER`` set): keys come
from the issuer's discovery document and JWKS, cached and refreshed when a token names an unknown
``kid``. Either way joserfc checks the signature against an algorithm allow-list and the claims
registry checks ``exp``, ``nbf``, ``iss`` and ``aud``.

Verified tokens are cached (``TokenCache``): a console polls with the same token many times a
second, and an ES256/RS256 check costs far more than the rest of a small request. An entry is a
token that passed every check; it is served at most ``TOKEN_CACHE_SECONDS`` and never past the
token's ``exp`` (after that the token goes through the full check again, leeway included), and the
cache holds at most ``TOKEN_CACHE_SIZE`` tokens (least recently used dropped first). In OIDC mode
the JWKS is fetched again when older than ``JWKS_MAX_AGE_SECONDS``; so a key the issuer removed
from its JWKS stops being accepted at most ``JWKS_MAX_AGE_SECONDS + TOKEN_CACHE_SECONDS`` (330 s)
after its removal (if the issuer cannot be reached then, the old keys stay in use and the fetch is
retried every ``JWKS_REFRESH_MIN_INTERVAL`` seconds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import httpx
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    InvalidKeyIdError,
    JoseError,
)
from joserfc.jwk import ECKey, KeySet
from joserfc.jwt import JWTClaimsRegistry

from app.domain.errors import Unauthenticated
from app.domain.principal import Principal
from app.settings import Settings

LOCAL_ISSUER = "dockyard-local"
KEY_FILE = "signing-key.json"
JWKS_REFRESH_MIN_INTERVAL = 10.0
JWKS_MAX_AGE_SECONDS = 300.0
MAX_TOKEN_LENGTH = 16 * 1024
TOKEN_CACHE_SECONDS = 30.0
TOKEN_CACHE_SIZE = 4096

log = logging.getLogger(__name__)


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Principal: ...

    def cached(self, token: str) -> Principal | None:
        """The principal of a token verified recently and still valid; None otherwise.

        Never blocks (no I/O): the async request path asks it first and only runs ``verify`` in a
        thread when it answers None.
        """
        ...


class TokenCache:
    """Verified tokens and their principals, bounded in size and in time (see the module doc).

    Keyed by the SHA-256 of the token, so memory stays bounded however long tokens are."""

    def __init__(self, *, size: int = TOKEN_CACHE_SIZE, seconds: float = TOKEN_CACHE_SECONDS):
        self._size = size
        self._seconds = seconds
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()

    def get(self, token: str) -> Principal | None:
        key = hashlib.sha256(token.encode()).digest()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if time.time() >= entry[0]:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, token: str, principal: Principal, *, exp: float) -> None:
        key = hashlib.sha256(token.encode()).digest()
        until = min(exp, time.time() + self._seconds)
        with self._lock:
            self._entries[key] = (until, principal)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


def roles_from_claims(claims: dict[str, Any], claim: str) -> frozenset[str]:
    """Roles under a dotted claim path; Keycloak's ``realm_access.roles`` is a fallback."""
    for path in (claim, "realm_access.roles"):
        value: Any = claims
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, list):
            return frozenset(str(role) for role in value)
        if isinstance(value, str):
            return frozenset(value.split())
    return frozenset()


class _JwtVerifier:
    """Signature, algorithm and claims checks common to both modes."""

    def __init__(self, *, settings: Settings, issuer: str) -> None:
        self._settings = settings
        self._algorithms = list(settings.auth_algorithms)
        self._registry = JWTClaimsRegistry(
            leeway=settings.auth_leeway_seconds,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": settings.auth_audience},
            sub={"essential": True},
            exp={"essential": True},
        )
        self._cache = TokenCache()

    unknown_key_hint = "the token was signed with a key this server does not know"

    def _keys(self, *, refresh: bool) -> KeySet:
        raise NotImplementedError

    def cached(self, token: str) -> Principal | None:
        return self._cache.get(token)

    def verify(self, token: str) -> Principal:
        principal = self._cache.get(token)
        if principal is not None:
            return principal
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("invalid_token: the bearer token is empty or too long")
        try:
            try:
                decoded = jwt.decode(token, self._keys(refresh=False), algorithms=self._algorithms)
            except InvalidKeyIdError:
                decoded = jwt.decode(token, self._keys(refresh=True), algorithms=self._algorithms)
            self._registry.validate(decoded.claims)
        except Unauthenticated:
            raise
        except InvalidKeyIdError as e:
            raise Unauthenticated(f"invalid_token: {_reason(e)}: {self.unknown_key_hint}") from e
        except Exception as e:
            # Whatever the token holds (a non-Latin-1 or CR/LF `kid`, garbage), the answer is one
            # of a few fixed texts: nothing the client sent is echoed into headers or bodies.
            raise Unauthenticated(f"invalid_token: {_reason(e)}") from e
        subject = decoded.claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("invalid_token: the sub claim must be a non-empty string")
        principal = Principal(
            subject=subject,
            roles=roles_from_claims(decoded.claims, self._settings.auth_roles_claim),
            valid_until=float(decoded.claims["exp"]) + self._settings.auth_leeway_seconds,
        )
        exp = decoded.claims["exp"]
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            self._cache.put(token, principal, exp=float(exp))
        return principal


class LocalKeys(_JwtVerifier):
    """The data directory's signing key: verifies tokens and mints new ones."""

    unknown_key_hint = (
        "the token was signed with another data directory's key; mint it with `dockyard token` "
        "using the server's DOCKYARD_DATA_DIR (default ./.dockyard in the directory where "
        "`dockyard serve` runs)"
    )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings=settings, issuer=LOCAL_ISSUER)
        self._key = _load_or_create_key(settings.data_dir / KEY_FILE)
        self._keyset = KeySet([self._key])

    def _keys(self, *, refresh: bool) -> KeySet:
        return self._keyset

    def mint(self, *, subject: str, roles: list[str], ttl_seconds: int) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": LOCAL_ISSUER,
            "aud": self._settings.auth_audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
        }
        top, *rest = self._settings.auth_roles_claim.split(".")
        claims[top] = _nest(rest, roles)
        return jwt.encode({"alg": "ES256", "kid": self._key.kid}, claims, self._key)


def _reason(error: Exception) -> str:
    """A fixed, safe description of why a token was refused."""
    if isinstance(error, ExpiredTokenError):
        return "the bearer token has expired"
    if isinstance(error, ClaimError):
        return "the bearer token's claims are not accepted here (iss, aud, sub, exp, nbf)"
    if isinstance(error, BadSignatureError):
        return "the bearer token's signature is invalid"
    if isinstance(error, InvalidKeyIdError):
        return "the bearer token is signed by an unknown key"
    return "the bearer token is malformed"


def _nest(path: list[str], value: Any) -> Any:
    return {path[0]: _nest(path[1:], value)} if path else value


def _load_or_create_key(path: Path) -> ECKey:
    if path.exists():
        return ECKey.import_key(json.loads(path.read_text(encoding="utf-8")))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ECKey.generate_key("P-256", auto_kid=True)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(key.as_dict(private=True), handle)
    try:
        # link() fails if another process created the key first; then we use theirs.
        os.link(temporary, path)
    except FileExistsError:
        return ECKey.import_key(json.loads(path.read_text(encoding="utf-8")))
    finally:
        temporary.unlink(missing_ok=True)
    log.info("generated a new local signing key in %s", path)
    return key


class OidcVerifier(_JwtVerifier):
    """Verifies tokens of an OIDC issuer with keys from its JWKS, cached."""

    unknown_key_hint = (
        "the token's kid is not in the issuer's JWKS; get a fresh token from DOCKYARD_AUTH_ISSUER"
    )

    def __init__(self, settings: Settings, *, http: httpx.Client | None = None) -> None:
        assert settings.auth_issuer is not None
        issuer = settings.auth_issuer
        super().__init__(settings=settings, issuer=issuer)
        self._issuer = issuer.rstrip("/")
        self._http = http or httpx.Client(timeout=10.0)
        self._lock = threading.Lock()
        self._keyset: KeySet | None = None
        self._fetched_at = 0.0

    def _fetch(self) -> KeySet:
        try:
            discovery = self._http.get(f"{self._issuer}/.well-known/openid-configuration")
            discovery.raise_for_status()
            jwks_uri = discovery.json()["jwks_uri"]
            response = self._http.get(jwks_uri)
            response.raise_for_status()
            return KeySet.import_key_set(response.json())
        except (httpx.HTTPError, KeyError, ValueError, TypeError, JoseError) as e:
            log.warning("cannot load the keys of issuer %s: %s", self._issuer, e)
            raise Unauthenticated("invalid_token: cannot load the issuer's keys") from e

    def _keys(self, *, refresh: bool) -> KeySet:
        with self._lock:
            age = time.monotonic() - self._fetched_at
            if self._keyset is None:
                self._keyset = self._fetch()
                self._fetched_at = time.monotonic()
            elif (refresh and age > JWKS_REFRESH_MIN_INTERVAL) or age > JWKS_MAX_AGE_SECONDS:
                try:
                    self._keyset = self._fetch()
                except Unauthenticated:
                    if refresh:
                        raise
                    # Issuer unreachable: keep the keys we have, try again a little later.
                    log.warning("cannot refresh the issuer's JWKS; keeping the cached keys")
                    self._fetched_at = _due_again_soon()
                else:
                    self._fetched_at = time.monotonic()
            return self._keyset


def _due_again_soon() -> float:
    """A fetch time that makes the next JWKS refresh due ``JWKS_REFRESH_MIN_INTERVAL`` from now."""
    return time.monotonic() - JWKS_MAX_AGE_SECONDS + JWKS_REFRESH_MIN_INTERVAL


def make_verifier(settings: Settings) -> TokenVerifier:
    return OidcVerifier(settings) if settings.auth_issuer else LocalKeys(settings)


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer …`` header value."""
    if not header:
        raise Unauthenticated("invalid_token: missing Authorization: Bearer <token> header")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("invalid_token: expected Authorization: Bearer <token>")
    return token.strip()
