"""events: the outbox, deliveries per sink, and per-sink counters

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-05 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None

NAME = sa.String(255).with_variant(sa.String(255, collation="C"), "postgresql")
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("repository", NAME, nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
    )
    op.create_index("ix_events_created_at", "events", ["created_at"])
    op.create_table(
        "event_deliveries",
        sa.Column("sink", sa.String(100), nullable=False),
        sa.Column("seq", SEQ, nullable=False),
        sa.Column("repository", NAME, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("delivered_at", sa.Float()),
        sa.Column("last_error", sa.Text()),
        sa.PrimaryKeyConstraint("sink", "seq"),
    )
    op.create_index("ix_event_deliveries_queue", "event_deliveries", ["sink", "state", "repository", "seq"])
    op.create_index("ix_event_deliveries_seq", "event_deliveries", ["seq"])
    op.create_table(
        "event_sink_stats",
        sa.Column("sink", sa.String(100), primary_key=True),
        sa.Column("delivered", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("failed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("dead", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("last_success_at", sa.Float()),
        sa.Column("last_failure_at", sa.Float()),
        sa.Column("last_error", sa.Text()),
    )


def downgrade() -> None:
    op.drop_table("event_sink_stats")
    op.drop_index("ix_event_deliveries_seq", "event_deliveries")
    op.drop_index("ix_event_deliveries_queue", "event_deliveries")
    op.drop_table("event_deliveries")
    op.drop_index("ix_events_created_at", "events")
    op.drop_table("events")
