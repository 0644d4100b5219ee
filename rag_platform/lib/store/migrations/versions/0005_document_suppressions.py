"""Erased documents stay out of syncs and searches: ``document_suppressions``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

One row per erased document (``tenant``, ``doc_id``), deleted when the document is released.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "document_suppressions",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("doc_id", sa.String(36), nullable=False),
        sa.Column("source_id", sa.String(100), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "doc_id", name="pk_document_suppressions"),
    )


def downgrade() -> None:
    op.drop_table("document_suppressions")
