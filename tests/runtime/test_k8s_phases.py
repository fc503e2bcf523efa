"""Deploy phases read from pods' status (``app.runtime.k8s_phases``), as tables of pod JSON the
way the API server serves it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.runtime.k8s_phases import parse_time, pod_moments, pod_moments_of

NS = 1_000_000_000
T0 = int(datetime(2026, 12, 3, 9, 0, 0, tzinfo=UTC).timestamp()) * NS


def at(seconds: int) -> str:
    return datetime.fromtimestamp(T0 // NS + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, status: str, seconds: int) -> dict[str, str]:
    return {"type": kind, "status": status, "lastTransitionTime": at(seconds)}


def pod(conditions: list[dict[str, str]], *containers: dict[str, Any]) -> dict[str, Any]:
    return {"status": {"conditions": conditions, "containerStatuses": list(containers)}}


SCHEDULED = condition("PodScheduled", "True", 1)
INITIALIZED = condition("Initialized", "True", 1)
RUNNING = {
    "name": "app",
    "imageID": "docker.io/library/nginx@sha256:abc",
    "state": {"running": {"startedAt": at(7)}},
}


@pytest.mark.parametrize(
    ("the_pod", "expected"),
    [
        ({}, {}),
        ({"status": {"phase": "Pending"}}, {}),
        # Unschedulable: no phase reached
        (pod([condition("PodScheduled", "False", 1)]), {}),
        # scheduled, pulling: Initialized proves nothing about the app image
        (
            pod(
                [SCHEDULED, INITIALIZED, condition("Ready", "False", 1)],
                {"name": "app", "imageID": "", "state": {"waiting": {"reason": "Pulling"}}},
            ),
            {"scheduled": T0 + 1 * NS},
        ),
        # running and ready
        (
            pod([SCHEDULED, INITIALIZED, condition("Ready", "True", 9)], RUNNING),
            {
                "scheduled": T0 + 1 * NS,
                "imageReady": T0 + 7 * NS,
                "started": T0 + 7 * NS,
                "ready": T0 + 9 * NS,
            },
        ),
        # crash looping: the image was there, it started (last state), never ready
        (
            pod(
                [SCHEDULED, condition("Ready", "False", 1)],
                {
                    "name": "app",
                    "imageID": "sha256:abc",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 2, "startedAt": at(5)}},
                },
            ),
            {"scheduled": T0 + 1 * NS, "imageReady": T0 + 5 * NS, "started": T0 + 5 * NS},
        ),
        # a start without imageID (not yet reported) does not claim the image
        (
            pod([SCHEDULED], {"name": "app", "state": {"running": {"startedAt": at(4)}}}),
            {"scheduled": T0 + 1 * NS, "started": T0 + 4 * NS},
        ),
        # a sidecar (Knative's queue-proxy) says nothing about the app's image or start
        (
            pod(
                [SCHEDULED],
                {**RUNNING, "name": "queue-proxy", "state": {"running": {"startedAt": at(3)}}},
                RUNNING,
            ),
            {"scheduled": T0 + 1 * NS, "imageReady": T0 + 7 * NS, "started": T0 + 7 * NS},
        ),
        # no container named app: the earliest start of any
        (
            pod(
                [SCHEDULED],
                {**RUNNING, "name": "web"},
                {**RUNNING, "name": "side", "state": {"running": {"startedAt": at(3)}}},
            ),
            {"scheduled": T0 + 1 * NS, "imageReady": T0 + 3 * NS, "started": T0 + 3 * NS},
        ),
    ],
)
def test_moments_of_one_pod(the_pod: dict[str, Any], expected: dict[str, int]) -> None:
    assert pod_moments_of(the_pod) == expected


def test_a_revision_takes_the_earliest_moment_of_its_pods_in_phase_order() -> None:
    first = pod([SCHEDULED, condition("Ready", "True", 9)], RUNNING)
    later = pod(
        [condition("PodScheduled", "True", 30), condition("Ready", "True", 40)],
        {**RUNNING, "state": {"running": {"startedAt": at(35)}}},
    )
    assert pod_moments([later, first]) == (
        ("scheduled", T0 + 1 * NS),
        ("imageReady", T0 + 7 * NS),
        ("started", T0 + 7 * NS),
        ("ready", T0 + 9 * NS),
    )
    assert pod_moments([]) == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-12-03T09:00:00Z", T0),
        ("2026-12-03T09:00:00+00:00", T0),
        ("2026-12-03T10:00:00.250000+01:00", T0 + 250_000_000),
        (datetime(2026, 12, 3, 9, 0, 0, tzinfo=UTC), T0),
        (datetime(2026, 12, 3, 9, 0, 0), T0),  # naive: UTC
        ("", None),
        (None, None),
        ("yesterday", None),
        (42, None),
    ],
)
def test_parse_time(value: object, expected: int | None) -> None:
    assert parse_time(value) == expected
