"""The web console and the explorers in a real browser: Debian's headless Chromium driven by
Playwright, against a `dockyard serve` process whose containers run on Podman, with every
request to anything but loopback blocked.

One browser for the module; screenshots go to ``test-artifacts/console/`` (git-ignored, or
``DOCKYARD_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from app.console import DEFAULT_DIST_DIR
from tests.e2e.test_log_streams import serve_env
from tests.support.oidc_issuer import Issuer
from tests.support.podman import CRASH, HTTPD_V1, HTTPD_V2, PodmanService
from tests.support.server import Server, free_port
from tests.support.serving import mint as serving_mint
from tests.support.serving import serving

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = pytest.mark.podman

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = (
    Path(os.environ.get("DOCKYARD_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
    / "console"
)
FIRST_LOAD_BUDGET = 300 * 1024  # bytes on the wire, compressed
# The web container: logs a numbered line every 0.2 s and serves busybox httpd on 8080.
TICKER = (
    "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done & "
    "exec /bin/busybox httpd -f -p 8080 -h /www"
)
LIVE = 60_000  # ms to wait for a live change (a deploy on Podman takes a few seconds)


def loopback(url: str) -> bool:
    return re.match(r"^(https?|wss?)://(127\.0\.0\.1|localhost)(:\d+)?/", url) is not None or (
        url.startswith(("data:", "blob:", "about:"))
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = "chromium not installed (apt-get install chromium)"
        if os.environ.get("DOCKYARD_REQUIRE_PODMAN") == "1":
            pytest.fail(message)
        pytest.skip(message)
    if not (DEFAULT_DIST_DIR / "vendor").is_dir():
        pytest.fail("console assets not built: run scripts/build-console.sh")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def server(tmp_path: Path, database_url: str, podman_service: PodmanService) -> Iterator[Server]:
    with serving(serve_env(tmp_path, database_url, podman_service), tmp_path / "server.log") as s:
        yield s


def mint(server: Server, subject: str, *roles: str) -> str:
    return serving_mint(Path(server.env["DOCKYARD_DATA_DIR"]), subject, *roles)


class Offline:
    """A browser context that lets only loopback through, and remembers what it refused."""

    def __init__(self, browser: Any, **options: Any) -> None:
        self.blocked: list[str] = []
        self.context = browser.new_context(**options)
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.console: list[str] = []
        self.page.on("console", lambda message: self.console.append(message.text))
        self.page.on("websocket", lambda ws: self.console.append(f"websocket {ws.url}"))

    def _route(self, route: Any) -> None:
        if loopback(route.request.url):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


def sign_in(page: Any, token: str) -> None:
    expect(page.get_by_role("heading", name="Sign in to Dockyard")).to_be_visible()
    # by keyboard: the token field, then Tab to the button and Enter
    page.get_by_label("Access token").fill(token)
    page.get_by_label("Access token").press("Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Containers")).to_be_visible()


def first_load_bytes(browser: Any, url: str) -> int:
    """Bytes transferred (compressed, headers included) by a cold load of the console."""
    offline = Offline(browser)
    cdp = offline.context.new_cdp_session(offline.page)
    cdp.send("Network.enable")
    sizes: dict[str, float] = {}
    cdp.on(
        "Network.loadingFinished",
        lambda event: sizes.__setitem__(event["requestId"], event["encodedDataLength"]),
    )
    offline.page.goto(url)
    expect(offline.page.get_by_role("heading", name="Sign in to Dockyard")).to_be_visible()
    offline.page.wait_for_load_state("networkidle")
    offline.close()
    return int(sum(sizes.values()))


def container_id_from(page: Any) -> str:
    match = re.search(r"#/containers/([\w-]+)$", page.url)
    assert match, page.url
    return match.group(1)


def test_console_deploys_watches_updates_rolls_back_and_deletes(
    browser: Any, server: Server
) -> None:
    alice = mint(server, "alice")
    size = first_load_bytes(browser, f"{server.url}/console/")
    (ARTIFACTS / "first-load.json").write_text(json.dumps({"bytes": size}))
    assert size < FIRST_LOAD_BUDGET, f"first load transferred {size} bytes"

    tab = Offline(browser, viewport={"width": 1280, "height": 900})
    page = tab.page
    page.goto(f"{server.url}/")  # redirects to /console/
    tab.shot("sign-in")
    sign_in(page, alice)

    # Deploy: a field error from the server appears next to its field.
    page.get_by_role("link", name="Deploy a container").click()
    expect(page.get_by_role("heading", name="Deploy a container")).to_be_visible()
    page.get_by_label("Name").fill("web")
    page.get_by_label("Image").fill("localhost/dockyard-test-httpd")
    page.get_by_label("Port").fill("8080")
    page.get_by_role("button", name="Deploy", exact=True).click()
    image_error = page.locator('.field-error[data-field="image"]')
    expect(image_error).to_contain_text("tag")
    expect(page.get_by_label("Image")).to_have_attribute("aria-invalid", "true")
    # The GPU model picker offers the catalog of gpuModels, in the order models are added.
    picker = page.get_by_label("GPU model", exact=True)
    expect(picker.locator("option")).not_to_have_count(1)
    picker.select_option(index=1)
    page.get_by_role("button", name="Add", exact=True).click()
    picker.select_option(index=1)
    page.get_by_role("button", name="Add", exact=True).click()
    chips = page.locator(".chips li")
    expect(chips).to_have_count(2)
    for _ in range(2):
        page.locator(".chips li button").first.click()
    expect(chips).to_have_count(0)

    page.get_by_label("Image").fill(HTTPD_V1)
    page.get_by_label("Memory").fill("64Mi")
    page.get_by_label("Command").fill(f"/bin/sh\n-c\n{TICKER}")
    page.get_by_label("Environment").fill("FOO=bar")
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page.get_by_role("heading", name="web")).to_be_visible()
    web_id = container_id_from(page)
    status = page.locator(".status-box .badge")
    # live: no reload happens between deploying and deployed
    expect(status).to_have_attribute("data-status", "deployed", timeout=LIVE)
    expect(page.locator(".status-box a.url")).to_have_count(1)

    # Live logs: follow, search in what was received, pause and resume.
    log = page.get_by_role("log", name="Container output")
    expect(log).to_contain_text("tick 3", timeout=LIVE)
    page.get_by_label("Search").fill("tick 2")
    expect(page.locator(".log-status")).to_contain_text("lines match")
    expect(log.locator(".line").first).to_contain_text("tick 2")
    page.get_by_label("Search").fill("")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator(".log-status")).to_contain_text(re.compile(r"paused, [1-9]\d* new lines"))
    shown_while_paused = log.locator(".line").count()
    page.get_by_role("button", name="Resume").click()
    expect(log.locator(".line")).not_to_have_count(shown_while_paused)
    tab.shot("container")

    # Update: a new revision, deployed live; the diff names what changed.
    page.get_by_role("button", name="Edit").click()
    page.get_by_label("Image").fill(HTTPD_V2)
    page.get_by_label("Environment").fill("FOO=baz")
    page.get_by_role("button", name="Deploy new revision").click()
    expect(page.locator('.revisions tr[data-revision="2"]')).to_be_visible(timeout=LIVE)
    diff = page.get_by_role("table", name="Changes from revision 1 to 2")
    expect(diff).to_contain_text(HTTPD_V2)
    expect(diff).to_contain_text('{"FOO":"baz"}')
    expect(page.locator('.revisions tr[data-revision="2"] .tag')).to_have_text(
        "serving", timeout=LIVE
    )
    expect(status).to_have_attribute("data-status", "deployed")

    # Roll back to revision 1: revision 3 with revision 1's spec.
    page.get_by_role("button", name="Roll back to 1").click()
    expect(page.locator('.revisions tr[data-revision="3"]')).to_contain_text(HTTPD_V1, timeout=LIVE)
    expect(page.get_by_role("table", name="Changes from revision 2 to 3")).to_contain_text(
        '{"FOO":"bar"}'
    )
    expect(page.locator('.revisions tr[data-revision="3"] .tag')).to_have_text(
        "serving", timeout=LIVE
    )
    # the traffic table follows the status live: latest now resolves to the serving revision 3
    expect(page.locator("table.traffic tbody tr").first).to_contain_text("latest (revision 3)")
    tab.shot("container-revisions")

    # Traffic (no new revision): a bad tag is refused beside its target, then a tagged 0 % target.
    page.get_by_role("button", name="Change traffic").click()
    page.get_by_label("Tag", exact=True).first.fill("Bad_Tag")
    page.get_by_role("button", name="Save traffic").click()
    expect(page.locator('[data-field="traffic-0"]')).to_contain_text("traffic[0].tag")
    page.get_by_label("Tag", exact=True).first.fill("")
    page.get_by_role("button", name="Add target").click()
    page.get_by_label("Serve").nth(1).select_option("2")
    page.get_by_label("Tag", exact=True).nth(1).fill("old")
    page.get_by_role("button", name="Save traffic").click()
    traffic = page.locator("table.traffic tbody tr")
    expect(traffic).to_have_count(2)
    expect(traffic.nth(1)).to_contain_text("revision 2")
    expect(traffic.nth(1).locator("a.url")).to_contain_text("old---")
    expect(page.locator('.revisions tr[data-revision="4"]')).to_have_count(0)

    # A failed deploy shows its reason, live.
    page.goto(f"{server.url}/console/#/new")
    page.get_by_label("Name").fill("crash")
    page.get_by_label("Image").fill(CRASH)
    page.get_by_label("Port").fill("8080")
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page.get_by_role("heading", name="crash")).to_be_visible()
    expect(status).to_have_attribute("data-status", "failed", timeout=LIVE)
    expect(page.get_by_test_id("status-reason")).not_to_be_empty()
    tab.shot("failed-deploy")

    # The list: statuses, URL, paging and a filter.
    page.get_by_role("link", name="Containers", exact=True).first.click()
    rows = page.locator("table.containers tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator(f'tr[data-id="{web_id}"] .badge')).to_have_text("deployed")
    expect(page.locator(f'tr[data-id="{web_id}"] a.url')).to_have_count(2)  # + the tag's
    page.get_by_label("Filter").fill("cra")  # the API's name search, before paging
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text("crash")
    page.get_by_label("Filter").fill("")
    expect(rows).to_have_count(2)
    page.get_by_label("Status").select_option("failed")
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text("crash")
    page.get_by_label("Status").select_option("")
    expect(rows).to_have_count(2)
    page.get_by_label("Rows").select_option("5")
    expect(page.locator(".pager")).to_contain_text("Page 1 of 1 · 2 containers")
    tab.shot("containers")

    # On a phone: the list still shows every container, as cards.
    phone = Offline(browser, viewport={"width": 375, "height": 740}, is_mobile=True)
    phone.page.goto(f"{server.url}/console/")
    sign_in(phone.page, alice)
    expect(phone.page.locator("table.containers tbody tr")).to_have_count(2)
    phone.shot("containers-phone")
    width = phone.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways on a phone ({width}px)"
    phone.close()

    # An ADMIN sees everyone's containers, with their owner.
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, mint(server, "root", "ADMIN"))
    expect(page.get_by_label("Every user's containers")).to_be_checked()
    expect(page.locator("table.containers tbody tr")).to_have_count(2)
    expect(page.locator(f'tr[data-id="{web_id}"]')).to_contain_text("alice")

    # Delete, after confirming.
    page.locator(f'tr[data-id="{web_id}"] a').first.click()
    page.get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("alertdialog")).to_have_count(0)
    page.get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Yes, delete web").click()
    expect(page.locator("table.containers tbody tr")).to_have_count(1)
    gone = httpx.get(
        f"{server.url}/v1/containers/{web_id}", headers={"Authorization": f"Bearer {alice}"}
    )
    assert gone.status_code == 404
    crash_row = page.locator("table.containers tbody tr a").first
    crash_row.click()
    page.get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Yes, delete crash").click()
    expect(page.get_by_text("No containers yet.")).to_be_visible()

    assert tab.blocked == [], f"the console asked for other hosts: {tab.blocked}"
    assert tab.errors == [], tab.errors
    tab.close()


def test_graphiql_and_swagger_ui_render_offline(browser: Any, server: Server) -> None:
    tab = Offline(browser, viewport={"width": 1280, "height": 800})
    page = tab.page

    page.goto(f"{server.url}/graphql")
    expect(page.locator(".graphiql-container")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("Execute query"))).to_be_visible()
    # the Headers editor's token reaches the API: run the default query as alice
    page.get_by_text("Headers", exact=True).click()
    headers_editor = page.locator(".graphiql-editor-tool .graphiql-editor").last
    headers_editor.click()
    page.keyboard.type(json.dumps({"Authorization": f"Bearer {mint(server, 'alice')}"}))
    page.get_by_role("button", name=re.compile("Execute query")).click()
    expect(page.locator(".graphiql-response")).to_contain_text('"subject": "alice"')
    tab.shot("graphiql")

    # A subscription over graphql-transport-ws, authenticated by the Headers editor's token.
    server.headers = {"Authorization": f"Bearer {mint(server, 'alice')}"}
    created = server.api(
        "POST", "/v1/containers", json={"name": "sub", "image": HTTPD_V1, "port": "8080"}
    )
    assert created.status_code == 201, created.text
    document = f'subscription {{ containerStatus(id: "{created.json()["id"]}") {{ name status }} }}'
    page.goto(f"{server.url}/graphql#{urlencode({'query': document})}")
    page.reload()  # the same page with another fragment: load it anew
    expect(page.locator(".graphiql-container")).to_contain_text("containerStatus")
    # (GraphiQL persists headers after a debounce: type them again rather than race it)
    page.get_by_text("Headers", exact=True).click()
    page.locator(".graphiql-editor-tool .graphiql-editor").last.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(json.dumps({"Authorization": f"Bearer {mint(server, 'alice')}"}))
    expect(page.locator(".graphiql-editor-tool")).to_contain_text("Bearer")
    page.get_by_role("button", name=re.compile("Execute")).click()
    expect(page.locator(".graphiql-response")).to_contain_text('"name": "sub"', timeout=LIVE)
    expect(page.locator(".graphiql-response")).to_contain_text('"status": "deployed"', timeout=LIVE)
    page.get_by_role("button", name=re.compile("Stop")).click()
    assert server.api("DELETE", f"/v1/containers/{created.json()['id']}").status_code == 204

    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Dockyard")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    expect(page.locator('.opblock-summary-path[data-path="/v1/containers"]').first).to_be_visible()
    tab.shot("swagger-ui")

    assert tab.blocked == [], f"the explorers asked for other hosts: {tab.blocked}"
    assert tab.errors == [], tab.errors
    tab.close()


def test_oidc_sign_in_in_the_browser(browser: Any, tmp_path: Path, database_url: str) -> None:
    issuer = Issuer().start()
    server = Server(
        env={
            **os.environ,
            "DOCKYARD_DATA_DIR": str(tmp_path),
            "DOCKYARD_DATABASE_URL": database_url,
            "DOCKYARD_RUNTIME": "none",
            "DOCKYARD_AUTH_ISSUER": issuer.url,
            "DOCKYARD_AUTH_CLIENT_ID": issuer.client_id,
        },
        port=free_port(),
        log_path=tmp_path / "server.log",
    )
    server.start()
    tab = Offline(browser, viewport={"width": 1280, "height": 800})
    try:
        # a container of the user, so the list also subscribes (over a cookie-authenticated socket)
        created = httpx.post(
            f"{server.url}/v1/containers",
            json={"name": "from-oidc", "image": HTTPD_V1, "port": "8080"},
            headers={"Authorization": f"Bearer {issuer.access_token()}"},
        )
        assert created.status_code == 201, created.text
        page = tab.page
        page.goto(f"{server.url}/console/")
        page.get_by_role("link", name="Sign in with your identity provider").click()
        expect(page.get_by_role("heading", name="Containers")).to_be_visible()
        expect(page.locator("header .who")).to_contain_text("oidc-alice")
        expect(page.locator("table.containers tbody tr")).to_contain_text("from-oidc")
        # page scripts never see the session: the cookie is HttpOnly
        assert "dockyard_session" not in page.evaluate("document.cookie")
        page.reload()  # the cookie keeps the session
        expect(page.locator("header .who")).to_contain_text("oidc-alice")
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Sign in to Dockyard")).to_be_visible()
        page.reload()
        expect(page.get_by_role("heading", name="Sign in to Dockyard")).to_be_visible()
        assert tab.blocked == [] and tab.errors == [], (tab.blocked, tab.errors)
    finally:
        tab.close()
        server.stop()
        issuer.stop()
