"""The autoscaler's decision for one revision: pure, so table tests pin it down with a fake clock.

In the spirit of Knative's KPA (``pkg/autoscaler/scaling/autoscaler.go``), not a copy of it:

- the observed concurrency of a revision is the number of requests in flight on its instances
  (sampled from the proxy) plus those the activator holds for it;
- ``stable`` desired = ceil(average over the stable window / target concurrency);
  ``panic`` desired = the same over the short panic window;
- the revision enters panic when the panic window asks for at least ``panic_threshold`` times the
  instances that are ready; in panic it scales up by the panic window and never down, and it
  leaves panic once a whole stable window passed without a reason to panic;
- the result is clamped to ``[min_instances, max_instances]``; below one instance only after
  ``scale_to_zero_after_seconds`` without any request (request activity, not only in-flight
  samples: short requests between two samples still count);
- nothing is scaled down while an instance is still starting (a GPU revision may take minutes to
  load its model: reaping it would restart that work, kserve#1247).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app.runtime.base import Scaling


@dataclass(frozen=True)
class AutoscalerOptions:
    """The windows of the autoscaler (Knative's defaults); tests shorten them."""

    tick_seconds: float = 0.5
    """How often in-flight requests are sampled and decisions are made."""
    stable_window_seconds: float = 60.0
    panic_window_seconds: float = 6.0
    panic_threshold: float = 2.0
    """Panic when the panic window asks for this many times the ready instances."""
    max_scale_up_rate: float = 1000.0
    """At most this many times the ready instances in one decision (and at least one more)."""


@dataclass(frozen=True)
class Sample:
    at: float
    """Seconds on the autoscaler's clock (monotonic)."""
    in_flight: float


@dataclass(frozen=True)
class RevisionLoad:
    """What the autoscaler knows of one revision at one moment."""

    scaling: Scaling
    desired: int
    """The current decision (``revisions.instances_desired``)."""
    ready: int
    """Instances ready to serve."""
    starting: int = 0
    """Instances the runtime is still starting."""
    idle_seconds: float = math.inf
    """Seconds since the revision's last request (inf: none on record)."""
    panic_until: float | None = None
    """In panic until this time, from the previous decision."""


@dataclass(frozen=True)
class Decision:
    desired: int
    panic_until: float | None
    reason: str


def _average(samples: Iterable[Sample], since: float) -> float | None:
    values = [s.in_flight for s in samples if s.at >= since]
    return sum(values) / len(values) if values else None


def decide(
    load: RevisionLoad, samples: Iterable[Sample], *, now: float, options: AutoscalerOptions
) -> Decision:
    """The number of instances the revision should run now."""
    samples = list(samples)
    scaling = load.scaling
    target = max(scaling.concurrency, 1)
    stable = _average(samples, now - options.stable_window_seconds)
    panic_avg = _average(samples, now - options.panic_window_seconds)
    stable_want = math.ceil((stable or 0.0) / target)
    panic_want = math.ceil((panic_avg or 0.0) / target)

    panic_until = load.panic_until if load.panic_until and load.panic_until > now else None
    if panic_want >= max(load.ready, 1) * options.panic_threshold and panic_want > load.ready:
        panic_until = now + options.stable_window_seconds
    if panic_until is not None:
        want = max(panic_want, stable_want, load.desired)  # never down while panicking
        reason = "panic"
    else:
        want = stable_want
        reason = "stable"

    rate_cap = max(math.ceil(max(load.ready, 1) * options.max_scale_up_rate), load.ready + 1)
    want = min(want, rate_cap)
    active = load.idle_seconds < scaling.scale_to_zero_after_seconds or (panic_avg or 0.0) > 0
    if want == 0 and active:
        want = 1  # keep one instance until the idle window passed without a request
        reason = "recent requests"
    want = max(want, scaling.min_instances)
    want = min(want, max(scaling.max_instances, scaling.min_instances))
    if want < load.desired and load.starting > 0:
        return Decision(load.desired, panic_until, "an instance is still starting")
    if want == 0:
        reason = f"no request for {scaling.scale_to_zero_after_seconds}s"
    return Decision(want, panic_until, reason)


def scaling_of(spec: Mapping[str, Any]) -> Scaling:
    """A revision's scaling from its stored spec (``spec["scaling"]``, JSON names), defaults
    for what is missing."""
    raw = spec.get("scaling")
    defaults = Scaling()
    if not isinstance(raw, Mapping):
        return defaults

    def number(key: str, default: int) -> int:
        value = raw.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    return Scaling(
        min_instances=number("minInstances", defaults.min_instances),
        max_instances=number("maxInstances", defaults.max_instances),
        concurrency=number("concurrency", defaults.concurrency),
        scale_to_zero_after_seconds=number(
            "scaleToZeroAfterSeconds", defaults.scale_to_zero_after_seconds
        ),
    )
