"""The console and the explorers are served from Dockyard itself: no page names another host."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.console import DEFAULT_DIST_DIR, STATIC_DIR

PAGES = {"/console/": '<div id="app"', "/graphql": "graphiql.min.js", "/docs": "swagger-ui"}
ABSOLUTE_URL = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", re.IGNORECASE)
built = pytest.mark.skipif(
    not (DEFAULT_DIST_DIR / "vendor").is_dir(), reason="run scripts/build-console.sh first"
)


@pytest.mark.parametrize("path", sorted(PAGES))
def test_pages_load_only_local_assets(client: TestClient, path: str) -> None:
    page = client.get(path, headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert PAGES[path] in page.text
    assert not ABSOLUTE_URL.search(page.text), "a page refers to another host"
    for asset in re.findall(r"""(?:src|href)="(/console/[^"]+)\"""", page.text):
        assert asset.startswith(("/console/static/", "/console/vendor/")), asset


def test_our_scripts_name_no_other_host() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert "unpkg" not in text and "cdn" not in text.lower(), path.name
        assert not re.search(r"https?://(?!127\.0\.0\.1|localhost)[\w.-]", text), path.name


def test_root_redirects_to_the_console(client: TestClient) -> None:
    for path in ("/", "/console"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 307
        assert response.headers["location"] == "/console/"


def test_redoc_is_not_served_from_a_cdn(client: TestClient) -> None:
    assert client.get("/redoc").status_code == 404


@built
def test_vendor_assets_are_served_compressed(client: TestClient) -> None:
    for name in ("graphiql.min.js", "swagger-ui-bundle.js", "preact.module.js"):
        response = client.get(f"/console/vendor/{name}", headers={"Accept-Encoding": "gzip"})
        assert response.status_code == 200, name
        assert response.headers["content-encoding"] == "gzip", name
        assert "javascript" in response.headers["content-type"]
    # graphql-ws's ES module and the chunk it imports by relative path
    client_js = client.get("/console/vendor/graphql-ws/client.js")
    assert client_js.status_code == 200
    chunk = re.search(r"from '\./(common-[\w-]+\.js)'", client_js.text)
    assert chunk is not None
    assert client.get(f"/console/vendor/graphql-ws/{chunk.group(1)}").status_code == 200


def test_missing_assets_are_a_404_not_a_500(client: TestClient) -> None:
    assert client.get("/console/vendor/nothing-here.js").status_code == 404
    assert client.get("/console/static/../__init__.py").status_code == 404
