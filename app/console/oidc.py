"""Console sign-in through the OIDC issuer: the authorization-code flow with PKCE, by authlib.

Only when ``DOCKYARD_AUTH_ISSUER`` and ``DOCKYARD_AUTH_CLIENT_ID`` are set. ``/console/auth/login``
sends the browser to the issuer with an S256 code challenge and a random ``state``; both the state
and the code verifier wait in a short-lived HttpOnly cookie scoped to ``/console/auth``.
``/console/auth/callback`` checks the state, redeems the code with the verifier (authlib's
``AsyncOAuth2Client``, a public client unless ``DOCKYARD_AUTH_CLIENT_SECRET`` is set), checks the
access token exactly as the API will (``TokenVerifier``) and keeps it in the session cookie: Secure,
HttpOnly (page scripts never see it) and SameSite=Strict (other sites cannot make the browser send
it). The API accepts that cookie in place of an ``Authorization`` header (``app.deps``), so the
console keeps using the public GraphQL API and nothing else. The session ends with the token.

authlib, not hand-written OAuth: it builds the PKCE challenge and the authorization URL and speaks
the token endpoint (client authentication, error responses) as the RFCs say.
"""

from __future__ import annotations

import html
import logging
import secrets
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from app.auth import TokenVerifier
from app.deps import SESSION_COOKIE
from app.domain.errors import Unauthenticated
from app.settings import Settings

LOGIN_PATH = "/console/auth/login"
CALLBACK_PATH = "/console/auth/callback"
LOGOUT_PATH = "/console/auth/logout"
FLOW_COOKIE = "dockyard_login"
FLOW_SECONDS = 600
DEFAULT_SESSION_SECONDS = 3600

log = logging.getLogger(__name__)


def _failure(message: str, status_code: int = 400) -> HTMLResponse:
    body = (
        '<!doctype html><html lang="en"><meta charset="utf-8"><title>Sign-in failed</title>'
        f"<h1>Sign-in failed</h1><p>{html.escape(message)}</p>"
        '<p><a href="/console/">Back to the console</a></p></html>'
    )
    response = HTMLResponse(body, status_code=status_code)
    response.delete_cookie(FLOW_COOKIE, path="/console/auth", secure=True, httponly=True)
    return response


class OidcLogin:
    """The three routes of the flow, and the issuer's discovery document (cached)."""

    def __init__(self, settings: Settings, verifier: TokenVerifier) -> None:
        assert settings.auth_issuer is not None and settings.auth_client_id is not None
        self.issuer = settings.auth_issuer.rstrip("/")
        self.client_id = settings.auth_client_id
        self.client_secret = settings.auth_client_secret
        self.scope = settings.auth_scopes
        self.verifier = verifier
        self._metadata: dict[str, Any] | None = None

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            async with httpx.AsyncClient(timeout=10) as http:
                response = await http.get(f"{self.issuer}/.well-known/openid-configuration")
                response.raise_for_status()
                self._metadata = response.json()
        return self._metadata

    def client(self, request: Request) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self.client_secret,
            token_endpoint_auth_method="client_secret_basic" if self.client_secret else "none",
            scope=self.scope,
            redirect_uri=str(request.base_url).rstrip("/") + CALLBACK_PATH,
            code_challenge_method="S256",
            timeout=10,
        )

    async def login(self, request: Request) -> Response:
        try:
            endpoint = (await self.metadata())["authorization_endpoint"]
        except (httpx.HTTPError, KeyError, ValueError) as e:
            return _failure(f"cannot read the issuer's configuration ({e})", 502)
        code_verifier = generate_token(64)
        async with self.client(request) as client:
            url, state = client.create_authorization_url(endpoint, code_verifier=code_verifier)
        response = RedirectResponse(url, status_code=303)
        response.set_cookie(
            FLOW_COOKIE,
            f"{state}.{code_verifier}",
            max_age=FLOW_SECONDS,
            path="/console/auth",
            secure=True,
            httponly=True,
            samesite="lax",  # sent on the issuer's redirect back, a top-level navigation
        )
        return response

    async def callback(self, request: Request) -> Response:
        params = request.query_params
        if "error" in params:
            detail = params.get("error_description", "")
            return _failure(f"the issuer answered {params['error']}: {detail}")
        state, _, code_verifier = request.cookies.get(FLOW_COOKIE, "").partition(".")
        if not state or not secrets.compare_digest(state, params.get("state", "")):
            return _failure("the sign-in expired or did not start here; please try again")
        code = params.get("code")
        if not code:
            return _failure("the issuer sent no authorization code")
        try:
            endpoint = (await self.metadata())["token_endpoint"]
            async with self.client(request) as client:
                token = await client.fetch_token(endpoint, code=code, code_verifier=code_verifier)
        except (OAuthError, httpx.HTTPError, KeyError, ValueError) as e:
            log.warning("OIDC code exchange failed: %s", e)
            return _failure(f"the issuer refused the code ({e})")
        access_token = token.get("access_token")
        if not isinstance(access_token, str):
            return _failure("the issuer sent no access token")
        try:
            await run_in_threadpool(self.verifier.verify, access_token)
        except Unauthenticated as e:
            return _failure(f"the issuer's access token is not valid here: {e.detail}", 403)
        response = RedirectResponse("/console/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            access_token,
            max_age=int(token.get("expires_in") or DEFAULT_SESSION_SECONDS),
            path="/",
            secure=True,
            httponly=True,
            samesite="strict",
        )
        response.delete_cookie(FLOW_COOKIE, path="/console/auth", secure=True, httponly=True)
        return response


async def logout() -> Response:
    response = RedirectResponse("/console/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


def install(app: FastAPI, settings: Settings, verifier: TokenVerifier) -> str | None:
    """Add the sign-in routes when an issuer and a client id are configured; the login path."""
    # Signing out only drops the cookie: offered whatever the configuration.
    app.add_api_route(LOGOUT_PATH, logout, methods=["POST"], include_in_schema=False)
    if not (settings.auth_issuer and settings.auth_client_id):
        return None
    flow = OidcLogin(settings, verifier)
    app.add_api_route(LOGIN_PATH, flow.login, methods=["GET"], include_in_schema=False)
    app.add_api_route(CALLBACK_PATH, flow.callback, methods=["GET"], include_in_schema=False)
    return LOGIN_PATH
