"""Encryption at rest: the ``data_keys`` table (per-tenant data keys, wrapped by the master key).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

One row per tenant and key version: the wrapped key (base64; NULL once destroyed by
crypto-shredding), the id of the master key that wraps it, and when it was created, last
re-wrapped (``rag-platform keys rotate-master``) and destroyed.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("wrapped", sa.Text(), nullable=True),
        sa.Column("master_key_id", sa.String(length=200), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("rotated_at", _TS, nullable=True),
        sa.Column("destroyed_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("tenant", "version", name=op.f("pk_data_keys")),
    )


def downgrade() -> None:
    op.drop_table("data_keys")
