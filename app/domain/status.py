"""How the observed state of a container's revisions becomes its user-facing status.

Modelled on Knative's split between the latest created and the latest ready revision: a new
revision that fails does not take down the one already serving, and the status says both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from app.domain.models import Container, ContainerStatus, utcnow

READY = "ready"
FAILED = "failed"
PENDING = "pending"


@dataclass(frozen=True)
class RevisionObservation:
    """What the runtime reported about one revision (phase: pending, ready or failed)."""

    revision: int
    phase: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class ObservedStatus:
    status: str
    reason: str
    message: str
    ready_revision: int | None


def derive_status(
    *, generation: int, observations: Iterable[RevisionObservation], runtime_reason: str = ""
) -> ObservedStatus:
    """The status of a container whose newest revision is ``generation``."""
    by_revision = {obs.revision: obs for obs in observations}
    ready = [rev for rev, obs in by_revision.items() if obs.phase == READY and rev <= generation]
    ready_revision = max(ready) if ready else None
    serving = (
        f"; revision {ready_revision} keeps serving"
        if ready_revision is not None and ready_revision != generation
        else ""
    )
    latest = by_revision.get(generation)
    if latest is not None and latest.phase == READY:
        return ObservedStatus(ContainerStatus.DEPLOYED, "", "", generation)
    if latest is not None and latest.phase == FAILED:
        message = f"revision {generation}: {latest.message or latest.reason}{serving}"
        return ObservedStatus(
            ContainerStatus.FAILED, latest.reason or "Failed", message, ready_revision
        )
    if latest is not None:
        detail = latest.message or "starting"
        reason = latest.reason or "Deploying"
    else:
        detail = runtime_reason or "waiting for the runtime"
        reason = "Deploying" if not runtime_reason else "RuntimeUnavailable"
    return ObservedStatus(
        ContainerStatus.DEPLOYING,
        reason,
        f"revision {generation}: {detail}{serving}",
        ready_revision,
    )


def apply_observed_status(container: Container, observed: ObservedStatus) -> bool:
    """Copy an observed status onto the container; True when anything changed."""
    current = (
        container.status,
        container.status_reason,
        container.status_message,
        container.ready_revision,
    )
    new = (observed.status, observed.reason[:128], observed.message, observed.ready_revision)
    if current == new:
        return False
    (
        container.status,
        container.status_reason,
        container.status_message,
        container.ready_revision,
    ) = new
    return True


def mark_spec_changed(container: Container) -> None:
    """A new revision was written: the container deploys until the runtime reports on it."""
    container.generation += 1
    container.date_updated = utcnow()
    container.status = ContainerStatus.DEPLOYING
    container.status_reason = "Deploying"
    container.status_message = f"revision {container.generation}: waiting for the runtime"


def status_reason_text(container: Container) -> str | None:
    """The human-readable reason shown as ``statusReason`` (None when all is well)."""
    if not container.status_reason and not container.status_message:
        return None
    if container.status_message:
        return f"{container.status_reason}: {container.status_message}"
    return container.status_reason
