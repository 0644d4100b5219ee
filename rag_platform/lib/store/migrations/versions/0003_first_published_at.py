"""Index versions remember their first publish: ``first_published_at``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Rollback may only serve a version that was published before; ``published_at`` is rewritten by
every publish, so the fact needs its own column, set once by the first publish and never
cleared. Existing rows get it from what is known: a ``published`` or ``retired`` row (retired is
reached only from published) or any row with a ``published_at`` was published before, at
``published_at`` if recorded, else (the earliest time known) at ``created_at``.

SQLite cannot drop a column in place: the downgrade copies ``index_versions`` in batch mode and
recreates the partial unique index ``uq_index_versions_one_published`` explicitly, so its
``WHERE`` clause cannot be lost in the copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ONE_PUBLISHED = "uq_index_versions_one_published"
_PUBLISHED = sa.text("status = 'published'")


def upgrade() -> None:
    op.add_column(
        "index_versions",
        sa.Column("first_published_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.execute(
        sa.text(
            "UPDATE index_versions SET first_published_at = COALESCE(published_at, created_at) "
            "WHERE status IN ('published', 'retired') OR published_at IS NOT NULL"
        )
    )


def downgrade() -> None:
    op.drop_index(_ONE_PUBLISHED, table_name="index_versions")
    with op.batch_alter_table("index_versions") as batch:
        batch.drop_column("first_published_at")
    op.create_index(
        _ONE_PUBLISHED,
        "index_versions",
        ["tenant"],
        unique=True,
        sqlite_where=_PUBLISHED,
        postgresql_where=_PUBLISHED,
    )
