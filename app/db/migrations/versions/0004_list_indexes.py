"""list indexes: live containers newest first, per owner and for everyone

Revision ID: 0004
Revises: 0003

Both are partial (``deleted_at IS NULL``, what every list asks for), follow the list order
(``date_created``, then ``id`` as the tie-breaker) and also carry ``deleted_at``, so that SQLite,
which checks the partial condition again per row, never leaves the index: a list page, its count
and a keyset (cursor) page read only the index, and an ``all=true`` list no longer sorts the whole
table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_LIVE = sa.text("deleted_at IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_containers_live_owner_created_id",
        "containers",
        ["created_by", "date_created", "id", "deleted_at"],
        sqlite_where=_LIVE,
        postgresql_where=_LIVE,
    )
    op.create_index(
        "ix_containers_live_created_id",
        "containers",
        ["date_created", "id", "deleted_at"],
        sqlite_where=_LIVE,
        postgresql_where=_LIVE,
    )


def downgrade() -> None:
    op.drop_index("ix_containers_live_created_id", table_name="containers")
    op.drop_index("ix_containers_live_owner_created_id", table_name="containers")
