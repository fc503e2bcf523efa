"""Leader election on a ``coordination.k8s.io/v1`` Lease, so one reconciler runs among replicas.

Every replica runs a ``LeaseElector``; the one holding an unexpired Lease is the leader. Writes use
the Lease's ``resourceVersion`` (optimistic concurrency): when two replicas race for an expired
Lease, the API server accepts one replace and answers 409 to the other, which stays a follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from app.runtime.base import RuntimeAdapterError, RuntimeConflict
from app.runtime.k8s import translate_error

logger = logging.getLogger(__name__)


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _format(moment: datetime.datetime) -> str:
    """MicroTime as the API server writes it (RFC 3339 with microseconds)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: Any) -> datetime.datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


class LeaseElector:
    """Acquires and renews one Lease; ``is_leader`` says whether this process holds it now."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        *,
        name: str = "dockyard-reconciler",
        namespace: str = "dockyard",
        identity: str | None = None,
        lease_seconds: int = 15,
        renew_every: float = 5.0,
    ) -> None:
        self._api: Any = kubernetes.client.CoordinationV1Api(api_client)
        self.name = name
        self.namespace = namespace
        self.identity = identity or default_identity()
        self.lease_seconds = lease_seconds
        self.renew_every = renew_every
        self._leader_until: datetime.datetime | None = None

    async def is_leader(self) -> bool:
        """Whether this process held the Lease at its last successful renewal and it still runs."""
        return self._leader_until is not None and _now() < self._leader_until

    async def try_acquire(self) -> bool:
        """One election round: create, renew or take over the Lease; True when we hold it."""
        try:
            held = await asyncio.to_thread(self._round)
        except RuntimeConflict:
            held = False  # another replica wrote first; we stay a follower this round
        except RuntimeAdapterError:
            self._leader_until = None
            raise
        self._leader_until = (
            _now() + datetime.timedelta(seconds=self.lease_seconds) if held else None
        )
        return held

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Elect every ``renew_every`` seconds until ``stop`` is set; API errors are logged."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self.try_acquire()
            except RuntimeAdapterError as error:
                logger.warning("lease election failed: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.renew_every)

    async def release(self) -> None:
        """Give the Lease up (on shutdown) so another replica takes over without waiting."""
        if not await self.is_leader():
            return
        self._leader_until = None
        try:
            await asyncio.to_thread(self._release)
        except RuntimeAdapterError as error:
            logger.warning("releasing the lease failed: %s", error)

    def _body(self, acquired: str, transitions: int) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": acquired,
                "renewTime": _format(_now()),
                "leaseTransitions": transitions,
            },
        }

    def _round(self) -> bool:
        try:
            try:
                lease = self._api.read_namespaced_lease(self.name, self.namespace)
            except ApiException as error:
                if error.status != 404:
                    raise
                self._api.create_namespaced_lease(self.namespace, self._body(_format(_now()), 0))
                return True
            spec = lease.spec
            holder = spec.holder_identity if spec else None
            renewed = _parse(spec.renew_time) if spec else None
            duration = (spec.lease_duration_seconds if spec else None) or self.lease_seconds
            expired = renewed is None or _now() > renewed + datetime.timedelta(seconds=duration)
            if holder not in (None, "", self.identity) and not expired:
                return False
            transitions = (spec.lease_transitions if spec else None) or 0
            if holder == self.identity:
                acquired = _format(_parse(spec.acquire_time) or _now())
            else:
                acquired, transitions = _format(_now()), transitions + 1
            body = self._body(acquired, transitions)
            body["metadata"]["resourceVersion"] = lease.metadata.resource_version
            self._api.replace_namespaced_lease(self.name, self.namespace, body)
            return True
        except Exception as error:
            if isinstance(error, ApiException) and error.status == 409:
                raise RuntimeConflict("the lease changed underneath") from error
            if isinstance(error, ApiException | OSError) or type(error).__module__.startswith(
                "urllib3"
            ):
                raise translate_error(error) from error
            raise

    def _release(self) -> None:
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            body = self._body(
                _format(_parse(lease.spec.acquire_time) or _now()),
                lease.spec.lease_transitions or 0,
            )
            body["spec"]["holderIdentity"] = None
            body["metadata"]["resourceVersion"] = lease.metadata.resource_version
            self._api.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException as error:
            if error.status == 404:
                return
            raise translate_error(error) from error
