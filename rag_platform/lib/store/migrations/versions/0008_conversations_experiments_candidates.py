"""Conversations, online experiments in the query log, golden-set candidates from feedback.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

- ``conversations`` and ``conversation_messages``: per-principal conversation memory of
  ``/v1/conversations`` (text PII-masked), messages deleted with their conversation (they
  carry the tenant too, for per-tenant backups).
- ``query_log``: ``endpoint`` (``search``, ``query``, ``conversation``), ``experiment`` and
  ``variant`` (the retrieval variant a principal was assigned), ``''`` for older rows.
- ``golden_candidates``: low-rated queries proposed for the golden set and their review.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_QUERY_LOG_COLUMNS = (("endpoint", 16), ("experiment", 63), ("variant", 63))


def upgrade() -> None:
    with op.batch_alter_table("query_log") as batch:
        for name, length in _QUERY_LOG_COLUMNS:
            batch.add_column(
                sa.Column(name, sa.String(length=length), nullable=False, server_default="")
            )
    op.create_table(
        "conversations",
        sa.Column("conversation_id", sa.String(length=36), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("key_id", sa.String(length=12), nullable=False),
        sa.Column("title_masked", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", name=op.f("pk_conversations")),
    )
    op.create_index(
        op.f("ix_conversations_tenant_key_id"), "conversations", ["tenant", "key_id"], unique=False
    )
    op.create_index(
        op.f("ix_conversations_tenant_updated_at"),
        "conversations",
        ["tenant", "updated_at"],
        unique=False,
    )
    op.create_table(
        "conversation_messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("conversation_id", sa.String(length=36), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("content_masked", sa.Text(), nullable=False),
        sa.Column("standalone_masked", sa.Text(), nullable=False),
        sa.Column("rewrite", sa.String(length=16), nullable=False),
        sa.Column("query_id", sa.String(length=36), nullable=False),
        sa.Column("citations", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.CheckConstraint(
            "role IN ('user', 'assistant')", name=op.f("ck_conversation_messages_role")
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.conversation_id"],
            name=op.f("fk_conversation_messages_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversation_messages")),
        sa.UniqueConstraint(
            "conversation_id",
            "ordinal",
            name=op.f("uq_conversation_messages_conversation_id_ordinal"),
        ),
    )
    op.create_table(
        "golden_candidates",
        sa.Column("candidate_id", sa.String(length=36), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("query_id", sa.String(length=36), nullable=False),
        sa.Column("key_id", sa.String(length=12), nullable=False),
        sa.Column("question_masked", sa.Text(), nullable=False),
        sa.Column("retrieved", sa.JSON(), nullable=False),
        sa.Column("index_version", sa.String(length=100), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("relevant_doc_ids", sa.JSON(), nullable=False),
        sa.Column("reference_answer", sa.Text(), nullable=False),
        sa.Column("reviewer", sa.String(length=200), nullable=False),
        sa.Column("reviewed_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'accepted', 'rejected')",
            name=op.f("ck_golden_candidates_status"),
        ),
        sa.PrimaryKeyConstraint("candidate_id", name=op.f("pk_golden_candidates")),
        sa.UniqueConstraint(
            "tenant", "query_id", name=op.f("uq_golden_candidates_tenant_query_id")
        ),
    )
    op.create_index(
        op.f("ix_golden_candidates_tenant_status"),
        "golden_candidates",
        ["tenant", "status"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_golden_candidates_tenant_status"), table_name="golden_candidates")
    op.drop_table("golden_candidates")
    op.drop_table("conversation_messages")
    op.drop_index(op.f("ix_conversations_tenant_updated_at"), table_name="conversations")
    op.drop_index(op.f("ix_conversations_tenant_key_id"), table_name="conversations")
    op.drop_table("conversations")
    with op.batch_alter_table("query_log") as batch:
        for name, _ in reversed(_QUERY_LOG_COLUMNS):
            batch.drop_column(name)
