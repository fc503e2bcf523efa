"""A revision's deploy timeline: when it entered each phase, and how long each took.

No peer shows where deploy time goes per revision (knative/serving#2495 asks for it since 2018).
The reconciler and the runtime each see some steps; this module keeps the rules in one pure
place: the phase order, first-seen-wins recording (a restart or a resync never moves a recorded
moment), and the timeline users read, where each phase lasts until the next one began, so the
phases of a served revision add up exactly to its accepted -> serving time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ACCEPTED = "accepted"
"""The revision was committed (its ``date_created``)."""
SCHEDULED = "scheduled"
"""The runtime object was created (engine container, Deployment, Knative revision)."""
IMAGE_READY = "imageReady"
"""The image was found or pulled."""
STARTED = "started"
"""The container process started."""
READY = "ready"
"""The readiness check passed."""
SERVING = "serving"
"""Traffic was switched to the revision."""
FAILED = "failed"

ORDER = (ACCEPTED, SCHEDULED, IMAGE_READY, STARTED, READY, SERVING)
RANK = {name: rank for rank, name in enumerate(ORDER)}


@dataclass(frozen=True)
class PhaseEntry:
    phase: str
    at_ns: int
    """Wall-clock nanoseconds since the epoch."""
    duration_ms: float | None
    """Until the next phase began; None for the last one (still in it, or an end)."""
    reason: str = ""
    """For ``failed``: the phase it failed in and why, e.g. ``started: CrashLoopBackOff``."""


def _stored(phases: Sequence[Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]]:
    return {str(p["phase"]): p for p in phases or () if isinstance(p, Mapping) and "phase" in p}


def record(
    phases: Sequence[Mapping[str, Any]] | None,
    moments: Mapping[str, int],
    *,
    failed_reason: str | None = None,
) -> list[dict[str, Any]] | None:
    """``phases`` (as stored: ``[{phase, at}]``, ``at`` in ns) with ``moments`` added where
    not yet known; None when nothing changed (so callers write only on change).

    A moment earlier than a phase already recorded before it is raised to that phase's moment:
    clocks of engine and server differ by a little, and a timeline must never run backwards.
    """
    known = _stored(phases)
    changed = False
    for phase in sorted(moments, key=lambda name: RANK.get(name, len(ORDER))):
        if phase not in RANK or phase in known:
            continue
        at = moments[phase]
        earlier = [int(p["at"]) for name, p in known.items() if RANK.get(name, -1) < RANK[phase]]
        known[phase] = {"phase": phase, "at": max([at, *earlier])}
        changed = True
    if failed_reason is not None and FAILED not in known:
        last = max((int(p["at"]) for p in known.values()), default=0)
        failed_at = max([last, *(moments.values() or [0])])
        known[FAILED] = {"phase": FAILED, "at": failed_at, "reason": failed_reason[:200]}
        changed = True
    if not changed:
        return None
    return sorted(
        (dict(p) for p in known.values()),
        key=lambda p: (RANK.get(str(p["phase"]), len(ORDER)), int(p["at"])),
    )


def last_phase(phases: Sequence[Mapping[str, Any]] | None) -> str | None:
    """The furthest phase of ``ORDER`` reached."""
    reached = [name for name in _stored(phases) if name in RANK]
    return max(reached, key=RANK.__getitem__) if reached else None


def timeline(phases: Sequence[Mapping[str, Any]] | None, *, accepted_ns: int) -> list[PhaseEntry]:
    """The phases in order, each with how long it lasted (until the next one began)."""
    known = _stored(phases)
    known.setdefault(ACCEPTED, {"phase": ACCEPTED, "at": accepted_ns})
    ordered = sorted(
        known.values(), key=lambda p: (RANK.get(str(p["phase"]), len(ORDER)), int(p["at"]))
    )
    entries: list[PhaseEntry] = []
    for index, entry in enumerate(ordered):
        at = int(entry["at"])
        following = ordered[index + 1] if index + 1 < len(ordered) else None
        duration = (int(following["at"]) - at) / 1e6 if following is not None else None
        entries.append(PhaseEntry(str(entry["phase"]), at, duration, str(entry.get("reason", ""))))
    return entries
