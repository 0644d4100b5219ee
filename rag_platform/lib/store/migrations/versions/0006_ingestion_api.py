"""Ingestion API: the ``writer`` role, ``ingest_jobs`` and ``webhook_deliveries``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

- ``ck_api_keys_role`` becomes ``reader, writer, admin`` (a ``writer`` key uploads and deletes
  documents of its tenant). SQLite cannot alter a constraint: batch mode copies ``api_keys``
  with the new CHECK (its foreign key and index are recreated from the reflected table).
- ``ingest_jobs``: one row per upload or deletion made through ``/v1/documents``, mapped to the
  Dagster run that syncs it through ``batch_id`` (the run's ``rag/batch`` tag).
- ``webhook_deliveries``: the delivery log of the per-tenant webhooks.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_CK = "ck_api_keys_role"


def _replace_role_check(check: str) -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(op.f(_CK), type_="check")
    with op.batch_alter_table("api_keys") as batch:
        batch.create_check_constraint(op.f(_CK), check)


def upgrade() -> None:
    _replace_role_check("role IN ('reader', 'writer', 'admin')")
    op.create_table(
        "ingest_jobs",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("doc_id", sa.String(length=36), nullable=False),
        sa.Column("key_id", sa.String(length=12), nullable=False),
        sa.Column("batch_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("requested_at", _TS, nullable=True),
        sa.CheckConstraint("kind IN ('upload', 'delete')", name=op.f("ck_ingest_jobs_kind")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_ingest_jobs")),
    )
    op.create_index(
        op.f("ix_ingest_jobs_tenant_batch_id"), "ingest_jobs", ["tenant", "batch_id"], unique=False
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.String(length=36), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.CheckConstraint(
            "status IN ('delivered', 'failed')", name=op.f("ck_webhook_deliveries_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("delivery_id", name=op.f("uq_webhook_deliveries_delivery_id")),
    )
    op.create_index(
        op.f("ix_webhook_deliveries_tenant_created_at"),
        "webhook_deliveries",
        ["tenant", "created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_deliveries_tenant_created_at"), table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index(op.f("ix_ingest_jobs_tenant_batch_id"), table_name="ingest_jobs")
    op.drop_table("ingest_jobs")
    op.execute(sa.text("DELETE FROM api_keys WHERE role = 'writer'"))
    _replace_role_check("role IN ('reader', 'admin')")
