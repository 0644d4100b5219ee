"""Initial schema: tenants, API keys, index versions, query log, feedback, audit log, usage.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Frozen copy of ``rag_platform/lib/store/schema.py`` at this revision (a migration never imports
the live models); ``rag_platform_tests/lib/store/test_db.py`` checks that upgrading to head yields
exactly ``Base.metadata``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_PUBLISHED = sa.text("status = 'published'")


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenants")),
    )

    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(length=12), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.CheckConstraint("role IN ('reader', 'admin')", name=op.f("ck_api_keys_role")),
        sa.ForeignKeyConstraint(
            ["tenant"], ["tenants.tenant_id"],
            name=op.f("fk_api_keys_tenant_tenants"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_tenant"), "api_keys", ["tenant"], unique=False)

    op.create_table(
        "index_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("documents", sa.Integer(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("config_hash", sa.String(length=128), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("published_at", _TS, nullable=True),
        sa.CheckConstraint(
            "status IN ('building', 'built', 'failed_checks', 'published', 'retired', 'deleted')",
            name=op.f("ck_index_versions_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_index_versions")),
        sa.UniqueConstraint("tenant", "version", name=op.f("uq_index_versions_tenant_version")),
    )
    # At most one published version per tenant, enforced by the database.
    op.create_index(
        "uq_index_versions_one_published",
        "index_versions",
        ["tenant"],
        unique=True,
        sqlite_where=_PUBLISHED,
        postgresql_where=_PUBLISHED,
    )

    op.create_table(
        "query_log",
        sa.Column("query_id", sa.String(length=36), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("key_id", sa.String(length=12), nullable=False),
        sa.Column("question_masked", sa.Text(), nullable=False),
        sa.Column("top_k", sa.Integer(), nullable=False),
        sa.Column("filters", sa.JSON(), nullable=False),
        sa.Column("cited_chunk_ids", sa.JSON(), nullable=False),
        sa.Column("hit_chunk_ids", sa.JSON(), nullable=False),
        sa.Column("index_version", sa.String(length=100), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("embed_ms", sa.Float(), nullable=False),
        sa.Column("search_ms", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("query_id", name=op.f("pk_query_log")),
    )
    op.create_index(
        op.f("ix_query_log_tenant_created_at"), "query_log", ["tenant", "created_at"], unique=False
    )

    op.create_table(
        "feedback",
        sa.Column("feedback_id", sa.String(length=36), nullable=False),
        sa.Column("query_id", sa.String(length=36), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("key_id", sa.String(length=12), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.CheckConstraint("rating BETWEEN 1 AND 5", name=op.f("ck_feedback_rating")),
        sa.ForeignKeyConstraint(
            ["query_id"], ["query_log.query_id"],
            name=op.f("fk_feedback_query_id_query_log"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("feedback_id", name=op.f("pk_feedback")),
    )
    op.create_index(op.f("ix_feedback_query_id"), "feedback", ["query_id"], unique=False)
    op.create_index(op.f("ix_feedback_tenant"), "feedback", ["tenant"], unique=False)

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(
        op.f("ix_audit_log_tenant_created_at"), "audit_log", ["tenant", "created_at"], unique=False
    )

    op.create_table(
        "usage_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("quantity", sa.Float(), nullable=False),
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.CheckConstraint(
            "kind IN ('embedding_tokens', 'compute_seconds', 'storage_bytes', "
            "'llm_prompt_tokens', 'llm_completion_tokens', 'queries')",
            name=op.f("ck_usage_events_kind"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_events")),
    )
    op.create_index(op.f("ix_usage_events_tenant_at"), "usage_events", ["tenant", "at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_usage_events_tenant_at"), table_name="usage_events")
    op.drop_table("usage_events")
    op.drop_index(op.f("ix_audit_log_tenant_created_at"), table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index(op.f("ix_feedback_tenant"), table_name="feedback")
    op.drop_index(op.f("ix_feedback_query_id"), table_name="feedback")
    op.drop_table("feedback")
    op.drop_index(op.f("ix_query_log_tenant_created_at"), table_name="query_log")
    op.drop_table("query_log")
    op.drop_index("uq_index_versions_one_published", table_name="index_versions")
    op.drop_table("index_versions")
    op.drop_index(op.f("ix_api_keys_tenant"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")
