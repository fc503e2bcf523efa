from __future__ import annotations

import pytest

from app.domain import phases as ph

MS = 1_000_000


def test_first_seen_wins_and_nothing_changed_is_none() -> None:
    stored = ph.record(None, {ph.SCHEDULED: 10 * MS})
    assert stored == [{"phase": "scheduled", "at": 10 * MS}]
    assert ph.record(stored, {ph.SCHEDULED: 99 * MS}) is None
    grown = ph.record(stored, {ph.READY: 30 * MS, ph.STARTED: 20 * MS})
    assert [p["phase"] for p in grown or []] == ["scheduled", "started", "ready"]


def test_a_moment_never_runs_before_an_earlier_phase() -> None:
    # the engine's clock stamped "started" a little before the server saw "scheduled"
    stored = ph.record(None, {ph.SCHEDULED: 50 * MS, ph.STARTED: 49 * MS})
    assert stored is not None
    assert {p["phase"]: p["at"] for p in stored}[ph.STARTED] == 50 * MS


@pytest.mark.parametrize(
    ("moments", "durations"),
    [
        (
            {ph.SCHEDULED: 5, ph.IMAGE_READY: 6, ph.STARTED: 9, ph.READY: 40, ph.SERVING: 41},
            [5.0, 1.0, 3.0, 31.0, 1.0, None],
        ),
        ({ph.SCHEDULED: 5}, [5.0, None]),
    ],
)
def test_timeline_durations_add_up_to_the_wall_time(
    moments: dict[str, int], durations: list[float | None]
) -> None:
    stored = ph.record(None, {name: at * MS for name, at in moments.items()})
    entries = ph.timeline(stored, accepted_ns=0)
    assert [e.duration_ms for e in entries] == durations
    total = sum(e.duration_ms or 0 for e in entries)
    assert total == max(moments.values())


def test_failure_names_the_phase_it_failed_in() -> None:
    stored = ph.record(None, {ph.SCHEDULED: 5 * MS, ph.STARTED: 7 * MS})
    assert ph.last_phase(stored) == ph.STARTED
    failed = ph.record(stored, {}, failed_reason="started: CrashLoopBackOff: exit 3")
    assert failed is not None
    last = ph.timeline(failed, accepted_ns=0)[-1]
    assert (last.phase, last.at_ns, last.reason) == (
        "failed",
        7 * MS,
        "started: CrashLoopBackOff: exit 3",
    )
    assert ph.record(failed, {}, failed_reason="again") is None
