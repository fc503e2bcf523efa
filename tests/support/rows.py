"""Reading what the service stored, for tests that check the database after the fact."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session, select

from app.domain.models import Revision


def stored_revision(engine: sa.Engine, container_id: str, number: int) -> Revision:
    """Revision ``number`` of ``container_id`` as stored now, detached from its session."""
    with Session(engine) as session:
        row = session.exec(
            select(Revision).where(
                Revision.container_id == container_id, Revision.revision_number == number
            )
        ).one()
        session.expunge(row)
        return row
