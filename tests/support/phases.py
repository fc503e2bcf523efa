"""Recording a revision's deploy phases in the database, as the reconciler does, for tests of
what the APIs and streams make of them."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from app.domain.models import Revision

NS = 1_800_000_000_000_000_000
"""2027-01-15T08:00:00Z in nanoseconds: the first recorded phase."""


def record_phases(engine: Engine, container_id: str, revision: int, names: list[str]) -> None:
    """Store ``names`` as the revision's phases, one second apart (as the reconciler would)."""
    stored = [{"phase": name, "at": NS + i * 1_000_000_000} for i, name in enumerate(names)]
    with Session(engine) as session:
        session.execute(
            sa.update(Revision)
            .where(
                col(Revision.container_id) == container_id,
                col(Revision.revision_number) == revision,
            )
            .values(phases=stored)
        )
        session.commit()
