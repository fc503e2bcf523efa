"""serverless: container traffic, per-revision scale and serving state

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("containers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("traffic", sa.JSON(), nullable=True))
    with op.batch_alter_table("revisions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("instances_desired", sa.Integer(), nullable=False, server_default="1")
        )
        batch_op.add_column(
            sa.Column("instances_ready", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("endpoints", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
        batch_op.add_column(
            sa.Column("serving_state", sa.String(length=16), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("state_reason", sa.String(length=128), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("state_message", sa.Text(), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("last_request_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("revisions", schema=None) as batch_op:
        for column in (
            "last_request_at",
            "state_message",
            "state_reason",
            "serving_state",
            "endpoints",
            "instances_ready",
            "instances_desired",
        ):
            batch_op.drop_column(column)
    with op.batch_alter_table("containers", schema=None) as batch_op:
        batch_op.drop_column("traffic")
