"""Database tables: the desired state (container spec, revisions) and the observed status.

``generation`` counts spec changes and always equals the newest revision number;
``observed_generation`` is the generation the runtime status is about (Knative's split between
desired and observed state). A deleted container is tombstoned (``deleted_at``) at once and
purged by the reconciler only after its runtime objects are gone.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import JSON, Column, Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class ContainerStatus:
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    FAILED = "failed"


class Container(SQLModel, table=True):
    __tablename__ = "containers"
    __table_args__ = (
        sa.Index(
            "uq_containers_owner_name_live",
            "created_by",
            "name",
            unique=True,
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        ),
        sa.Index("ix_containers_owner_created", "created_by", "date_created"),
        # Lists (migration 0004): live containers newest first, per owner and for everyone.
        sa.Index(
            "ix_containers_live_owner_created_id",
            "created_by",
            "date_created",
            "id",
            "deleted_at",
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        ),
        sa.Index(
            "ix_containers_live_created_id",
            "date_created",
            "id",
            "deleted_at",
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        ),
    )

    id: str = Field(default_factory=lambda: str(uuid.uuid4()), primary_key=True, max_length=36)
    name: str = Field(max_length=63)
    created_by: str = Field(max_length=255)
    slug: str = Field(max_length=26, unique=True)
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: str = Field(default=ContainerStatus.DEPLOYING, max_length=16)
    status_reason: str = Field(default="", max_length=128)
    status_message: str = Field(default="", sa_column=Column(sa.Text, nullable=False, default=""))
    generation: int = Field(default=1)
    observed_generation: int = Field(default=0)
    ready_revision: int | None = Field(default=None)
    traffic: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    """Desired traffic, ``[{revision, latest, percent, tag}]`` (JSON names); None means 100 % to
    the newest ready revision. Changing it makes no new revision."""
    observed_urls: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    """URLs the runtime itself reports, ``{"url": main or null, "tags": {tag: url}}`` (Knative's
    ``status.url`` and ``status.traffic[].url``; migration 0006); None where Dockyard derives
    them from the slug and ``DOCKYARD_INGRESS_DOMAIN``."""
    date_created: datetime = Field(
        default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True), nullable=False)
    )
    date_updated: datetime = Field(
        default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True), nullable=False)
    )
    deleted_at: datetime | None = Field(
        default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=True, index=True)
    )


class ServingState:
    """Where one revision stands in the data plane (``revisions.serving_state``)."""

    STARTING = "starting"
    SERVING = "serving"
    SCALED_TO_ZERO = "scaled-to-zero"
    FAILED = "failed"
    RETIRED = "retired"


class Revision(SQLModel, table=True):
    __tablename__ = "revisions"
    __table_args__ = (
        sa.UniqueConstraint("container_id", "revision_number", name="uq_revisions_number"),
    )

    id: int | None = Field(default=None, primary_key=True)
    container_id: str = Field(foreign_key="containers.id", index=True, max_length=36)
    revision_number: int
    image: str = Field(max_length=512)
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_by: str = Field(max_length=255)
    date_created: datetime = Field(
        default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True), nullable=False)
    )
    # Observed and decided scale, written by the elected leader only; every API replica reads
    # them to program its own proxy. The spec above never changes after the revision is made.
    instances_desired: int = Field(default=1)
    """What the autoscaler (or the runtime, on Knative) decided; a new revision starts one."""
    instances_ready: int = Field(default=0)
    endpoints: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, default=list)
    )
    """``host:port`` of every ready instance, for the local data plane."""
    serving_state: str = Field(default="", max_length=16)
    state_reason: str = Field(default="", max_length=128)
    state_message: str = Field(default="", sa_column=Column(sa.Text, nullable=False, default=""))
    """Why the revision failed, kept after it scales to zero (Knative loses it)."""
    last_request_at: datetime | None = Field(
        default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=True)
    )
    phases: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, default=list)
    )
    """When the revision entered each deploy phase (``app.domain.phases``), first seen wins."""


class Installation(SQLModel, table=True):
    """One row naming this Dockyard installation; runtime objects carry it as a label."""

    __tablename__ = "installation"

    id: str = Field(primary_key=True, max_length=32)
    date_created: datetime = Field(
        default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True), nullable=False)
    )
