"""Index-version lifecycle statuses: add ``rejected``, drop ``failed_checks``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

The CHECK constraint ``ck_index_versions_status`` becomes ``building, built, published,
retired, rejected, deleted`` (``building → built → published → retired``, or
``building → rejected``). Nothing ever set ``failed_checks``; a row that has it anyway is a
version a blocking check refused, so it becomes ``rejected`` (and back on downgrade).

SQLite cannot alter a constraint: batch mode copies ``index_versions`` into a new table with
the new CHECK and recreates its indexes, the partial unique index
``uq_index_versions_one_published`` (at most one published version per tenant) included, given
here explicitly so its ``WHERE`` clause cannot be lost in the copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CK = "ck_index_versions_status"
_ONE_PUBLISHED = "uq_index_versions_one_published"
_PUBLISHED = sa.text("status = 'published'")
_OLD = "status IN ('building', 'built', 'failed_checks', 'published', 'retired', 'deleted')"
_NEW = "status IN ('building', 'built', 'published', 'retired', 'rejected', 'deleted')"


def _replace_check(old_status: str, new_status: str, check: str) -> None:
    """Drop the CHECK, rename ``old_status`` to ``new_status`` in the data, add ``check``."""
    op.drop_index(_ONE_PUBLISHED, table_name="index_versions")
    with op.batch_alter_table("index_versions") as batch:
        batch.drop_constraint(op.f(_CK), type_="check")
    op.execute(
        sa.text("UPDATE index_versions SET status = :new WHERE status = :old").bindparams(
            new=new_status, old=old_status
        )
    )
    with op.batch_alter_table("index_versions") as batch:
        batch.create_check_constraint(op.f(_CK), check)
    op.create_index(
        _ONE_PUBLISHED,
        "index_versions",
        ["tenant"],
        unique=True,
        sqlite_where=_PUBLISHED,
        postgresql_where=_PUBLISHED,
    )


def upgrade() -> None:
    _replace_check("failed_checks", "rejected", _NEW)


def downgrade() -> None:
    _replace_check("rejected", "failed_checks", _OLD)
