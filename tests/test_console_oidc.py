"""The console's OIDC sign-in (authorization code + PKCE, by authlib) against an issuer over real
HTTP, and the API accepting the resulting session cookie in place of a bearer header."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app.console.oidc import CALLBACK_PATH, FLOW_COOKIE, LOGIN_PATH, LOGOUT_PATH
from app.deps import SESSION_COOKIE
from app.server import create_app
from app.settings import Settings
from tests.support.oidc_issuer import Issuer

VIEWER = {"query": "{ viewer { subject roles } }"}


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    issuer = Issuer(roles=["ADMIN"]).start()
    yield issuer
    issuer.stop()


@pytest.fixture
def oidc_client(tmp_path: Path, database_url: str, issuer: Issuer) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        runtime="none",
        auth_issuer=issuer.url,
        auth_client_id=issuer.client_id,
    )
    # https: the session cookie is Secure, so a client only sends it back over https.
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        yield client


def authorize(client: TestClient) -> tuple[str, dict[str, str]]:
    """Start the sign-in; the issuer's redirect back (callback URL) and the authorize query."""
    start = client.get(LOGIN_PATH, follow_redirects=False)
    assert start.status_code == 303
    location = start.headers["location"]
    back = httpx.get(location, follow_redirects=False)
    assert back.status_code == 302, back.text
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    return back.headers["location"], query


def test_sign_in_with_pkce_sets_a_session_cookie_the_api_accepts(
    oidc_client: TestClient, issuer: Issuer
) -> None:
    assert f'data-login="{LOGIN_PATH}"' in oidc_client.get("/console/").text
    callback, query = authorize(oidc_client)
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["redirect_uri"] == f"https://testserver{CALLBACK_PATH}"
    assert "openid" in query["scope"].split()

    done = oidc_client.get(
        urlsplit(callback)._replace(scheme="", netloc="").geturl(), follow_redirects=False
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/console/"
    session_cookie = next(
        c for c in done.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}=")
    )
    attributes = session_cookie.lower()
    assert "httponly" in attributes and "secure" in attributes and "samesite=strict" in attributes
    # The verifier went to the token endpoint (and the issuer checked it against the challenge).
    assert len(issuer.token_requests[-1]["code_verifier"]) >= 43

    # The public API, with the cookie and no Authorization header: GraphQL and REST.
    viewer = oidc_client.post("/graphql", json=VIEWER).json()
    assert viewer["data"]["viewer"] == {"subject": "oidc-alice", "roles": ["ADMIN"]}
    assert oidc_client.get("/v1/containers").status_code == 200
    # (the test client's cookie jar sends Secure cookies over https only, not wss: by hand)
    cookie = f"{SESSION_COOKIE}={oidc_client.cookies[SESSION_COOKIE]}"
    with oidc_client.websocket_connect(
        "/graphql", subprotocols=["graphql-transport-ws"], headers={"Cookie": cookie}
    ) as socket:
        socket.send_json({"type": "connection_init", "payload": {}})
        assert socket.receive_json()["type"] == "connection_ack"

    # Another origin of the same site (a container's page) gets nothing from the cookie.
    foreign = {"Origin": "https://abc.apps.testserver"}
    refused = oidc_client.post("/graphql", json=VIEWER, headers=foreign).json()
    assert refused["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert oidc_client.get("/v1/containers", headers=foreign).status_code == 401
    own = oidc_client.post("/graphql", json=VIEWER, headers={"Origin": "https://testserver"})
    assert own.json()["data"]["viewer"]["subject"] == "oidc-alice"
    with (
        pytest.raises(WebSocketDisconnect),
        oidc_client.websocket_connect(
            "/graphql",
            subprotocols=["graphql-transport-ws"],
            headers={"Cookie": cookie, **foreign},
        ) as socket,
    ):
        socket.send_json({"type": "connection_init", "payload": {}})
        socket.receive_json()

    # Signing out drops the cookie: the API no longer knows the caller.
    assert oidc_client.post(LOGOUT_PATH, follow_redirects=False).status_code == 303
    after = oidc_client.post("/graphql", json=VIEWER).json()
    assert after["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_a_callback_without_the_login_state_is_refused(
    oidc_client: TestClient, issuer: Issuer
) -> None:
    callback, _ = authorize(oidc_client)
    path = urlsplit(callback)._replace(scheme="", netloc="").geturl()
    oidc_client.cookies.delete(FLOW_COOKIE, path="/console/auth")
    refused = oidc_client.get(path, follow_redirects=False)
    assert refused.status_code == 400
    assert "did not start here" in refused.text
    assert issuer.token_requests == []  # the code was never redeemed
    assert SESSION_COOKIE not in oidc_client.cookies


def test_a_forged_state_is_refused(oidc_client: TestClient) -> None:
    callback, _ = authorize(oidc_client)
    parts = urlsplit(callback)
    query = parse_qs(parts.query)
    forged = f"{CALLBACK_PATH}?code={query['code'][0]}&state=someone-elses"
    assert oidc_client.get(forged, follow_redirects=False).status_code == 400


def test_a_wrong_code_verifier_is_refused_by_the_issuer(
    oidc_client: TestClient, issuer: Issuer
) -> None:
    callback, _ = authorize(oidc_client)
    state_cookie = oidc_client.cookies.get(FLOW_COOKIE)
    assert state_cookie is not None
    state, _, _verifier = state_cookie.partition(".")
    oidc_client.cookies.clear()
    path = urlsplit(callback)._replace(scheme="", netloc="").geturl()
    wrong = f"{FLOW_COOKIE}={state}.{'x' * 64}"  # the right state, another verifier
    refused = oidc_client.get(path, headers={"Cookie": wrong}, follow_redirects=False)
    assert refused.status_code == 400
    assert "invalid_grant" in refused.text
    assert SESSION_COOKIE not in oidc_client.cookies


def test_an_issuer_error_is_shown(oidc_client: TestClient) -> None:
    response = oidc_client.get(f"{CALLBACK_PATH}?error=access_denied&error_description=no")
    assert response.status_code == 400
    assert "access_denied" in response.text


def test_without_a_client_id_there_is_no_oidc_sign_in(client: TestClient) -> None:
    assert client.get(LOGIN_PATH, follow_redirects=False).status_code == 404
    assert "data-login" not in client.get("/console/").text
