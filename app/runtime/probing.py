"""Dockyard's own health checker for the local engine (Docker/Podman).

The engine's ``HEALTHCHECK`` is not used: it runs inside the container (an image without ``curl``
or ``wget`` cannot do an HTTP check), Podman's compat API runs it from a systemd timer that a
rootless service without systemd lacks, and it never restarts anything by itself. Instead the
:class:`Prober` checks every instance from outside, as the kubelet does:

- ``httpGet``: a GET of ``http://127.0.0.1:<published port><path>`` with aiohttp (already the
  client of the engine's streams), redirects not followed, status 200-399 passes;
- ``tcpSocket``: a TCP connect to the published port (``asyncio.open_connection``);
- ``exec``: the command run in the container through the engine's exec API, exit code 0 passes.

Checks run in a background task of the runtime's event loop, each bounded by its
``timeoutSeconds``: :meth:`Prober.verdict` (called by ``observe``) only reads their results, so
the reconciler never waits on a slow probe. Kubernetes' semantics: nothing is checked before
``initialDelaySeconds``; readiness and liveness wait for the startup probe to pass; an instance is
ready after ``successThreshold`` passes in a row and stops being ready after ``failureThreshold``
failures in a row; ``failureThreshold`` liveness failures in a row restart the instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from app.runtime.base import Phase, Probe, Probes, RuntimeEvent

log = logging.getLogger(__name__)

TICK_SECONDS = 0.2
"""How often the prober looks for due checks."""
DEFAULT_READINESS = Probe(
    action="tcpSocket", period_seconds=1, timeout_seconds=1, success_threshold=1
)
"""Readiness of an instance whose probes set none (only startup or liveness): the port accepts."""
MAX_OUTPUT = 200

ExecFn = Callable[[str, tuple[str, ...], float], Awaitable[tuple[int, str]]]
"""Runs a command in an engine container: (engine id, command, timeout) -> (exit code, output)."""
RestartFn = Callable[[str], Awaitable[None]]
"""Restarts an engine container."""


@dataclass
class Target:
    """One running instance to check."""

    engine_id: str
    container_id: str
    started: str
    """The engine's ``StartedAt``: a restart makes a new target (fresh counters)."""
    probes: Probes
    port: int
    """The container port the revision serves on (checked by the default readiness probe)."""
    addresses: dict[int, str]
    """Container port -> published ``host:port``."""


@dataclass
class Track:
    """The results of one probe of one instance."""

    probe: Probe
    successes: int = 0
    failures: int = 0
    passed: bool = False
    """Startup: passed once. Readiness: ready now. Liveness: alive now."""
    ever_passed: bool = False
    last: str = "not checked yet"
    next_due: float = 0.0
    running: bool = False


@dataclass
class Health:
    target: Target
    created: float
    tracks: dict[str, Track] = field(default_factory=dict)
    restarting: bool = False


@dataclass(frozen=True)
class Verdict:
    """What the probes say about one instance."""

    phase: Phase
    reason: str = ""
    message: str = ""


class Prober:
    """Checks the instances ``observe`` registered; see the module docstring."""

    def __init__(self, exec_fn: ExecFn, restart_fn: RestartFn) -> None:
        self._exec = exec_fn
        self._restart = restart_fn
        self._lock = threading.Lock()
        self._health: dict[str, Health] = {}
        self._restarts: dict[str, tuple[int, str]] = {}
        """Engine id -> (liveness restarts so far, why the last one happened)."""
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._checks: set[asyncio.Task[None]] = set()
        self._listeners: set[asyncio.Queue[Any]] = set()

    def subscribe(self, queue: asyncio.Queue[Any]) -> None:
        """Put a ``RuntimeEvent`` on ``queue`` whenever an instance becomes ready or stops being
        ready, or is restarted: nothing in the engine tells the reconciler so."""
        self._listeners.add(queue)

    def unsubscribe(self, queue: asyncio.Queue[Any]) -> None:
        self._listeners.discard(queue)

    def _changed(self, container_id: str) -> None:
        for queue in self._listeners:
            queue.put_nowait(RuntimeEvent(container_id=container_id))

    # -- called from observe (any thread) -----------------------------------------------------

    def verdict(self, target: Target, *, since_start: float, budget: float) -> Verdict:
        """Register (or refresh) the instance and say whether it is ready, still starting or
        failed (its start-up budget spent without passing)."""
        with self._lock:
            health = self._health.get(target.engine_id)
            if health is None or health.target.started != target.started:
                health = Health(target=target, created=time.monotonic())
                probes = target.probes
                for kind, probe in (
                    ("startup", probes.startup),
                    (
                        "readiness",
                        probes.readiness
                        or dataclasses.replace(DEFAULT_READINESS, port=target.port),
                    ),
                    ("liveness", probes.liveness),
                ):
                    if probe is not None:
                        health.tracks[kind] = Track(probe, next_due=health.created)
                self._health[target.engine_id] = health
            else:
                health.target = target
            return self._judge(health, since_start=since_start, budget=budget)

    def _judge(self, health: Health, *, since_start: float, budget: float) -> Verdict:
        restarts, why = self._restarts.get(health.target.engine_id, (0, ""))
        startup = health.tracks.get("startup")
        readiness = health.tracks["readiness"]
        if startup is not None and not startup.passed:
            stage, track = "StartupProbeFailed", startup
        else:
            stage, track = "ReadinessProbeFailed", readiness
        probe = track.probe
        if health.restarting:
            return self._restarting(why)
        if readiness.passed and (startup is None or startup.passed):
            return Verdict(Phase.READY)
        if restarts:
            return Verdict(
                Phase.PENDING,
                "LivenessProbeFailed",
                f"{why}; restarted the instance ({restarts} liveness restart(s)); "
                f"now waiting for {probe.describe()}: {track.last}",
            )
        if readiness.ever_passed:
            return Verdict(
                Phase.PENDING,
                "ReadinessProbeFailed",
                f"{probe.describe()} {track.last} {track.failures} time(s) in a row; "
                "the instance gets no traffic until it passes again",
            )
        if since_start > budget:
            return Verdict(
                Phase.FAILED,
                stage,
                f"{probe.describe()} {track.last}; not passed within the start-up budget of "
                f"{budget:g}s (running for {since_start:.0f}s)",
            )
        return Verdict(
            Phase.PENDING,
            "ContainerStarting",
            f"waiting for the {stage.removesuffix('ProbeFailed').lower()} probe: "
            f"{probe.describe()}: {track.last}",
        )

    @staticmethod
    def _restarting(why: str) -> Verdict:
        return Verdict(
            Phase.PENDING, "LivenessProbeFailed", f"{why}; restarting the instance (no traffic)"
        )

    def restart_verdict(self, engine_id: str) -> Verdict | None:
        """While the prober restarts an instance for its liveness probe (the engine briefly
        shows it stopped): that, rather than an exit."""
        with self._lock:
            health = self._health.get(engine_id)
            if health is None or not health.restarting:
                return None
            return self._restarting(self._restarts.get(engine_id, (0, ""))[1])

    def forget_missing(self, container_id: str, present: set[str]) -> None:
        """Drop the container's instances that are gone from the engine."""
        with self._lock:
            for engine_id, health in list(self._health.items()):
                if health.target.container_id == container_id and engine_id not in present:
                    self._health.pop(engine_id, None)
                    self._restarts.pop(engine_id, None)

    # -- the checking task ------------------------------------------------------------------------

    def ensure_running(self) -> None:
        """Start the checking task on the running loop (from ``observe``)."""
        task = self._task
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._task = asyncio.create_task(self._run(), name="dockyard-prober")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._checks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        self._checks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            with self._lock:
                due = [
                    (health, kind, track)
                    for health in self._health.values()
                    if not health.restarting
                    for kind, track in health.tracks.items()
                    if self._due(health, kind, track, now)
                ]
                for _, _, track in due:
                    track.running = True
            for health, kind, track in due:
                task = asyncio.create_task(self._check(health, kind, track))
                self._checks.add(task)
                task.add_done_callback(self._checks.discard)
            await asyncio.sleep(TICK_SECONDS)

    @staticmethod
    def _due(health: Health, kind: str, track: Track, now: float) -> bool:
        if track.running or now < track.next_due:
            return False
        if now - health.created < track.probe.initial_delay_seconds:
            return False
        startup = health.tracks.get("startup")
        if kind != "startup" and startup is not None and not startup.passed:
            return False
        return not (kind == "startup" and track.passed)

    async def _check(self, health: Health, kind: str, track: Track) -> None:
        probe = track.probe
        try:
            ok, result = await self.run_probe(probe, health.target)
        except Exception as e:  # a check must never kill the prober
            ok, result = False, f"could not be checked: {e}"
        restart_why = None
        with self._lock:
            was_passed = track.passed
            track.running = False
            track.last = result
            track.next_due = time.monotonic() + track.probe.period_seconds
            if ok:
                track.successes += 1
                track.failures = 0
                if track.successes >= track.probe.success_threshold:
                    track.passed = track.ever_passed = True
            else:
                track.failures += 1
                track.successes = 0
                if track.failures >= track.probe.failure_threshold and kind != "startup":
                    track.passed = False
            if kind == "liveness" and not ok and track.failures >= track.probe.failure_threshold:
                restart_why = f"{probe.describe()} {result} {track.failures} time(s) in a row"
                count = self._restarts.get(health.target.engine_id, (0, ""))[0] + 1
                self._restarts[health.target.engine_id] = (count, restart_why)
                health.restarting = True
                for other in health.tracks.values():
                    other.passed = False
            changed = track.passed != was_passed or restart_why is not None
        if changed:
            self._changed(health.target.container_id)
        if restart_why is not None:
            log.info("liveness probe failed for %s: %s", health.target.engine_id, restart_why)
            try:
                await self._restart(health.target.engine_id)
            except Exception:
                log.warning("restarting %s failed", health.target.engine_id, exc_info=True)
                with self._lock:
                    health.restarting = False

    async def run_probe(self, probe: Probe, target: Target) -> tuple[bool, str]:
        """One check, bounded by the probe's ``timeoutSeconds``: (passed, what happened)."""
        timeout = float(probe.timeout_seconds)
        if probe.action == "exec":
            try:
                code, output = await asyncio.wait_for(
                    self._exec(target.engine_id, probe.command, timeout), timeout
                )
            except TimeoutError:
                return False, f"timed out after {timeout:g}s"
            tail = output.strip()[-MAX_OUTPUT:]
            return code == 0, f"exited {code}" + (f": {tail}" if tail else "")
        address = target.addresses.get(probe.port)
        if address is None:
            return False, f"failed: container port {probe.port} is not published"
        host, _, port = address.rpartition(":")
        if probe.action == "tcpSocket":
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, int(port)), timeout
                )
            except TimeoutError:
                return False, f"timed out after {timeout:g}s"
            except OSError as e:
                return False, f"failed: {e.strerror or e}"
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True, "accepted the connection"
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(
                f"http://{address}{probe.path}",
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
                headers={"User-Agent": "dockyard-probe/1"},
            ) as response:
                status = response.status
        except TimeoutError:
            return False, f"timed out after {timeout:g}s"
        except aiohttp.ClientError as e:
            return False, f"failed: {e}"
        return 200 <= status < 400, f"answered {status}"


def probes_to_label(probes: Probes) -> str:
    """The probes as the compact JSON label an engine container carries (``observe`` has only
    the engine's view, and a restarted Dockyard must keep checking the same way)."""
    return json.dumps(dataclasses.asdict(probes), separators=(",", ":"))


def probes_from_label(text: str) -> Probes | None:
    """The probes of a label; None for a missing or unreadable one (the default check)."""
    if not text:
        return None
    try:
        data = json.loads(text)

        def probe(value: object) -> Probe | None:
            if not isinstance(value, dict):
                return None
            return Probe(**{**value, "command": tuple(value.get("command") or ())})

        return Probes(
            startup=probe(data.get("startup")),
            readiness=probe(data.get("readiness")),
            liveness=probe(data.get("liveness")),
            startup_budget_seconds=data.get("startup_budget_seconds"),
        )
    except (ValueError, TypeError, AttributeError):
        return None


def budget_of(probes: Probes, default: float) -> float:
    """The start-up budget of an instance: the probes' own, else the runtime's default."""
    own = probes.budget()
    return float(own) if own is not None else default
