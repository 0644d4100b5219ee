"""Audit rows form a hash chain: ``prev_hash`` and ``row_hash``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Existing rows are chained in id order, the first one to the genesis hash. The hash is computed
by :func:`rag_platform.lib.store.audit.audit_row_hash`, imported rather than copied: the
canonical serialization is a format every later verification depends on, so there must be one
definition of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rag_platform.lib.store.audit import GENESIS_HASH, audit_row_hash
from rag_platform.lib.store.schema import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("prev_hash", sa.String(length=64), nullable=True))
    op.add_column("audit_log", sa.Column("row_hash", sa.String(length=64), nullable=True))
    audit = sa.table(
        "audit_log",
        sa.column("id", sa.Integer()),
        sa.column("action", sa.String()),
        sa.column("tenant", sa.String()),
        sa.column("actor", sa.String()),
        sa.column("details", sa.JSON()),
        sa.column("created_at", UTCDateTime()),
        sa.column("prev_hash", sa.String()),
        sa.column("row_hash", sa.String()),
    )
    conn = op.get_bind()
    prev = GENESIS_HASH
    for row in conn.execute(sa.select(audit).order_by(audit.c.id)).mappings().all():
        row_hash = audit_row_hash(
            id=row["id"],
            action=row["action"],
            tenant=row["tenant"],
            actor=row["actor"],
            details=row["details"],
            created_at=row["created_at"],
            prev_hash=prev,
        )
        conn.execute(
            audit.update()
            .where(audit.c.id == row["id"])
            .values(prev_hash=prev, row_hash=row_hash)
        )
        prev = row_hash


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("row_hash")
        batch.drop_column("prev_hash")
