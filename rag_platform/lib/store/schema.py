"""Tables of the metadata store (SQLAlchemy 2.0 declarative models).

This module is the source of truth for the schema; the Alembic migrations under
``migrations/versions`` must produce exactly ``Base.metadata`` (a test compares them with
``alembic.autogenerate.compare_metadata``).

Tables: ``tenants``, ``api_keys``, ``index_versions``, ``query_log``, ``feedback``,
``audit_log``, ``usage_events``, ``document_suppressions``, ``ingest_jobs``,
``webhook_deliveries``, ``data_keys``, ``conversations``, ``conversation_messages``,
``golden_candidates``. Every timestamp is a timezone-aware UTC ``datetime``
(:class:`UTCDateTime`). JSON columns use the portable ``sqlalchemy.JSON`` type (``JSON`` on
PostgreSQL, text on SQLite).

The models are used for their tables only: the repositories run Core statements and return
plain dataclasses (mapped by :func:`rag_platform.lib.store.rows.from_row`), so no ORM object
(and no session) ever leaves the store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

#: A JSON object as stored in a JSON column (``details``, ``filters``). Its values are whatever
#: ``json.loads`` produces, which a static type can only call ``Any``.
JSONObject = dict[str, Any]
#: Role of an API key.
Role = Literal["reader", "writer", "admin"]
#: Status of an index version: ``building → built → published → retired``, or
#: ``building|built → rejected`` (a blocking check failed); ``deleted`` once garbage collection
#: removed its shard. The allowed transitions: :data:`rag_platform.lib.store.lifecycle.TRANSITIONS`.
VersionStatus = Literal["building", "built", "published", "retired", "rejected", "deleted"]
#: Kind of usage event (an input of the daily cost rollup).
UsageKind = Literal[
    "embedding_tokens",
    "compute_seconds",
    "storage_bytes",
    "llm_prompt_tokens",
    "llm_completion_tokens",
    "queries",
]
#: What an ingestion job asks for.
JobKind = Literal["upload", "delete"]
#: Outcome of one webhook delivery attempt.
DeliveryStatus = Literal["delivered", "failed"]
#: Roles an API key may have.
ROLES: tuple[Role, ...] = get_args(Role)
#: Every index-version status, in lifecycle order.
VERSION_STATUSES: tuple[VersionStatus, ...] = get_args(VersionStatus)
#: Kinds of usage event.
USAGE_KINDS: tuple[UsageKind, ...] = get_args(UsageKind)

#: Deterministic constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_PUBLISHED = text("status = 'published'")


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class UTCDateTime(TypeDecorator[datetime]):
    """A ``DateTime(timezone=True)`` that always round-trips as an aware UTC ``datetime``.

    Bound values are converted to UTC (naive values are taken to be UTC already). SQLite has no
    time zone type, so UTC is stored without offset there and re-attached on load; PostgreSQL
    stores ``timestamptz`` and the loaded value is converted to UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def utcnow() -> datetime:
    """The current time as an aware UTC ``datetime``."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC ``datetime``; a naive value is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), JSONObject: JSON(), list[str]: JSON()}


class Tenant(Base):
    """A tenant known to the store (the registry YAML is the source of its configuration)."""

    __tablename__ = "tenants"

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key: tenant, ACL groups and role; the secret only as its peppered HMAC."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint(f"role IN ({_in(ROLES)})", name="role"),)

    key_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    tenant: Mapped[str] = mapped_column(
        String(63), ForeignKey("tenants.tenant_id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200), default="")
    secret_hash: Mapped[str] = mapped_column(String(64))
    groups: Mapped[list[str]] = mapped_column(default=list)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class IndexVersionRow(Base):
    """One built index of a tenant (a Qdrant Edge shard directory or a server collection).

    The partial unique index ``uq_index_versions_one_published`` guarantees, in the database,
    at most one ``published`` row per tenant (SQLite >= 3.8 and PostgreSQL both support partial
    indexes). ``published_at`` is the latest publish, ``first_published_at`` the first one (set
    once, never cleared: the version was published before and can be rolled back to).
    """

    __tablename__ = "index_versions"
    __table_args__ = (
        UniqueConstraint("tenant", "version"),
        CheckConstraint(f"status IN ({_in(VERSION_STATUSES)})", name="status"),
        Index(
            "uq_index_versions_one_published",
            "tenant",
            unique=True,
            sqlite_where=_PUBLISHED,
            postgresql_where=_PUBLISHED,
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(63))
    version: Mapped[str] = mapped_column(String(100))
    path: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16))
    documents: Mapped[int] = mapped_column(Integer, default=0)
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    config_hash: Mapped[str] = mapped_column(String(128), default="")
    details: Mapped[JSONObject] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column()
    first_published_at: Mapped[datetime | None] = mapped_column()


class QueryLogRow(Base):
    """One answered (or refused) query; the question is stored PII-masked only."""

    __tablename__ = "query_log"
    __table_args__ = (Index(None, "tenant", "created_at"),)

    query_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    key_id: Mapped[str] = mapped_column(String(12), default="")
    question_masked: Mapped[str] = mapped_column(Text, default="")
    top_k: Mapped[int] = mapped_column(Integer, default=0)
    filters: Mapped[JSONObject] = mapped_column(default=dict)
    cited_chunk_ids: Mapped[list[str]] = mapped_column(default=list)
    hit_chunk_ids: Mapped[list[str]] = mapped_column(default=list)
    index_version: Mapped[str] = mapped_column(String(100), default="")
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    embed_ms: Mapped[float] = mapped_column(Float, default=0.0)
    search_ms: Mapped[float] = mapped_column(Float, default=0.0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    status_code: Mapped[int] = mapped_column(Integer, default=200)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: W3C trace id (32 hex digits) of the request; "" when it was not traced.
    trace_id: Mapped[str] = mapped_column(String(32), default="", server_default="")
    endpoint: Mapped[str] = mapped_column(String(16), default="", server_default="")
    experiment: Mapped[str] = mapped_column(String(63), default="", server_default="")
    variant: Mapped[str] = mapped_column(String(63), default="", server_default="")


class FeedbackRow(Base):
    """A rating (1..5) of one logged query, by a key of the same tenant."""

    __tablename__ = "feedback"
    __table_args__ = (CheckConstraint("rating BETWEEN 1 AND 5", name="rating"),)

    feedback_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    query_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("query_log.query_id", ondelete="CASCADE"), index=True
    )
    tenant: Mapped[str] = mapped_column(String(63), index=True)
    key_id: Mapped[str] = mapped_column(String(12), default="")
    rating: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditLogRow(Base):
    """Who did what: key creation and revocation, publish, rollback, ...

    A hash chain (see :mod:`rag_platform.lib.store.audit`): ``prev_hash`` is the previous
    row's ``row_hash``, ``row_hash`` the SHA-256 of this row's canonical serialization.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "tenant", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str | None] = mapped_column(String(63))
    actor: Mapped[str] = mapped_column(String(200), default="")
    details: Mapped[JSONObject] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    row_hash: Mapped[str | None] = mapped_column(String(64))


class UsageEventRow(Base):
    """A metered quantity (tokens, seconds, bytes, queries) for the per-day cost rollup."""

    __tablename__ = "usage_events"
    __table_args__ = (
        Index(None, "tenant", "at"),
        CheckConstraint(f"kind IN ({_in(USAGE_KINDS)})", name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(32))
    quantity: Mapped[float] = mapped_column(Float)
    run_id: Mapped[str] = mapped_column(String(200), default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)


class DocumentSuppressionRow(Base):
    """An erased document: left out of every sync, index version and search until released.

    The primary key is ``(tenant, doc_id)``; releasing the document deletes the row (the audit
    log keeps the erasure and the release).
    """

    __tablename__ = "document_suppressions"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    doc_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    source_id: Mapped[str] = mapped_column(String(100), default="")
    uri: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(String(500), default="")
    actor: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IngestJobRow(Base):
    """A document upload or deletion made through the API, waiting for (or mapped to) the
    Dagster run that syncs it. ``batch_id`` is set when ``ingest_job_sensor`` requests the run
    (the run carries the tag ``rag/batch``); several jobs of one tenant share a batch."""

    __tablename__ = "ingest_jobs"
    __table_args__ = (
        Index(None, "tenant", "batch_id"),
        CheckConstraint("kind IN ('upload', 'delete')", name="kind"),
    )

    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(16))
    doc_id: Mapped[str] = mapped_column(String(36))
    key_id: Mapped[str] = mapped_column(String(12), default="")
    batch_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    requested_at: Mapped[datetime | None] = mapped_column()


class WebhookDeliveryRow(Base):
    """One delivery of a webhook event to one URL: the outcome of its last attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index(None, "tenant", "created_at"),
        CheckConstraint("status IN ('delivered', 'failed')", name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(String(36), unique=True)
    tenant: Mapped[str] = mapped_column(String(63))
    event: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DataKeyRow(Base):
    """A tenant's data key, stored only wrapped by the master key (:mod:`rag_platform.lib.crypto`).

    ``wrapped`` is the base64 of the wrapped key and ``master_key_id`` names the master key that
    wraps it; destroying the key (crypto-shredding) sets ``wrapped`` to NULL and
    ``destroyed_at``, so the version is never reused and data sealed under it never opens.
    """

    __tablename__ = "data_keys"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    wrapped: Mapped[str | None] = mapped_column(Text)
    master_key_id: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column()
    destroyed_at: Mapped[datetime | None] = mapped_column()


class ConversationRow(Base):
    """A conversation of one principal (``tenant``, ``key_id``); its messages are
    ``conversation_messages`` rows, deleted with it."""

    __tablename__ = "conversations"
    __table_args__ = (Index(None, "tenant", "key_id"), Index(None, "tenant", "updated_at"))

    conversation_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    key_id: Mapped[str] = mapped_column(String(12))
    title_masked: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConversationMessageRow(Base):
    """One turn of a conversation: the user's message (with the standalone question it was
    rewritten into) or the assistant's answer (with its citations and query-log id). Text is
    stored PII-masked only. ``tenant`` repeats the conversation's, so per-tenant backups and
    restores carry the messages."""

    __tablename__ = "conversation_messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "ordinal"),
        CheckConstraint("role IN ('user', 'assistant')", name="role"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("conversations.conversation_id", ondelete="CASCADE")
    )
    tenant: Mapped[str] = mapped_column(String(63))
    ordinal: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content_masked: Mapped[str] = mapped_column(Text, default="")
    standalone_masked: Mapped[str] = mapped_column(Text, default="")
    rewrite: Mapped[str] = mapped_column(String(16), default="")
    query_id: Mapped[str] = mapped_column(String(36), default="")
    citations: Mapped[list[str]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GoldenCandidateRow(Base):
    """A low-rated query proposed for the tenant's golden set, waiting for review (``pending``)
    or reviewed (``accepted`` with its relevance or reference answer, or ``rejected``)."""

    __tablename__ = "golden_candidates"
    __table_args__ = (
        UniqueConstraint("tenant", "query_id"),
        Index(None, "tenant", "status"),
        CheckConstraint("status IN ('pending', 'accepted', 'rejected')", name="status"),
    )

    candidate_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    query_id: Mapped[str] = mapped_column(String(36))
    key_id: Mapped[str] = mapped_column(String(12), default="")
    question_masked: Mapped[str] = mapped_column(Text, default="")
    retrieved: Mapped[list[JSONObject]] = mapped_column(JSON, default=list)
    index_version: Mapped[str] = mapped_column(String(100), default="")
    rating: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    relevant_doc_ids: Mapped[list[str]] = mapped_column(default=list)
    reference_answer: Mapped[str] = mapped_column(Text, default="")
    reviewer: Mapped[str] = mapped_column(String(200), default="")
    reviewed_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


#: The Core tables the repositories query (``Model.__table__``, typed).
tenants_table = cast(Table, Tenant.__table__)
api_keys_table = cast(Table, ApiKey.__table__)
index_versions_table = cast(Table, IndexVersionRow.__table__)
query_log_table = cast(Table, QueryLogRow.__table__)
feedback_table = cast(Table, FeedbackRow.__table__)
audit_log_table = cast(Table, AuditLogRow.__table__)
usage_events_table = cast(Table, UsageEventRow.__table__)
document_suppressions_table = cast(Table, DocumentSuppressionRow.__table__)
ingest_jobs_table = cast(Table, IngestJobRow.__table__)
webhook_deliveries_table = cast(Table, WebhookDeliveryRow.__table__)
data_keys_table = cast(Table, DataKeyRow.__table__)
conversations_table = cast(Table, ConversationRow.__table__)
conversation_messages_table = cast(Table, ConversationMessageRow.__table__)
golden_candidates_table = cast(Table, GoldenCandidateRow.__table__)
