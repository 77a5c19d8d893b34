"""manifests by digest alone: garbage collection asks which stored digests are a manifest anywhere

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 13:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_manifests_digest", "manifests", ["digest"])


def downgrade() -> None:
    op.drop_index("ix_manifests_digest", table_name="manifests")
