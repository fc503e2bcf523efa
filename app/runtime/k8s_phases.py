"""A revision's deploy phases read from its pods' own status (Kubernetes and Knative runtimes).

The Docker runtime stamps the moments it sees on the engine container; on a cluster the kubelet
records them on the pod, so ``pod_moments`` reads them back (pure, over the pods' JSON form as
the API serves it, which keeps the table tests close to real objects):

- ``scheduled``: the ``PodScheduled`` condition's ``lastTransitionTime`` once it is ``True``
  (the pod was bound to a node);
- ``imageReady``: the first start of the app container when its status has an ``imageID`` (the
  kubelet resolved the image, so it was pulled or found). The pod's ``Initialized`` condition is
  *not* used: it turns true once init containers are done, which for a pod without any is right
  after scheduling, before the kubelet even asks for the app image, so it proves nothing about
  that image. The kubelet keeps no pull-finished time in the pod status (only as a ``Pulled``
  Event, which Dockyard's RBAC does not read), so on a cluster image pull time shows within
  ``scheduled -> imageReady`` and ``imageReady -> started`` is zero;
- ``started``: the earliest ``startedAt`` of the app container (``state.running``, or
  ``state.terminated``/``lastState.terminated`` for one that has already exited). Sidecars
  (Knative's ``queue-proxy``) are ignored when the pod has a container named ``app``;
- ``ready``: the ``Ready`` condition's ``lastTransitionTime`` once it is ``True`` (the readiness
  probe passed).

Each phase takes the earliest moment over the revision's pods: the timeline describes how the
revision first came up; the reconciler records first-seen-wins, so a pod started later by the
autoscaler or a restart never moves a recorded moment. Kubernetes timestamps have one-second
resolution.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from app.domain import phases


def parse_time(value: object) -> int | None:
    """An RFC 3339 timestamp (or a ``datetime``) as nanoseconds since the epoch; None when
    absent or unreadable."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1_000


def _condition_time(status: Mapping[str, Any], kind: str) -> int | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return parse_time(condition.get("lastTransitionTime"))
    return None


def _started_at(container: Mapping[str, Any]) -> int | None:
    """When this container (first) started, from its current or last state."""
    found = [
        parse_time(((container.get(which) or {}).get(state) or {}).get("startedAt"))
        for which, state in (
            ("state", "running"),
            ("state", "terminated"),
            ("lastState", "terminated"),
        )
    ]
    known = [moment for moment in found if moment is not None]
    return min(known) if known else None


def pod_moments_of(pod: Mapping[str, Any], *, app_container: str = "app") -> dict[str, int]:
    """The deploy phases one pod's status shows (see the module docstring); ``app_container``
    names Dockyard's container (``k8s_manifests.CONTAINER_NAME``)."""
    status = pod.get("status") or {}
    moments: dict[str, int] = {}
    scheduled = _condition_time(status, "PodScheduled")
    if scheduled is not None:
        moments[phases.SCHEDULED] = scheduled
    containers = status.get("containerStatuses") or []
    # Dockyard's own container when present: sidecars (Knative's queue-proxy, a mesh proxy)
    # start on their own schedule and say nothing about the user's image.
    own = [c for c in containers if c.get("name") == app_container] or containers
    starts = [
        (start, bool(container.get("imageID")))
        for container in own
        if (start := _started_at(container)) is not None
    ]
    if starts:
        moments[phases.STARTED] = min(start for start, _ in starts)
    with_image = [start for start, has_image in starts if has_image]
    if with_image:
        moments[phases.IMAGE_READY] = min(with_image)
    ready = _condition_time(status, "Ready")
    if ready is not None:
        moments[phases.READY] = ready
    return moments


def pod_moments(
    pods: Iterable[Mapping[str, Any]], *, app_container: str = "app"
) -> tuple[tuple[str, int], ...]:
    """A revision's phases from all its pods: the earliest moment of each, in phase order
    (``RevisionState.moments``)."""
    earliest: dict[str, int] = {}
    for pod in pods:
        for phase, at in pod_moments_of(pod, app_container=app_container).items():
            earliest[phase] = min(at, earliest.get(phase, at))
    return tuple(sorted(earliest.items(), key=lambda item: phases.RANK[item[0]]))
