"""The query log keeps the request's trace id: ``query_log.trace_id``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

The 32-hex-digit W3C trace id of the request that wrote the row (``""`` for rows written before
tracing, or outside a traced request), so a slow or failed query found in the log leads to its
trace. SQLite cannot drop a column in place: the downgrade copies ``query_log`` in batch mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "query_log",
        sa.Column("trace_id", sa.String(32), nullable=False, server_default=""),
    )


def downgrade() -> None:
    with op.batch_alter_table("query_log") as batch:
        batch.drop_column("trace_id")
