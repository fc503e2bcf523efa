"""The client commands against a real `dockyard serve` subprocess deploying on real Podman."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from app.client.cli import client
from tests.support.podman import CRASH, HTTPD_V1, HTTPD_V2, LOGGER, PAGE_V1, PAGE_V2, PodmanService
from tests.support.server import Server
from tests.support.serving import mint, serve_env, serving

pytestmark = pytest.mark.podman
PHASES = ["accepted", "scheduled", "imageReady", "started", "ready", "serving"]


@pytest.fixture
def server(tmp_path: Path, database_url: str, podman_service: PodmanService) -> Iterator[Server]:
    (tmp_path / "data").mkdir()
    env = serve_env(tmp_path / "data", database_url, podman_service)
    with serving(env, tmp_path / "server.log") as server:
        yield server


@pytest.fixture
def token(tmp_path: Path, server: Server) -> str:
    return mint(tmp_path / "data")


@pytest.fixture
def cli_env(
    tmp_path: Path, server: Server, token: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The client's environment: the server and token from DOCKYARD_URL/DOCKYARD_TOKEN, and a
    private config directory."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("DOCKYARD_URL", server.url)
    monkeypatch.setenv("DOCKYARD_TOKEN", token)
    server.headers = {"Authorization": f"Bearer {token}"}
    return {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "DOCKYARD_URL": server.url,
        "DOCKYARD_TOKEN": token,
    }


def run(*args: str) -> Result:
    return CliRunner().invoke(client, list(args), catch_exceptions=False)


def page_at(server: Server, url: str) -> httpx.Response:
    host = url.removeprefix("http://").rstrip("/")
    return httpx.get(f"{server.url}/", headers={"Host": host}, timeout=10)


def page_becomes(server: Server, url: str, expected: str, timeout: float = 10) -> str:
    """The page at ``url`` once it is ``expected`` (or the last one read). `deploy` returns the
    moment the status says deployed, and the data plane is reprogrammed a moment after the
    status changed (batched Caddy loads: a known gap of issue 10), so a page that still shows
    the previous revision is read again for a while."""
    deadline = time.monotonic() + timeout
    page = page_at(server, url).text
    while page != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        page = page_at(server, url).text
    return page


def test_login_stores_url_and_token_0600_and_refuses_a_bad_token(
    tmp_path: Path, server: Server, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("DOCKYARD_URL", raising=False)
    monkeypatch.delenv("DOCKYARD_TOKEN", raising=False)
    refused = run("login", "--url", server.url, "--token", "not-a-token")
    assert refused.exit_code == 1 and "login refused" in refused.stderr
    path = tmp_path / "config" / "dockyard" / "config.json"
    assert not path.exists()
    done = run("login", "--url", server.url, "--token", token)
    assert done.exit_code == 0, done.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": server.url, "token": token}
    listed = run("ls", "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []
    # the environment wins over the file
    monkeypatch.setenv("DOCKYARD_TOKEN", "expired")
    denied = run("ls")
    assert denied.exit_code == 1 and "DOCKYARD_TOKEN" in denied.stderr


def test_deploy_update_rollback_redeploy_rm(
    tmp_path: Path, server: Server, cli_env: dict[str, str]
) -> None:
    spec = tmp_path / "web.yaml"
    spec.write_text(f"name: web\nimage: {HTTPD_V1}\nport: 8080\nram: 64Mi\nenv:\n  A: '1'\n")
    created = run("deploy", str(spec))
    assert created.exit_code == 0, created.output
    assert "created web" in created.stderr
    # plain progress lines when not a terminal, then the URL
    assert "revision 1: deploying" in created.stdout
    last = created.stdout.strip().splitlines()[-1]
    assert last.startswith("deployed web at http://") and last.endswith(
        f".localhost:{server.port}/"
    )
    url = last.split(" at ")[1]
    assert page_becomes(server, url, PAGE_V1) == PAGE_V1
    # each deploy phase as it was reached, with how long it took to get there, then a summary
    lines = created.stdout.strip().splitlines()
    phase_lines = [line for line in lines if line.startswith("revision 1: phase ")]
    assert [line.split()[3] for line in phase_lines] == PHASES, lines
    assert phase_lines[0] == "revision 1: phase accepted"
    assert all(
        re.fullmatch(r"\+[0-9.]+ m?s", " ".join(line.split()[4:6])) for line in phase_lines[1:]
    )
    assert re.fullmatch(
        r"revision 1: accepted -> serving in [0-9.]+ m?s "
        r"\(accepted [0-9.]+ m?s, .*ready [0-9.]+ m?s\)",
        lines[-2],
    ), lines

    updated = run("deploy", str(spec), "--image", HTTPD_V2, "--json")  # flags override the file
    assert updated.exit_code == 0, updated.output
    body = json.loads(updated.stdout)
    assert body["revision"] == 2 and body["status"] == "deployed" and body["image"] == HTTPD_V2
    assert body["env"] == {"A": "1"}
    # --json: the final event, the container with its newest revision's phases as data
    assert [p["phase"] for p in body["phases"]] == PHASES
    revision_2 = json.loads(run("revisions", "web", "--json").stdout)[0]
    assert revision_2["revisionNumber"] == 2 and revision_2["phases"] == body["phases"]
    assert page_becomes(server, url, PAGE_V2) == PAGE_V2

    listed = json.loads(run("ls", "--json").stdout)
    assert [c["name"] for c in listed] == ["web"]
    table = run("ls").stdout
    assert "web" in table and "deployed" in table and url in table

    shown = run("status", "web")
    assert shown.exit_code == 0 and "deployed" in shown.stdout and HTTPD_V2 in shown.stdout

    rolled = run("rollback", "web", "1")
    assert rolled.exit_code == 0, rolled.output
    assert page_becomes(server, url, PAGE_V1) == PAGE_V1
    redeployed = run("redeploy", body["id"], "--json")
    assert redeployed.exit_code == 0, redeployed.output
    assert json.loads(redeployed.stdout)["revision"] == 4

    revisions = run("revisions", "web", "--json")
    assert [r["revisionNumber"] for r in json.loads(revisions.stdout)] == [4, 3, 2, 1]
    assert run("revisions", "web").stdout.count(HTTPD_V1) == 3

    removed = run("rm", "web")
    assert removed.exit_code == 0 and "removed web" in removed.stdout
    missing = run("status", "web")
    assert missing.exit_code == 1 and "no container named 'web'" in missing.stderr


def test_a_failed_deploy_exits_non_zero_with_the_reason(cli_env: dict[str, str]) -> None:
    result = run("deploy", "--name", "crash", "--image", CRASH, "--port", "8080")
    assert result.exit_code == 1, result.output
    assert "crash revision 1 failed:" in result.stderr
    assert "exited with code 3" in result.stderr
    failed = [line for line in result.stdout.splitlines() if "phase failed" in line]
    assert len(failed) == 1 and "started: " in failed[0], result.stdout
    assert "revision 1: accepted -> failed in " in result.stdout
    bad = run("deploy", "--name", "Bad_Name", "--image", "nope")
    assert bad.exit_code == 1 and "name:" in bad.stderr and "image:" in bad.stderr


def test_the_dockyard_command_dispatches_client_commands(cli_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "ls", "--json"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    helped = subprocess.run(
        [sys.executable, "-m", "app.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    for command in ("serve", "token", "deploy", "logs", "rollback", "redeploy", "login"):
        assert command in helped.stdout


def _read_lines(process: subprocess.Popen[str], into: list[dict[str, Any]]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        into.append(json.loads(line))


def _wait_count(events: list[dict[str, Any]], count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(events) >= count, events[-5:]


def test_logs_follow_resumes_after_the_server_drops_the_connection(
    server: Server, cli_env: dict[str, str]
) -> None:
    deployed = run("deploy", "--name", "logger", "--image", LOGGER, "--port", "8080", "--no-wait")
    assert deployed.exit_code == 0, deployed.output
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "logs", "-f", "logger", "--json", "--tail", "0"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    events: list[dict[str, Any]] = []
    reader = threading.Thread(target=_read_lines, args=(process, events), daemon=True)
    reader.start()
    try:
        _wait_count(events, 6)
        server.kill()  # the connection drops; the client retries until the server is back
        time.sleep(2)
        server.start()
        before = len(events)
        _wait_count(events, before + 20)
    finally:
        process.terminate()
        process.wait(timeout=10)
        reader.join(timeout=10)
        assert process.stdout is not None
        process.stdout.close()
    stdout = [int(e["line"].split()[1]) for e in events if e["stream"] == "stdout"]
    assert stdout == list(range(stdout[0], stdout[0] + len(stdout))), stdout  # no gap, no repeat
    assert all(e["revision"] == 1 for e in events)
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids)


SPINNER_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"  # rich's default "dots" spinner


def test_deploy_in_a_terminal_shows_a_spinner(cli_env: dict[str, str]) -> None:
    import pty

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "app.cli", "deploy", "--name", "tty", "--image", HTTPD_V1),
            *("--port", "8080", "--timeout", "60"),
        ],
        env={**cli_env, "TERM": "xterm-256color", "COLUMNS": "160"},
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the command exited and closed the terminal
                break
            if not chunk:
                break
            output += chunk
        process.wait(timeout=60)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()
    text = output.decode("utf-8", "replace")
    assert process.returncode == 0, text
    assert any(frame in text for frame in SPINNER_FRAMES), text
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # rich colours "deployed"
    assert "deployed tty at http://" in plain
