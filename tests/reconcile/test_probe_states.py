"""A revision a probe took out of traffic says so in its state; other pending states keep the
last failure's reason (pure, on the reconciler's record builder)."""

from __future__ import annotations

from app.domain.models import Revision
from app.reconcile import revision_record
from app.runtime.base import Phase, RevisionState


def row() -> Revision:
    return Revision(
        container_id="c1",
        revision_number=1,
        image="x:1",
        spec={},
        created_by="alice",
        serving_state="serving",
        instances_ready=1,
        endpoints=["127.0.0.1:1"],
    )


def test_liveness_restart_shows_in_the_revision_state() -> None:
    state = RevisionState(
        "c1",
        1,
        Phase.PENDING,
        "LivenessProbeFailed",
        "GET :8080/healthz answered 500 3 time(s) in a row; restarted the instance",
    )
    record = revision_record(row(), state, kept=True, now_ns=1)
    assert record.serving_state == "starting" and record.endpoints == ()
    assert record.state_reason == "LivenessProbeFailed"
    assert record.state_message.startswith("GET :8080/healthz answered 500")


def test_plain_starting_keeps_the_previous_reason() -> None:
    previous = row()
    previous.state_reason, previous.state_message = "OOMKilled", "exited with code 137"
    state = RevisionState("c1", 1, Phase.PENDING, "ContainerStarting", "waiting")
    record = revision_record(previous, state, kept=True, now_ns=1)
    assert (record.state_reason, record.state_message) == ("OOMKilled", "exited with code 137")
