"""indexes for garbage collection: manifests by digest alone (is a stored digest a manifest
anywhere), manifest references by repository and digest (is a manifest or blob referenced)

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
    op.create_index(
        "ix_manifest_refs_repository_digest", "manifest_refs", ["repository", "digest", "kind", "manifest"]
    )


def downgrade() -> None:
    op.drop_index("ix_manifest_refs_repository_digest", table_name="manifest_refs")
    op.drop_index("ix_manifests_digest", table_name="manifests")
