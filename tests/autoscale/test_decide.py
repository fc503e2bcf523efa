"""The autoscaler's decision function: table tests on a fake clock (no sleeping, no engine)."""

from __future__ import annotations

import math

import pytest

from app.autoscale.decide import (
    AutoscalerOptions,
    Decision,
    RevisionLoad,
    Sample,
    decide,
    scaling_of,
)
from app.runtime.base import Scaling

OPTIONS = AutoscalerOptions(stable_window_seconds=60, panic_window_seconds=6)
NOW = 1000.0
SCALING = Scaling(min_instances=0, max_instances=10, concurrency=10, scale_to_zero_after_seconds=30)


def flat(in_flight: float, *, seconds: float = 60, step: float = 0.5) -> list[Sample]:
    """A constant load over the last ``seconds``."""
    count = int(seconds / step)
    return [Sample(NOW - i * step, in_flight) for i in range(count)]


def burst(base: float, peak: float, *, peak_seconds: float = 3) -> list[Sample]:
    """``base`` for a minute, then ``peak`` in the last ``peak_seconds``."""
    return [
        Sample(s.at, peak if s.at > NOW - peak_seconds else base) for s in flat(base, seconds=60)
    ]


def load(**changes: object) -> RevisionLoad:
    fields: dict[str, object] = {"scaling": SCALING, "desired": 1, "ready": 1, "idle_seconds": 0}
    fields.update(changes)
    return RevisionLoad(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "revision", "samples", "desired", "reason"),
    [
        ("steady load within one instance", load(), flat(8), 1, "stable"),
        ("steady load of three instances", load(desired=3, ready=3), flat(25), 3, "stable"),
        ("load fell: scale in on the stable average", load(desired=4, ready=4), flat(12), 2, ""),
        ("no load but a recent request keeps one", load(idle_seconds=5), flat(0), 1, "recent"),
        ("idle past the window: zero", load(idle_seconds=31), flat(0), 0, "no request for 30s"),
        ("idle, never requested: zero", load(idle_seconds=math.inf), [], 0, "no request"),
        (
            "minInstances holds an idle revision",
            load(scaling=Scaling(2, 10, 10, 30), idle_seconds=999),
            flat(0),
            2,
            "",
        ),
        ("maxInstances caps a burst", load(ready=1), flat(500), 10, ""),
        # panic window: 3 s at 40 and 3 s at 5 in flight -> 22.5 / 10 -> 3
        ("a burst panics: scale by the panic window", load(), burst(5, 40), 3, "panic"),
        (
            "never down while an instance starts",
            load(desired=3, ready=1, starting=2),
            flat(0),
            3,
            "still starting",
        ),
        (
            "in panic, never down",
            load(desired=5, ready=5, panic_until=NOW + 10),
            flat(10),
            5,
            "panic",
        ),
        (
            "panic over: the stable window decides",
            load(desired=5, ready=5, panic_until=NOW - 1),
            flat(10),
            1,
            "stable",
        ),
        (
            "held requests of a revision at zero: one instance",
            load(desired=0, ready=0),
            flat(50, seconds=1),
            5,
            "panic",
        ),
    ],
)
def test_decide(
    case: str, revision: RevisionLoad, samples: list[Sample], desired: int, reason: str
) -> None:
    decision = decide(revision, samples, now=NOW, options=OPTIONS)
    assert decision.desired == desired, (case, decision)
    assert reason in decision.reason, (case, decision)


def test_a_burst_of_fifty_at_zero_asks_for_one_instance_at_the_default_concurrency() -> None:
    revision = load(scaling=Scaling(), desired=0, ready=0, idle_seconds=0)
    decision = decide(revision, flat(50, seconds=1), now=NOW, options=OPTIONS)
    assert decision.desired == 1


def test_panic_lasts_a_stable_window_then_ends() -> None:
    first = decide(load(), burst(5, 40), now=NOW, options=OPTIONS)
    assert first.panic_until == NOW + 60
    # the burst is over, but a stable window has not passed: hold
    held = decide(
        load(desired=first.desired, ready=3, panic_until=first.panic_until),
        flat(5),
        now=NOW,
        options=OPTIONS,
    )
    assert held == Decision(3, NOW + 60, "panic")
    later = decide(
        load(desired=3, ready=3, panic_until=first.panic_until),
        flat(5),
        now=NOW + 61,
        options=OPTIONS,
    )
    assert later.desired == 1 and later.panic_until is None


def test_scaling_of_reads_the_json_names_and_defaults_the_rest() -> None:
    assert scaling_of({}) == Scaling()
    assert scaling_of({"scaling": None}) == Scaling()
    assert scaling_of(
        {"scaling": {"minInstances": 1, "maxInstances": 3, "concurrency": 5, "x": 1}}
    ) == Scaling(1, 3, 5, Scaling().scale_to_zero_after_seconds)
    assert scaling_of({"scaling": {"scaleToZeroAfterSeconds": 60, "concurrency": True}}) == (
        Scaling(scale_to_zero_after_seconds=60)
    )
