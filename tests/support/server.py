"""A `dockyard serve` subprocess for end-to-end tests, shared by several test modules."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A `dockyard serve` subprocess."""

    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 90  # a loaded shared CI machine imports slowly
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("server did not start: " + self.log_path.read_text()[-3000:])

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.stop_left_data_plane()

    @property
    def caddy_pid_file(self) -> Path:
        from app.server import serve_address
        from app.settings import Settings

        data_dir = Path(self.env["DOCKYARD_DATA_DIR"])
        return serve_address(Settings(data_dir=data_dir), "127.0.0.1", self.port).directory / (
            "caddy.pid"
        )

    def caddy_pid(self) -> int | None:
        """The proxy's pid: Caddy's, or HAProxy's master with DOCKYARD_PROXY_ENGINE=haproxy."""
        for pid_file in (self.caddy_pid_file, self.caddy_pid_file.with_name("haproxy.pid")):
            try:
                return int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
        return None

    def stop_left_data_plane(self) -> None:
        """The Caddy and the route resolver this server started survive a SIGKILL of the server
        by design; a test that ends with the server killed stops them here (each only while its
        pid file still names a process of this server's run directory)."""
        directory = self.caddy_pid_file.parent
        for name in ("caddy.pid", "dnsd.pid", "haproxy.pid"):
            try:
                pid = int((directory / name).read_text().strip())
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if str(directory).encode() not in command:
                continue  # that pid is no longer ours
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                except OSError:
                    break
                if stat.rpartition(")")[2].split()[:1] == ["Z"]:
                    break
                time.sleep(0.05)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.url}{path}", headers=self.headers, timeout=30, **kwargs
        )

    def wait_for(
        self, container_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 90
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = self.api("GET", f"/v1/containers/{container_id}").json()
            if predicate(body):
                return body
            time.sleep(0.2)
        raise AssertionError(f"timed out; last state {body}\n{self.log_path.read_text()[-3000:]}")

    def through_ingress(self, container: dict[str, Any]) -> httpx.Response:
        return httpx.get(f"{self.url}/", headers={"Host": container["urls"][0]}, timeout=10)
