"""Starts, adopts, programs and restarts HAProxy, the second data plane engine.

- HAProxy runs in master-worker mode (``-W``) with a master CLI socket (``-S``) and a stats socket
  at admin level with ``expose-fd listeners``, so a reload hands the listening sockets to the new
  worker (no refused connection). It runs in its own session: a ``kill -9`` of Dockyard leaves it
  serving. Its pid file, configuration, map and sockets live in the serve run directory.
- Start: a master already running for this run directory (its pid file names a process whose
  command line names the directory) is adopted: its map and server slots are read and changed
  to the current table at run time (reloaded only when it was rendered with other options);
  otherwise one is spawned.
- A routing table change is applied at run time over the stats socket (map entries; server
  slots given an address, re-weighted, put in maintenance and free again once drained), never
  by a reload: a reload closes the old worker's idle keep-alive connections, and a request
  racing that close fails. Only when the configuration's spare backends or a backend's free
  slots run out is a new configuration loaded (a seamless reload), with new spares.
- A watch loop checks every ``check_interval`` that the master is alive and the stats socket
  answers (else it starts HAProxy again, programmed with the current table), frees drained
  slots, and reloads if a run-time change could not be applied.
- Stop: SIGUSR1 to the master (a soft stop: requests in flight finish), SIGTERM after 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.dataplane.haproxy import (
    PLACEHOLDER,
    HAProxyOptions,
    Plan,
    Slot,
    backend_names,
    ip_port,
    map_text,
    plan,
    render,
    slots_for,
    spares_for,
)
from app.dataplane.routes import RoutingTable
from app.dataplane.supervisor import exited, write_atomically

log = logging.getLogger(__name__)

DEFAULT_BINARY = "/usr/sbin/haproxy"


class HAProxyError(RuntimeError):
    """HAProxy could not be found, did not come up, or refused a run-time command."""


def haproxy_binary(configured: str | None = None) -> str | None:
    """The HAProxy executable: the configured one, ``haproxy`` on ``PATH``, then Debian's."""
    if configured:
        return configured
    found = shutil.which("haproxy")
    if found is not None:
        return found
    if os.access(DEFAULT_BINARY, os.X_OK):
        return DEFAULT_BINARY
    return None


async def cli(path: str, command: str, *, seconds: float = 5.0) -> str:
    """One command on an HAProxy CLI socket (stats or master); its whole answer."""

    async def exchange() -> str:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            return (await reader.read()).decode(errors="replace")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        return await asyncio.wait_for(exchange(), seconds)
    except (OSError, TimeoutError) as e:
        raise HAProxyError(f"{command!r} on {path}: {e!r}") from e


def _names_directory(pid: int, directory: Path) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"haproxy" in command and str(directory).encode() in command and not exited(pid)


@dataclass
class _Server:
    """One server slot of a backend, as HAProxy holds it."""

    address: str | None
    weight: int
    state: Literal["ready", "draining", "free"]
    """``draining``: in maintenance, its requests finishing; ``free`` once it holds no
    connection (its address may then be changed)."""


BATCH_BYTES = 8000
"""Commands per CLI line (HAProxy reads a line into one 16 KiB buffer)."""
_OK = re.compile(r"(IP changed|no need to change|port changed)")
"""The answers of ``set server … addr``; the other commands sent answer nothing."""


class _Reload(Exception):
    """A change needs a new configuration (no spare backend or server slot left)."""


class HAProxySupervisor:
    """One HAProxy per Dockyard server, programmed with that server's routing table."""

    def __init__(
        self,
        *,
        options: HAProxyOptions,
        directory: Path,
        binary: str | None = None,
        direct: Callable[[str], bool] | None = None,
        check_interval: float = 1.0,
        start_timeout: float = 15.0,
    ) -> None:
        self.options = options
        self.directory = directory
        self.binary = binary
        self.direct = direct
        """Which single addresses a host may reach without a backend (the activator's)."""
        self.check_interval = check_interval
        self.start_timeout = start_timeout
        self.adopted = False
        self.restarts = 0
        self.reloads = 0
        """Configuration reloads since start (spawns excluded): a route change makes none while
        spare backends last."""
        self._table: RoutingTable = ()
        self._programmed: RoutingTable | None = None
        """The table HAProxy holds; None: unknown (program it again)."""
        self._map: dict[str, str] = {}
        self._assigned: dict[str, str] = {}
        """host -> its backend."""
        self._backends: dict[str, dict[str, _Server]] = {}
        """backend -> its server slots by name."""
        self._free: list[str] = []
        self._versions = itertools.count(1)
        self._lock = asyncio.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None

    # -- files ----------------------------------------------------------------------------------

    @property
    def pid_file(self) -> Path:
        return self.directory / "haproxy.pid"

    @property
    def config_file(self) -> Path:
        return self.directory / "haproxy.cfg"

    @property
    def table(self) -> RoutingTable:
        return self._table

    def _pid(self) -> int | None:
        """The master's pid, when it is a live HAProxy of this run directory."""
        if self._process is not None and self._process.poll() is None:
            return self._process.pid
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _names_directory(pid, self.directory) else None

    async def _stats(self, command: str) -> str:
        return await cli(self.options.stats_socket, command)

    async def _answers(self) -> bool:
        try:
            return "Name: HAProxy" in await self._stats("show info")
        except HAProxyError:
            return False

    # -- the protocol ---------------------------------------------------------------------------

    async def start(self, table: RoutingTable) -> None:
        self._table = table
        async with self._lock:
            pid = self._pid()
            if pid is not None and await self._answers():
                self.adopted = True
                log.info("adopting the HAProxy already serving (master pid %d)", pid)
                adopted = False
                try:
                    adopted = await self._adopt_locked()
                except HAProxyError as e:
                    log.warning("could not read the adopted HAProxy's routes (%s)", e)
                if not adopted:
                    await self._load_locked(spawn=False)
            else:
                if pid is not None:  # ours (its command line names our run directory), stuck
                    await self._kill(pid)
                await self._load_locked(spawn=True)
        self._watch = asyncio.create_task(self._watch_loop(), name="haproxy-watch")

    async def apply(self, table: RoutingTable) -> bool:
        """Program ``table`` at run time (a reload only when spare backends ran out); True when
        it differs from the last one."""
        async with self._lock:
            changed = table != self._table
            self._table = table
            if self._programmed == table:
                return changed
            try:
                await self._program_locked(table)
            except HAProxyError as e:
                log.warning("run-time change refused (%s); reloading HAProxy", e)
                self._programmed = None
                await self._load_locked(spawn=False)
            return changed

    async def served(self, within: float = 10.0) -> bool:
        """Wait until HAProxy routes by the last table handed to ``apply``."""
        deadline = time.monotonic() + within
        while self._programmed != self._table or self._lock.locked():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def converged(self, within: float = 10.0) -> bool:
        """Every request is routed by the last table: run-time changes apply at once."""
        return await self.served(within)

    async def upstreams(self) -> dict[str, int]:
        """Requests in flight per server address (``scur`` of ``show stat``)."""
        names = {
            (backend, slot): server.address
            for backend, servers in self._backends.items()
            for slot, server in servers.items()
            if server.state != "free" and server.address is not None
        }
        text = await self._stats("show stat -1 4 -1")
        counts: dict[str, int] = {}
        rows = csv.DictReader(io.StringIO(text.removeprefix("# ")))
        for row in rows:
            backend, server = row.get("pxname") or "", row.get("svname") or ""
            if backend in ("api", "direct") or not server:
                continue
            address = names.get((backend, server))
            if address is None:
                continue
            with contextlib.suppress(ValueError):
                counts[address] = counts.get(address, 0) + int(row.get("scur") or 0)
        return counts

    async def stop(self) -> None:
        """Stop watching and stop HAProxy gracefully (ours or adopted)."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        pid = self._pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)  # soft stop: requests in flight finish
            if not await self._gone(pid, 10):
                await self._kill(pid)
        if self._process is not None:
            await asyncio.to_thread(self._process.wait, 5)
            self._process = None

    # -- run-time changes -----------------------------------------------------------------------

    def _plan(self, table: RoutingTable) -> Plan:
        return plan(table, direct=self.direct)

    async def _run(self, commands: list[str]) -> None:
        """Send ``commands`` in order, as few connections as HAProxy's line buffer allows
        (``;``-separated); any answer but the expected ones is an error."""
        batch: list[str] = []
        size = 0
        for command in commands:
            if batch and size + len(command) + 1 > BATCH_BYTES:
                await self._send(batch)
                batch, size = [], 0
            batch.append(command)
            size += len(command) + 1
        if batch:
            await self._send(batch)

    async def _send(self, commands: list[str]) -> None:
        answer = await self._stats(";".join(commands))
        unexpected = [line for line in answer.splitlines() if line.strip() and not _OK.match(line)]
        if unexpected:
            raise HAProxyError(f"{commands[0]!r} (of {len(commands)}): {unexpected[0][:200]}")

    async def _program_locked(self, table: RoutingTable) -> None:
        try:
            await self._change_locked(table)
        except _Reload as e:
            log.info("%s; reloading HAProxy with a new configuration", e)
            self._programmed = None
            await self._load_locked(spawn=False)

    async def _change_locked(self, table: RoutingTable) -> None:
        wanted = self._plan(table)
        new_hosts = [host for host in wanted.pools if host not in self._assigned]
        if len(new_hosts) > len(self._free):
            raise _Reload("HAProxy's spare backends ran out")
        for host in new_hosts:
            self._assigned[host] = self._free.pop(0)
        commands: list[str] = []
        # 1. the servers of every pooled host, before any map entry points at them
        for host, weights in wanted.pools.items():
            backend = self._assigned[host]
            for address, weight in weights.items():
                self._serve(backend, address, weight, commands)
        # 2. the map
        hosts = {
            host: self._assigned[host] if host in wanted.pools else value
            for host, value in wanted.hosts.items()
        }
        for host, value in hosts.items():
            if host not in self._map:
                commands.append(f"add map {self.options.map_file} {host} {value}")
            elif self._map[host] != value:
                commands.append(f"set map {self.options.map_file} {host} {value}")
            self._map[host] = value
        for host in [h for h in self._map if h not in hosts]:
            commands.append(f"del map {self.options.map_file} {host}")
            del self._map[host]
        # 3. servers nothing routes to any more: in maintenance (requests in flight finish),
        # their slot free again once they hold no connection
        for host, weights in wanted.pools.items():
            backend = self._assigned[host]
            for slot, server in self._backends[backend].items():
                if server.state == "ready" and server.address not in weights:
                    self._retire(backend, slot, commands)
        for host in [h for h in self._assigned if h not in wanted.pools]:
            backend = self._assigned.pop(host)
            for slot, server in self._backends[backend].items():
                if server.state == "ready":
                    self._retire(backend, slot, commands)
            self._free.append(backend)
        await self._run(commands)
        self._programmed = table
        await self._reclaim()

    def _serve(self, backend: str, address: str, weight: int, commands: list[str]) -> None:
        """Have ``address`` served by a slot of ``backend`` with ``weight``."""
        slots = self._backends[backend]
        for slot, server in slots.items():
            if server.address == address and server.state != "free":
                if server.state == "ready" and server.weight == weight:
                    return
                commands.append(f"set server {backend}/{slot} weight {weight}")
                if server.state == "draining":
                    commands.append(f"set server {backend}/{slot} state ready")
                server.weight, server.state = weight, "ready"
                return
        target = ip_port(address)
        free = next((slot for slot, server in slots.items() if server.state == "free"), None)
        if target is None or free is None:
            raise _Reload(f"no server slot of {backend} can take {address}")
        ip, port = target
        commands.append(f"set server {backend}/{free} addr {ip} port {port}")
        commands.append(f"set server {backend}/{free} weight {weight}")
        commands.append(f"set server {backend}/{free} state ready")
        slots[free] = _Server(address, weight, "ready")

    def _retire(self, backend: str, slot: str, commands: list[str]) -> None:
        commands.append(f"set server {backend}/{slot} state maint")
        self._backends[backend][slot].state = "draining"

    async def _reclaim(self) -> None:
        """Free the slots in maintenance that hold no connection any more (HAProxy closes a
        server's idle connections when it enters maintenance)."""
        if not any(
            server.state == "draining"
            for servers in self._backends.values()
            for server in servers.values()
        ):
            return
        text = await self._stats("show stat -1 4 -1")
        for row in csv.DictReader(io.StringIO(text.removeprefix("# "))):
            server = self._backends.get(row.get("pxname") or "", {}).get(row.get("svname") or "")
            if server is None or server.state != "draining":
                continue
            held = (row.get(column) or "0" for column in ("scur", "srv_icur", "used_conn_cur"))
            if all(value == "0" for value in held):
                server.state = "free"

    # -- adoption -------------------------------------------------------------------------------

    def _fingerprint(self) -> str:
        """Names the options a configuration was rendered with (in its version): an HAProxy
        left running with the same ones is adopted without a reload."""
        return "dockyard-" + hashlib.sha256(repr(self.options).encode()).hexdigest()[:12]

    async def _adopt_locked(self) -> bool:
        """Read the routes an HAProxy left running holds (its map, backends and servers) and
        program the current table at run time: no reload, so no keep-alive connection of its
        clients is closed. False when it was rendered with other options (or by something
        else): then it is reloaded."""
        info = await self._stats("show info")
        described = re.search(r"^description: (\S+)$", info, re.MULTILINE)
        if described is None or not described.group(1).startswith(self._fingerprint() + "-"):
            return False
        backends = [
            name
            for name in (await self._stats("show backend")).split()
            if re.fullmatch(r"h\d+", name)
        ]
        hosts: dict[str, str] = {}
        for line in (await self._stats(f"show map {self.options.map_file}")).splitlines():
            parts = line.split()
            if len(parts) == 3:
                hosts[parts[1]] = parts[2]
        slots: dict[str, dict[str, _Server]] = {name: {} for name in backends}
        columns: list[str] = []
        for line in (await self._stats("show servers state")).splitlines():
            if line.startswith("# "):
                columns = line[2:].split()
                continue
            values = dict(zip(columns, line.split(), strict=False))
            backend = values.get("be_name", "")
            if backend not in slots:
                continue
            address = f"{values['srv_addr']}:{values['srv_port']}"
            if values["srv_admin_state"] == "0":
                server = _Server(address, int(values["srv_uweight"]), "ready")
            elif address == PLACEHOLDER:
                server = _Server(None, 1, "free")
            else:
                server = _Server(address, int(values["srv_uweight"]), "draining")
            slots[backend][values["srv_name"]] = server
        self._map = hosts
        self._backends = slots
        self._assigned = {h: v for h, v in hosts.items() if v in slots}
        used = set(self._assigned.values())
        self._free = [name for name in backends if name not in used]
        self._programmed = None
        await self._program_locked(self._table)
        return True

    # -- configuration loads --------------------------------------------------------------------

    def _write_config(self, table: RoutingTable) -> str:
        """Render the configuration and map for ``table`` (with spare backends) and reset the
        run-time bookkeeping to them; the version the new worker will report."""
        wanted = self._plan(table)
        names = backend_names(len(wanted.pools) + spares_for(len(wanted.pools)))
        pooled = sorted(wanted.pools)
        self._assigned = dict(zip(pooled, names, strict=False))
        self._free = names[len(pooled) :]
        rendered: dict[str, list[Slot]] = {}
        for host in pooled:
            weights = wanted.pools[host]
            slots = slots_for(list(weights))
            for n, (address, weight) in enumerate(sorted(weights.items())):
                slots[n] = Slot(slots[n].name, address, weight)
            rendered[self._assigned[host]] = slots
        for name in self._free:
            rendered[name] = slots_for([])
        self._backends = {
            name: {
                slot.name: _Server(slot.address, slot.weight, "ready" if slot.address else "free")
                for slot in slots
            }
            for name, slots in rendered.items()
        }
        self._map = {
            host: self._assigned[host] if host in wanted.pools else value
            for host, value in wanted.hosts.items()
        }
        version = f"{self._fingerprint()}-{os.getpid()}-{next(self._versions)}-{time.time_ns()}"
        write_atomically(Path(self.options.map_file), map_text(self._map))
        write_atomically(self.config_file, render(self.options, rendered, version=version))
        return version

    async def _load_locked(self, *, spawn: bool) -> None:
        table = self._table
        version = self._write_config(table)
        if spawn:
            await self._spawn(version)
        else:
            await self._reload(version)
            self.reloads += 1
        self._programmed = table

    async def _spawn(self, version: str) -> None:
        binary = haproxy_binary(self.binary)
        if binary is None:
            raise HAProxyError(
                "no haproxy binary: apt-get install haproxy, or set DOCKYARD_HAPROXY_BIN"
            )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.options.stats_socket)
        command = [binary, "-W", "-S", f"{self.options.master_socket},mode,600"]
        command += ["-f", str(self.config_file), "-p", str(self.pid_file)]
        self._process = self._launch(command)
        process = self._process
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise HAProxyError(f"haproxy exited ({process.returncode}): {self._tail()}")
            if await self._reports(version):
                self.adopted = False
                log.info("haproxy started (master pid %d) on %s", process.pid, self.options.listen)
                return
            await asyncio.sleep(0.02)
        await self._kill(process.pid)
        raise HAProxyError(f"haproxy did not answer within {self.start_timeout}s: {self._tail()}")

    def _launch(self, command: list[str]) -> subprocess.Popen[bytes]:
        with (self.directory / "haproxy.log").open("ab") as output:
            # A session of its own: HAProxy outlives a killed Dockyard and is adopted on restart.
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                start_new_session=True,
            )

    async def _reload(self, version: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                await cli(self.options.master_socket, "reload")
                break
            except HAProxyError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.05)  # the master re-executing for a previous reload
        # The new worker answers with the new version; the old one stops accepting right after
        # the new one is ready, so the version is read a few times in a row.
        seen = 0
        while seen < 3:
            if time.monotonic() >= deadline:
                raise HAProxyError(f"haproxy did not load its new configuration: {self._tail()}")
            seen = seen + 1 if await self._reports(version) else 0
            await asyncio.sleep(0.02)

    async def _reports(self, version: str) -> bool:
        try:
            return f"description: {version}\n" in await self._stats("show info")
        except HAProxyError:
            return False

    def _tail(self) -> str:
        try:
            return (self.directory / "haproxy.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    # -- watching -------------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                async with self._lock:
                    pid = self._pid()
                    if pid is None or not await self._answers():
                        if pid is not None and not await self._answers():
                            await self._kill(pid)
                        log.warning("haproxy is gone; starting it again")
                        self.restarts += 1
                        await self._load_locked(spawn=True)
                    elif self._programmed != self._table:
                        await self._load_locked(spawn=False)
                    else:
                        await self._reclaim()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not restart or program haproxy; trying again")

    async def _gone(self, pid: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._process is not None and self._process.pid == pid:
                if self._process.poll() is not None:
                    return True
            elif exited(pid):
                return True
            await asyncio.sleep(0.05)
        return False

    async def _kill(self, pid: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if await self._gone(pid, 5):
                break
        if self._process is not None and self._process.pid == pid:
            await asyncio.to_thread(self._process.wait, 5)
            self._process = None
