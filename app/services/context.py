"""What every service function needs: the database, the configuration and the change listeners."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy.engine import Engine

from app.domain.gpus import GpuCatalog
from app.domain.spec import Limits
from app.runtime.base import Capabilities

ChangeKind = Literal["spec", "traffic", "deleted"]
ChangeListener = Callable[[str, ChangeKind], None]
"""Called with the container id and what changed, from the worker thread that committed:
``spec`` (a new revision), ``traffic`` (targets changed, no new revision) or ``deleted``."""


@dataclass
class ServiceContext:
    """Shared by REST, GraphQL and the reconciler; one per process."""

    engine: Engine
    catalog: GpuCatalog
    limits: Limits
    ingress_domain: str
    capabilities: Capabilities = field(
        default_factory=lambda: Capabilities(scale_to_zero=True, traffic_split=True)
    )
    """Of the runtime in use (set by the server); decides which scaling and traffic to accept."""
    listeners: list[ChangeListener] = field(default_factory=list)

    def notify(self, container_id: str, kind: ChangeKind = "spec") -> None:
        """Tell listeners (reconciler, publishers) that a container's desired state changed."""
        for listener in self.listeners:
            listener(container_id, kind)
