"""manifest references by repository and digest: is a manifest or blob referenced within its
repository (garbage collection's mark and sweep), without scanning the repository's references

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 14:50:00
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_manifest_refs_repository_digest", "manifest_refs", ["repository", "digest", "kind", "manifest"]
    )


def downgrade() -> None:
    op.drop_index("ix_manifest_refs_repository_digest", table_name="manifest_refs")
