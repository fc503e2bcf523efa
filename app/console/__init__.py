"""The web console and the API explorers (GraphiQL, Swagger UI), served without any CDN.

A self-hosted platform must work air-gapped, so every browser file comes from Dockyard itself:

- ``static/`` (in git) holds our own pages and the console's code: plain ES modules on Preact +
  htm, resolved by an import map, so there is no bundler and the first load stays small.
- ``dist/vendor/`` (git-ignored) holds the third-party browser builds (Preact, htm, graphql-ws,
  GraphiQL with React, Swagger UI), installed from the npm registry by exact version and lock file
  (``console/package-lock.json``) and copied there by ``scripts/build-console.sh``. Nothing is
  fetched at run time. ``DOCKYARD_CONSOLE_DIR`` points elsewhere (e.g. in a container image).

The console talks only to the public GraphQL API; nothing here is an API of its own. ReDoc is
not served: Swagger UI already renders the same OpenAPI document.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.middleware.gzip import GZipMiddleware
from starlette.staticfiles import StaticFiles

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
DEFAULT_DIST_DIR = HERE / "dist"
CONSOLE_PATH = "/console/"

log = logging.getLogger(__name__)


@cache
def page(name: str) -> str:
    """One of our HTML pages (``index``, ``graphiql``, ``swagger``)."""
    return (STATIC_DIR / f"{name}.html").read_text(encoding="utf-8")


def _html(name: str) -> HTMLResponse:
    # The pages are tiny and name their assets by path: always revalidate them, so a new
    # version of the console is picked up on reload.
    return HTMLResponse(page(name), headers={"Cache-Control": "no-cache"})


def install(app: FastAPI, *, dist_dir: Path | None = None, login_path: str | None = None) -> None:
    """Serve the console at ``/console/`` (``/`` redirects there) and Swagger UI at ``/docs``.

    GraphiQL is served by the GraphQL router at ``/graphql`` (``graphiql_page``).
    """
    vendor = (dist_dir or DEFAULT_DIST_DIR) / "vendor"
    if not vendor.is_dir():
        log.warning(
            "console and explorer assets not found in %s: run scripts/build-console.sh", vendor
        )
    # Compressed on the fly (the vendor bundles are served rarely and cached by browsers); the
    # API's own responses, event streams included, are left alone.
    app.mount(
        "/console/vendor",
        GZipMiddleware(StaticFiles(directory=vendor, check_dir=False), minimum_size=1024),
        name="console-vendor",
    )
    app.mount(
        "/console/static",
        GZipMiddleware(StaticFiles(directory=STATIC_DIR), minimum_size=1024),
        name="console-static",
    )

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(CONSOLE_PATH)

    @app.get("/console", include_in_schema=False)
    async def console_no_slash() -> RedirectResponse:
        return RedirectResponse(CONSOLE_PATH)

    # The console offers the OIDC sign-in when the server has one (app.console.oidc).
    index = page("index")
    if login_path:
        index = index.replace("<body>", f'<body data-login="{login_path}">', 1)

    @app.get(CONSOLE_PATH, include_in_schema=False)
    async def console() -> HTMLResponse:
        return HTMLResponse(index, headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _html("swagger")


def graphiql_page() -> HTMLResponse:
    """The GraphiQL page, on assets served by ``install``."""
    return _html("graphiql")
