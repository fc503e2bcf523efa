"""The reconciler's part of the deploy timeline (pure): what one pass adds to a revision's
phases from what the runtime reported and whether traffic reaches it."""

from __future__ import annotations

from datetime import UTC, datetime

from app.domain.models import Revision
from app.reconcile import revision_phases
from app.runtime.base import Phase, RevisionState

MS = 1_000_000


def row(phases: list[dict[str, object]] | None = None) -> Revision:
    return Revision(
        container_id="c1",
        revision_number=1,
        image="x:1",
        spec={},
        created_by="alice",
        date_created=datetime(2026, 1, 1, tzinfo=UTC),
        phases=phases or [],
    )


def test_runtime_moments_then_ready_then_serving() -> None:
    starting = RevisionState(
        "c1", 1, Phase.PENDING, moments=(("scheduled", 10 * MS), ("started", 30 * MS))
    )
    first = revision_phases(row(), starting, now_ns=40 * MS, serving=False)
    assert [p[0] for p in first] == ["scheduled", "started"]
    ready = RevisionState("c1", 1, Phase.READY, moments=starting.moments)
    stored = [{"phase": name, "at": at} for name, at, _ in first]
    second = revision_phases(row(stored), ready, now_ns=50 * MS, serving=True)
    assert [(p[0], p[1]) for p in second][-2:] == [("ready", 50 * MS), ("serving", 50 * MS)]
    # a later pass never moves a recorded moment
    stored = [{"phase": name, "at": at} for name, at, _ in second]
    assert revision_phases(row(stored), ready, now_ns=90 * MS, serving=True) == second


def test_failure_names_the_phase_reached() -> None:
    stored = [{"phase": "scheduled", "at": 10 * MS}, {"phase": "started", "at": 20 * MS}]
    failed = RevisionState("c1", 1, Phase.FAILED, reason="CrashLoopBackOff")
    timeline = revision_phases(row(stored), failed, now_ns=30 * MS, serving=False)
    assert timeline[-1][0] == "failed" and timeline[-1][2] == "started: CrashLoopBackOff"


def test_a_failure_seen_at_the_first_look_names_the_phase_the_runtime_reported() -> None:
    """A container that crashed before the reconciler first looked: the runtime's moments of
    this same pass say how far it got."""
    failed = RevisionState(
        "c1",
        1,
        Phase.FAILED,
        reason="CrashLoopBackOff",
        moments=(("scheduled", 10 * MS), ("imageReady", 12 * MS), ("started", 20 * MS)),
    )
    timeline = revision_phases(row(), failed, now_ns=30 * MS, serving=False)
    assert [p[0] for p in timeline] == ["scheduled", "imageReady", "started", "failed"]
    assert timeline[-1][2] == "started: CrashLoopBackOff"


def test_not_serving_until_traffic_reaches_it() -> None:
    ready = RevisionState("c1", 1, Phase.READY)
    timeline = revision_phases(row(), ready, now_ns=5 * MS, serving=False)
    assert [p[0] for p in timeline] == ["ready"]
