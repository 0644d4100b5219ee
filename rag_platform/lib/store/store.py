"""The metadata store: tenants, API keys, index versions, query log, feedback, audit, usage.

One :class:`MetadataStore` per process, shared by threads (the SQLAlchemy engine is
thread-safe). SQLite (the embedded default, a file under ``RAG_HOME``) or PostgreSQL (scale-out)
is chosen by the URL. Every public method is its own transaction and returns plain dataclasses
(or :class:`rag_platform.lib.models.Principal`), never ORM objects.

SQLite specifics: WAL journal (readers never block the writer), a 30 s busy timeout, foreign keys
on, and the pysqlite driver's own transaction handling replaced by explicit ``BEGIN`` statements
(the recipe in SQLAlchemy's pysqlite documentation, "Serializable isolation / Savepoints /
Transactional DDL"): write transactions start with ``BEGIN IMMEDIATE``, so two writers queue on
the database lock instead of failing half-way, and the migration's DDL is transactional.
PostgreSQL specifics: psycopg 3, ``pool_pre_ping``, a 3 s connect timeout, and transaction-scoped
advisory locks to serialise migrations and per-tenant publish/rollback.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Table,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from rag_platform.lib.models import Principal
from rag_platform.lib.store.keys import generate_api_key, hash_secret, parse_api_key, verify_secret
from rag_platform.lib.store.schema import (
    ROLES,
    USAGE_KINDS,
    VERSION_STATUSES,
    ApiKey,
    AuditLogRow,
    FeedbackRow,
    IndexVersionRow,
    QueryLogRow,
    Tenant,
    UsageEventRow,
    utcnow,
)
from rag_platform.lib.tenants import TENANT_ID_PATTERN

if TYPE_CHECKING:
    from rag_platform.settings import Settings

#: Folder holding the Alembic environment (env.py, versions/).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: How long a SQLite writer waits for the database lock before failing, in seconds.
SQLITE_BUSY_TIMEOUT_S = 30.0
#: PostgreSQL connect timeout, in seconds (libpq ``connect_timeout``).
PG_CONNECT_TIMEOUT_S = 3
#: Statement timeout of :meth:`MetadataStore.ping` on PostgreSQL, in milliseconds.
PING_STATEMENT_TIMEOUT_MS = 2000
#: Advisory-lock id serialising Alembic upgrades on PostgreSQL (arbitrary, fixed).
_MIGRATION_LOCK_ID = 0x7261675F6D6967  # "rag_mig"
#: Alembic's context proxy is process-global: one upgrade at a time per process.
_MIGRATE_LOCK = threading.Lock()

_t_tenant = cast(Table, Tenant.__table__)
_t_key = cast(Table, ApiKey.__table__)
_t_version = cast(Table, IndexVersionRow.__table__)
_t_query = cast(Table, QueryLogRow.__table__)
_t_feedback = cast(Table, FeedbackRow.__table__)
_t_audit = cast(Table, AuditLogRow.__table__)
_t_usage = cast(Table, UsageEventRow.__table__)


class NotFoundError(ValueError):
    """A referenced row (index version, query, ...) does not exist for the given tenant."""


# Return types ------------------------------------------------------------------------------


@dataclass
class ApiKeyInfo:
    """An API key as listed: everything but the secret and its hash."""

    key_id: str
    tenant: str
    name: str
    groups: list[str]
    role: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def is_active(self, now: datetime | None = None) -> bool:
        """Not revoked and not expired at ``now`` (default: the current time)."""
        now = now or utcnow()
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > now


@dataclass
class IndexVersion:
    """One index version of a tenant. ``details`` holds e.g. the evaluation metrics."""

    tenant: str
    version: str
    path: str
    status: str
    documents: int
    chunks: int
    config_hash: str
    details: dict[str, Any]
    created_at: datetime
    published_at: datetime | None


@dataclass(kw_only=True)
class QueryLogEntry:
    """One row of the query log (keyword-only construction).

    Times are milliseconds; ``question_masked`` must already be PII-masked by the caller.
    """

    query_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    tenant: str
    key_id: str = ""
    question_masked: str = ""
    top_k: int = 0
    filters: dict[str, Any] = field(default_factory=dict)
    cited_chunk_ids: list[str] = field(default_factory=list)
    hit_chunk_ids: list[str] = field(default_factory=list)
    index_version: str = ""
    latency_ms: float = 0.0
    embed_ms: float = 0.0
    search_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hit: bool = False
    status_code: int = 200
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class FeedbackEntry:
    """A rating (1..5) of a logged query."""

    feedback_id: str
    query_id: str
    tenant: str
    key_id: str
    rating: int
    type: str
    comment: str
    created_at: datetime


@dataclass
class AuditEntry:
    """One audit-log row. ``tenant`` is None for platform-wide actions."""

    id: int
    action: str
    tenant: str | None
    actor: str
    details: dict[str, Any]
    created_at: datetime


# Helpers -----------------------------------------------------------------------------------


def normalize_database_url(url: str) -> str:
    """Canonical SQLAlchemy URL: ``postgresql://`` and ``postgres://`` become
    ``postgresql+psycopg://`` (psycopg 3); an explicit driver is kept.

    Raises:
        ValueError: For a URL that is neither SQLite nor PostgreSQL, or that does not parse.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError
        raise ValueError(f"invalid database URL {url!r}: {exc}") from exc
    backend = parsed.drivername.split("+", 1)[0]
    if backend == "postgres":
        backend = "postgresql"
        parsed = parsed.set(drivername="postgresql")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database {backend!r}: use a sqlite:// or postgresql:// URL")
    return parsed.render_as_string(hide_password=False)


def _as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive value is taken to be UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not re.fullmatch(TENANT_ID_PATTERN, tenant):
        raise ValueError(
            f"invalid tenant id {tenant!r}: expected {TENANT_ID_PATTERN} "
            "(lowercase letters, digits, '-')"
        )
    return tenant


def _check_text(value: str, what: str, max_len: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"{what} must not be empty")
    if len(value) > max_len:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {max_len}")
    return value


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock id derived from ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _key_info(row: Row[Any]) -> ApiKeyInfo:
    return ApiKeyInfo(
        key_id=row.key_id,
        tenant=row.tenant,
        name=row.name,
        groups=list(row.groups or []),
        role=row.role,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def _version(row: Row[Any]) -> IndexVersion:
    return IndexVersion(
        tenant=row.tenant,
        version=row.version,
        path=row.path,
        status=row.status,
        documents=row.documents,
        chunks=row.chunks,
        config_hash=row.config_hash,
        details=dict(row.details or {}),
        created_at=row.created_at,
        published_at=row.published_at,
    )


def _query_values(entry: QueryLogEntry) -> dict[str, Any]:
    """The ``query_log`` column values of ``entry``."""
    return {
        "query_id": entry.query_id,
        "tenant": entry.tenant,
        "key_id": entry.key_id or "",
        "question_masked": entry.question_masked,
        "top_k": int(entry.top_k),
        "filters": dict(entry.filters),
        "cited_chunk_ids": list(entry.cited_chunk_ids),
        "hit_chunk_ids": list(entry.hit_chunk_ids),
        "index_version": entry.index_version or "",
        "latency_ms": float(entry.latency_ms),
        "embed_ms": float(entry.embed_ms),
        "search_ms": float(entry.search_ms),
        "prompt_tokens": int(entry.prompt_tokens),
        "completion_tokens": int(entry.completion_tokens),
        "cache_hit": bool(entry.cache_hit),
        "status_code": int(entry.status_code),
        "created_at": _as_utc(entry.created_at),
    }


def _query(row: Row[Any]) -> QueryLogEntry:
    return QueryLogEntry(
        query_id=row.query_id,
        tenant=row.tenant,
        key_id=row.key_id,
        question_masked=row.question_masked,
        top_k=row.top_k,
        filters=dict(row.filters or {}),
        cited_chunk_ids=list(row.cited_chunk_ids or []),
        hit_chunk_ids=list(row.hit_chunk_ids or []),
        index_version=row.index_version,
        latency_ms=row.latency_ms,
        embed_ms=row.embed_ms,
        search_ms=row.search_ms,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cache_hit=bool(row.cache_hit),
        status_code=row.status_code,
        created_at=row.created_at,
    )


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        in_memory = database in ("", ":memory:") or parsed.query.get("mode") == "memory"
        kwargs: dict[str, Any] = {
            "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
        }
        if in_memory:
            # One shared connection, or each pooled connection would see its own empty database.
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see module docstring)
            cursor = dbapi_conn.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_on_begin(conn: Connection) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine

    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        pool_timeout=10,
        connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S, "application_name": "rag-platform"},
    )


# The store ---------------------------------------------------------------------------------


class MetadataStore:
    """Tenants, API keys, index versions, query log, feedback, audit log and usage events.

    Args:
        url: SQLAlchemy URL: ``sqlite:///path/metadata.db`` or ``postgresql://user@host/db``
            (rewritten to ``postgresql+psycopg://``). ``sqlite://`` (in memory) shares one
            connection and suits single-threaded tests only.
        pepper: Server-side secret mixed into API-key hashes (``Settings.key_pepper``). Keys
            created under one pepper do not authenticate under another.

    Raises:
        ValueError: For an unsupported or malformed URL, or an empty pepper.

    Database errors (``sqlalchemy.exc.OperationalError`` when the database is unreachable)
    propagate from every method except :meth:`ping`.
    """

    def __init__(self, url: str, pepper: str = "dev") -> None:
        if not pepper:
            raise ValueError("the key pepper must not be empty")
        self.url = normalize_database_url(url)
        self._pepper = pepper
        self._engine = _create_engine(self.url)
        self._is_sqlite = self._engine.dialect.name == "sqlite"

    @classmethod
    def from_settings(cls, settings: Settings) -> MetadataStore:
        """The store configured by ``settings.resolved_database_url`` and ``key_pepper``.

        Creates the parent folder of a SQLite database file. Does not migrate.
        """
        url = normalize_database_url(settings.resolved_database_url)
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return cls(url, pepper=settings.key_pepper)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tests and tooling)."""
        return self._engine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    # Lifecycle -----------------------------------------------------------------------------

    def migrate(self) -> None:
        """Upgrade the schema to the newest Alembic revision (idempotent).

        The whole upgrade runs in one transaction holding a lock (PostgreSQL: an advisory
        transaction lock; SQLite: ``BEGIN IMMEDIATE``), so processes starting at once run it one
        after the other and the later ones find the schema at head and do nothing.
        """
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
        with _MIGRATE_LOCK, self._engine.connect() as conn:
            conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                if not self._is_sqlite:
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_ID}
                    )
                config.attributes["connection"] = conn
                command.upgrade(config, "head")

    def ping(self) -> bool:
        """Whether the database answers ``SELECT 1`` (connect timeout 3 s, statement 2 s).

        Never raises.
        """
        try:
            with self._engine.connect() as conn:
                if not self._is_sqlite:
                    conn.exec_driver_sql(
                        f"SET LOCAL statement_timeout = {PING_STATEMENT_TIMEOUT_MS}"
                    )
                return conn.exec_driver_sql("SELECT 1").scalar() == 1
        except Exception:
            return False

    def dispose(self) -> None:
        """Close every pooled connection (call before the process exits or forks)."""
        self._engine.dispose()

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[Connection]:
        """One transaction; SQLite write transactions take the write lock up front."""
        with self._engine.connect() as conn:
            if write:
                conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    def _lock_tenant(self, conn: Connection, purpose: str, tenant: str) -> None:
        """Serialise ``purpose`` per tenant (SQLite: the IMMEDIATE transaction already does)."""
        if not self._is_sqlite:
            conn.execute(
                text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(f"{purpose}:{tenant}")}
            )

    def _insert(self, table: Any) -> Any:
        return (sqlite_insert if self._is_sqlite else pg_insert)(table)

    def _ensure_tenant(self, conn: Connection, tenant: str, name: str = "") -> None:
        stmt = self._insert(_t_tenant).values(tenant_id=tenant, name=name, created_at=utcnow())
        if name:
            stmt = stmt.on_conflict_do_update(index_elements=["tenant_id"], set_={"name": name})
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=["tenant_id"])
        conn.execute(stmt)

    def _audit(
        self, conn: Connection, action: str, tenant: str | None, actor: str, details: dict[str, Any]
    ) -> None:
        conn.execute(
            _t_audit.insert().values(
                action=_check_text(action, "action", 64),
                tenant=tenant,
                actor=_check_text(actor, "actor", 200, allow_empty=True),
                details=dict(details),
                created_at=utcnow(),
            )
        )

    # Tenants -------------------------------------------------------------------------------

    def upsert_tenant(self, tenant_id: str, name: str = "") -> None:
        """Create the tenant, or update its display name when ``name`` is given.

        Raises:
            ValueError: If ``tenant_id`` does not match ``TENANT_ID_PATTERN``.
        """
        _check_tenant(tenant_id)
        _check_text(name, "tenant name", 200, allow_empty=True)
        with self._tx() as conn:
            self._ensure_tenant(conn, tenant_id, name)

    def list_tenants(self) -> list[str]:
        """Tenant ids, sorted."""
        with self._tx(write=False) as conn:
            return list(conn.scalars(select(_t_tenant.c.tenant_id).order_by(_t_tenant.c.tenant_id)))

    # API keys ------------------------------------------------------------------------------

    def create_api_key(
        self,
        tenant: str,
        groups: list[str],
        role: str = "reader",
        expires_at: datetime | None = None,
        name: str = "",
        actor: str = "cli",
    ) -> tuple[ApiKeyInfo, str]:
        """Create an API key for ``tenant`` (the tenant row is created if missing).

        Args:
            tenant: Tenant id.
            groups: ACL groups the key's principal belongs to (may be empty: sees nothing).
            role: ``"reader"`` or ``"admin"``.
            expires_at: Optional expiry (naive = UTC); must lie in the future.
            name: Free label, e.g. the application using the key.
            actor: Who creates it, for the audit row ``key.create``.

        Returns:
            ``(info, plaintext)``; the plaintext ``rag_<key_id>_<secret>`` is never stored and
            cannot be shown again.

        Raises:
            ValueError: Bad tenant id, role, group names, or an expiry in the past.
        """
        _check_tenant(tenant)
        if role not in ROLES:
            raise ValueError(f"invalid role {role!r}: expected one of {', '.join(ROLES)}")
        if isinstance(groups, str) or not all(isinstance(g, str) and g.strip() for g in groups):
            raise ValueError(f"groups must be a list of non-empty strings, got {groups!r}")
        _check_text(name, "key name", 200, allow_empty=True)
        now = utcnow()
        if expires_at is not None:
            expires_at = _as_utc(expires_at)
            if expires_at <= now:
                raise ValueError(f"expires_at {expires_at.isoformat()} is not in the future")
        key_id, plaintext = generate_api_key()
        parsed = parse_api_key(plaintext)
        assert parsed is not None  # our own format
        info = ApiKeyInfo(
            key_id=key_id,
            tenant=tenant,
            name=name,
            groups=list(dict.fromkeys(groups)),
            role=role,
            created_at=now,
            expires_at=expires_at,
            revoked_at=None,
        )
        with self._tx() as conn:
            self._ensure_tenant(conn, tenant)
            conn.execute(
                _t_key.insert().values(
                    key_id=key_id,
                    tenant=tenant,
                    name=name,
                    secret_hash=hash_secret(parsed[1], self._pepper),
                    groups=info.groups,
                    role=role,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
            self._audit(
                conn,
                "key.create",
                tenant,
                actor,
                {
                    "key_id": key_id,
                    "name": name,
                    "groups": info.groups,
                    "role": role,
                    "expires_at": expires_at.isoformat() if expires_at else None,
                },
            )
        return info, plaintext

    def authenticate(self, plaintext: str) -> Principal | None:
        """The principal of an API key, or None.

        None for a malformed key, an unknown key id, a wrong secret (compared in constant time
        with ``hmac.compare_digest``), a revoked or an expired key. Looks the key up on every
        call (nothing cached), so revocation takes effect on the next request.
        """
        parsed = parse_api_key(plaintext)
        if parsed is None:
            return None
        key_id, secret = parsed
        with self._tx(write=False) as conn:
            row = conn.execute(select(_t_key).where(_t_key.c.key_id == key_id)).first()
        if row is None:
            # Same work as for a known key, so timing does not reveal which key ids exist.
            verify_secret(secret, "0" * 64, self._pepper)
            return None
        if not verify_secret(secret, row.secret_hash, self._pepper):
            return None
        if row.revoked_at is not None:
            return None
        if row.expires_at is not None and row.expires_at <= utcnow():
            return None
        return Principal(
            key_id=row.key_id,
            tenant=row.tenant,
            groups=tuple(row.groups or ()),
            role=row.role,
            name=row.name,
        )

    def revoke_api_key(self, key_id: str, actor: str = "cli") -> bool:
        """Revoke a key (audit ``key.revoke``).

        Returns:
            True if the key existed and was active; False if unknown or already revoked.
        """
        with self._tx() as conn:
            row = conn.execute(
                select(_t_key.c.tenant, _t_key.c.revoked_at).where(_t_key.c.key_id == key_id)
            ).first()
            if row is None or row.revoked_at is not None:
                return False
            conn.execute(
                update(_t_key).where(_t_key.c.key_id == key_id).values(revoked_at=utcnow())
            )
            self._audit(conn, "key.revoke", row.tenant, actor, {"key_id": key_id})
            return True

    def list_api_keys(self, tenant: str | None = None) -> list[ApiKeyInfo]:
        """Keys (revoked and expired included), oldest first; never the hash."""
        cols = [c for c in _t_key.c if c.name != "secret_hash"]
        stmt = select(*cols).order_by(_t_key.c.created_at, _t_key.c.key_id)
        if tenant is not None:
            stmt = stmt.where(_t_key.c.tenant == tenant)
        with self._tx(write=False) as conn:
            return [_key_info(r) for r in conn.execute(stmt)]

    # Index versions ------------------------------------------------------------------------

    def _version_row(self, conn: Connection, tenant: str, version: str) -> Row[Any] | None:
        return conn.execute(
            select(_t_version).where(_t_version.c.tenant == tenant, _t_version.c.version == version)
        ).first()

    def _require_version(self, conn: Connection, tenant: str, version: str) -> Row[Any]:
        row = self._version_row(conn, tenant, version)
        if row is None:
            raise NotFoundError(f"no index version {version!r} for tenant {tenant!r}")
        return row

    def register_version(
        self,
        tenant: str,
        version: str,
        path: str,
        documents: int,
        chunks: int,
        config_hash: str,
        details: dict[str, Any] | None = None,
    ) -> IndexVersion:
        """Record a newly built index version with status ``built``.

        Registering an existing, unpublished version again (a retried run) overwrites its
        path, counts, config hash and details and resets it to ``built``.

        Args:
            tenant: Tenant id.
            version: Version label, unique per tenant (<= 100 characters).
            path: Shard directory (Edge) or collection name (server).
            documents: Documents in the index (>= 0).
            chunks: Chunks (points) in the index (>= 0).
            config_hash: Hash of the configuration that built it.
            details: Free JSON-serialisable metadata.

        Raises:
            ValueError: Bad arguments, or the version is currently published.
        """
        _check_tenant(tenant)
        _check_text(version, "version", 100)
        if documents < 0 or chunks < 0:
            raise ValueError(f"counts must be >= 0, got documents={documents}, chunks={chunks}")
        values = {
            "path": str(path),
            "status": "built",
            "documents": int(documents),
            "chunks": int(chunks),
            "config_hash": config_hash,
            "details": dict(details or {}),
            "published_at": None,
        }
        with self._tx() as conn:
            self._ensure_tenant(conn, tenant)
            existing = self._version_row(conn, tenant, version)
            if existing is None:
                conn.execute(
                    _t_version.insert().values(
                        tenant=tenant, version=version, created_at=utcnow(), **values
                    )
                )
            elif existing.status == "published":
                raise ValueError(
                    f"version {version!r} of tenant {tenant!r} is published; "
                    "register a new version instead"
                )
            else:
                conn.execute(
                    update(_t_version).where(_t_version.c.id == existing.id).values(**values)
                )
            return _version(self._require_version(conn, tenant, version))

    def set_version_status(
        self, tenant: str, version: str, status: str, details: dict[str, Any] | None = None
    ) -> IndexVersion:
        """Set the status of an unpublished version, merging ``details`` into its details.

        Raises:
            ValueError: Unknown status; ``published`` (use :meth:`publish_version`); or the
                version is the published one (publish or roll back to another first).
            NotFoundError: The version does not exist.
        """
        if status not in VERSION_STATUSES:
            raise ValueError(
                f"invalid status {status!r}: expected one of {', '.join(VERSION_STATUSES)}"
            )
        if status == "published":
            raise ValueError("use publish_version() to publish a version")
        with self._tx() as conn:
            row = self._require_version(conn, tenant, version)
            if row.status == "published":
                raise ValueError(
                    f"version {version!r} of tenant {tenant!r} is published; publish or roll "
                    "back to another version before changing its status"
                )
            merged = {**(row.details or {}), **(details or {})}
            conn.execute(
                update(_t_version)
                .where(_t_version.c.id == row.id)
                .values(status=status, details=merged)
            )
            return _version(self._require_version(conn, tenant, version))

    def set_version_details(
        self, tenant: str, version: str, details: dict[str, Any]
    ) -> IndexVersion:
        """Merge ``details`` (top-level keys) into the version's details.

        Raises:
            NotFoundError: The version does not exist.
        """
        with self._tx() as conn:
            row = self._require_version(conn, tenant, version)
            merged = {**(row.details or {}), **details}
            conn.execute(update(_t_version).where(_t_version.c.id == row.id).values(details=merged))
            return _version(self._require_version(conn, tenant, version))

    def _swap_published(
        self, conn: Connection, target: Row[Any], action: str, actor: str
    ) -> IndexVersion:
        """Retire the tenant's published row and publish ``target``; caller holds the lock."""
        tenant = target.tenant
        previous = conn.execute(
            select(_t_version.c.id, _t_version.c.version).where(
                _t_version.c.tenant == tenant, _t_version.c.status == "published"
            )
        ).first()
        if previous is not None:
            conn.execute(
                update(_t_version).where(_t_version.c.id == previous.id).values(status="retired")
            )
        conn.execute(
            update(_t_version)
            .where(_t_version.c.id == target.id)
            .values(status="published", published_at=utcnow())
        )
        self._audit(
            conn,
            action,
            tenant,
            actor,
            {"version": target.version, "previous": previous.version if previous else None},
        )
        return _version(self._require_version(conn, tenant, target.version))

    def publish_version(self, tenant: str, version: str, actor: str = "pipeline") -> IndexVersion:
        """Make ``version`` the tenant's served index, atomically (audit ``index.publish``).

        In one transaction, serialised per tenant, the published row (if any) becomes
        ``retired`` and this one ``published`` with ``published_at``; the partial unique index
        guarantees at most one published row per tenant even against other writers. Publishing
        the already published version returns it unchanged.

        Raises:
            NotFoundError: The version does not exist.
            ValueError: Its status is not ``built`` or ``retired``.
        """
        with self._tx() as conn:
            self._lock_tenant(conn, "publish", tenant)
            row = self._require_version(conn, tenant, version)
            if row.status == "published":
                return _version(row)
            if row.status not in ("built", "retired"):
                raise ValueError(
                    f"cannot publish version {version!r} of tenant {tenant!r}: its status is "
                    f"{row.status!r} (only built or retired versions can be published)"
                )
            return self._swap_published(conn, row, "index.publish", actor)

    def rollback(
        self, tenant: str, to_version: str | None = None, actor: str = "cli"
    ) -> IndexVersion:
        """Serve an earlier version again (audit ``index.rollback``), atomically like publish.

        Args:
            tenant: Tenant id.
            to_version: The version to serve; default: the most recently created ``retired``
                version older than the published one (or the newest retired one if none is
                published).
            actor: Who rolls back.

        Raises:
            ValueError: No retired version to roll back to; the target is deleted, already
                published, or has a status other than ``retired``/``built``.
            NotFoundError: ``to_version`` does not exist.
        """
        with self._tx() as conn:
            self._lock_tenant(conn, "publish", tenant)
            current = conn.execute(
                select(_t_version).where(
                    _t_version.c.tenant == tenant, _t_version.c.status == "published"
                )
            ).first()
            if to_version is None:
                stmt = select(_t_version).where(
                    _t_version.c.tenant == tenant, _t_version.c.status == "retired"
                )
                if current is not None:
                    stmt = stmt.where(_t_version.c.id < current.id)
                target = conn.execute(stmt.order_by(_t_version.c.id.desc()).limit(1)).first()
                if target is None:
                    where = f" older than {current.version!r}" if current is not None else ""
                    raise ValueError(
                        f"tenant {tenant!r} has no retired index version{where} to roll back to"
                    )
            else:
                target = self._require_version(conn, tenant, to_version)
                if target.status == "deleted":
                    raise ValueError(
                        f"cannot roll back tenant {tenant!r} to {to_version!r}: it was deleted"
                    )
                if target.status == "published":
                    raise ValueError(
                        f"version {to_version!r} of tenant {tenant!r} is already published"
                    )
                if target.status not in ("retired", "built"):
                    raise ValueError(
                        f"cannot roll back tenant {tenant!r} to {to_version!r}: its status is "
                        f"{target.status!r}"
                    )
            return self._swap_published(conn, target, "index.rollback", actor)

    def get_published_version(self, tenant: str) -> IndexVersion | None:
        """The version the API serves for ``tenant``, or None (one indexed lookup)."""
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(_t_version).where(
                    _t_version.c.tenant == tenant, _t_version.c.status == "published"
                )
            ).first()
        return _version(row) if row is not None else None

    def get_version(self, tenant: str, version: str) -> IndexVersion | None:
        """One version, or None."""
        with self._tx(write=False) as conn:
            row = self._version_row(conn, tenant, version)
        return _version(row) if row is not None else None

    def list_versions(self, tenant: str) -> list[IndexVersion]:
        """All versions of ``tenant``, newest first (every status, ``deleted`` included)."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(_t_version)
                .where(_t_version.c.tenant == tenant)
                .order_by(_t_version.c.created_at.desc(), _t_version.c.id.desc())
            )
            return [_version(r) for r in rows]

    # Query log and feedback ----------------------------------------------------------------

    def log_query(self, entry: QueryLogEntry) -> str:
        """Append a query-log row; returns its ``query_id``.

        Raises:
            ValueError: Bad tenant id or query id.
            sqlalchemy.exc.IntegrityError: The query id was logged before.
        """
        _check_tenant(entry.tenant)
        _check_text(entry.query_id, "query_id", 36)
        with self._tx() as conn:
            conn.execute(_t_query.insert().values(**_query_values(entry)))
        return entry.query_id

    def log_queries(self, entries: list[QueryLogEntry]) -> int:
        """Append query-log rows in one transaction (one multi-row INSERT).

        Rows whose ``query_id`` is already logged are skipped (``ON CONFLICT DO NOTHING``), so
        a batch retried after a lost commit acknowledgement writes each row once.

        Returns:
            How many rows were new.

        Raises:
            ValueError: A bad tenant id or query id (nothing is written).
            sqlalchemy.exc.OperationalError: The database cannot be reached.
        """
        for entry in entries:
            _check_tenant(entry.tenant)
            _check_text(entry.query_id, "query_id", 36)
        if not entries:
            return 0
        stmt = (
            self._insert(_t_query)
            .on_conflict_do_nothing(index_elements=["query_id"])
            .returning(_t_query.c.query_id)
        )
        with self._tx() as conn:
            written = conn.execute(stmt, [_query_values(e) for e in entries]).all()
        return len(written)

    def get_query(self, query_id: str) -> QueryLogEntry | None:
        """One query-log row, or None."""
        with self._tx(write=False) as conn:
            row = conn.execute(select(_t_query).where(_t_query.c.query_id == query_id)).first()
        return _query(row) if row is not None else None

    def list_queries(
        self, tenant: str, since: datetime | None = None, until: datetime | None = None
    ) -> list[QueryLogEntry]:
        """The tenant's queries with ``since <= created_at < until``, oldest first."""
        stmt = select(_t_query).where(_t_query.c.tenant == tenant)
        if since is not None:
            stmt = stmt.where(_t_query.c.created_at >= _as_utc(since))
        if until is not None:
            stmt = stmt.where(_t_query.c.created_at < _as_utc(until))
        stmt = stmt.order_by(_t_query.c.created_at, _t_query.c.query_id)
        with self._tx(write=False) as conn:
            return [_query(r) for r in conn.execute(stmt)]

    def add_feedback(
        self,
        query_id: str,
        tenant: str,
        key_id: str,
        rating: int,
        type: str,
        comment: str = "",
    ) -> str:
        """Store a rating of a logged query; returns the new feedback id (uuid4).

        Args:
            query_id: The ``query_id`` the API returned with the answer.
            tenant: The caller's tenant; must own the query.
            key_id: The caller's key id.
            rating: 1 (bad) .. 5 (good).
            type: Kind of feedback, e.g. ``"answer"``, ``"citation"`` (<= 32 characters).
            comment: Free text (<= 4000 characters).

        Raises:
            ValueError: Rating not an integer in 1..5, empty type, comment too long.
            NotFoundError: No query ``query_id`` for ``tenant`` (also when it belongs to another
                tenant: the message does not reveal which).
        """
        if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
            raise ValueError(f"rating must be an integer from 1 to 5, got {rating!r}")
        _check_text(type, "feedback type", 32)
        _check_text(comment, "comment", 4000, allow_empty=True)
        feedback_id = str(uuid.uuid4())
        with self._tx() as conn:
            owner = conn.scalar(select(_t_query.c.tenant).where(_t_query.c.query_id == query_id))
            if owner is None or owner != tenant:
                raise NotFoundError(f"no query {query_id!r} for tenant {tenant!r}")
            conn.execute(
                _t_feedback.insert().values(
                    feedback_id=feedback_id,
                    query_id=query_id,
                    tenant=tenant,
                    key_id=key_id or "",
                    rating=rating,
                    type=type,
                    comment=comment,
                    created_at=utcnow(),
                )
            )
        return feedback_id

    def list_feedback(self, tenant: str, query_id: str | None = None) -> list[FeedbackEntry]:
        """The tenant's feedback (optionally for one query), oldest first."""
        stmt = select(_t_feedback).where(_t_feedback.c.tenant == tenant)
        if query_id is not None:
            stmt = stmt.where(_t_feedback.c.query_id == query_id)
        stmt = stmt.order_by(_t_feedback.c.created_at, _t_feedback.c.feedback_id)
        with self._tx(write=False) as conn:
            return [
                FeedbackEntry(
                    feedback_id=r.feedback_id,
                    query_id=r.query_id,
                    tenant=r.tenant,
                    key_id=r.key_id,
                    rating=r.rating,
                    type=r.type,
                    comment=r.comment,
                    created_at=r.created_at,
                )
                for r in conn.execute(stmt)
            ]

    # Audit ---------------------------------------------------------------------------------

    def audit(self, action: str, tenant: str | None, actor: str, details: dict[str, Any]) -> None:
        """Append an audit row (``details`` must be JSON-serialisable).

        Raises:
            ValueError: Empty or over-long action, bad tenant id.
        """
        if tenant is not None:
            _check_tenant(tenant)
        with self._tx() as conn:
            self._audit(conn, action, tenant, actor, details or {})

    def list_audit(self, tenant: str | None = None, action: str | None = None) -> list[AuditEntry]:
        """Audit rows in the order written (oldest first), optionally for one tenant/action."""
        stmt = select(_t_audit)
        if tenant is not None:
            stmt = stmt.where(_t_audit.c.tenant == tenant)
        if action is not None:
            stmt = stmt.where(_t_audit.c.action == action)
        with self._tx(write=False) as conn:
            return [
                AuditEntry(
                    id=r.id,
                    action=r.action,
                    tenant=r.tenant,
                    actor=r.actor,
                    details=dict(r.details or {}),
                    created_at=r.created_at,
                )
                for r in conn.execute(stmt.order_by(_t_audit.c.id))
            ]

    # Usage ---------------------------------------------------------------------------------

    def record_usage(
        self,
        tenant: str,
        kind: str,
        quantity: float,
        run_id: str = "",
        at: datetime | None = None,
    ) -> None:
        """Record a metered quantity for the cost rollup.

        Args:
            tenant: Tenant id.
            kind: One of ``USAGE_KINDS``: ``embedding_tokens`` (tokens), ``compute_seconds``
                (s), ``storage_bytes`` (bytes, a snapshot), ``llm_prompt_tokens``,
                ``llm_completion_tokens`` (tokens used outside the query API, e.g. LLM-judged
                evaluation), ``queries``.
            quantity: Finite, >= 0.
            run_id: The Dagster run that incurred it, if any.
            at: When (default now; naive = UTC).

        Raises:
            ValueError: Unknown kind, negative or non-finite quantity, bad tenant id.
        """
        _check_tenant(tenant)
        if kind not in USAGE_KINDS:
            raise ValueError(
                f"invalid usage kind {kind!r}: expected one of {', '.join(USAGE_KINDS)}"
            )
        quantity = float(quantity)
        if not math.isfinite(quantity) or quantity < 0:
            raise ValueError(f"usage quantity must be finite and >= 0, got {quantity}")
        _check_text(run_id, "run_id", 200, allow_empty=True)
        with self._tx() as conn:
            conn.execute(
                _t_usage.insert().values(
                    tenant=tenant,
                    kind=kind,
                    quantity=quantity,
                    run_id=run_id,
                    at=_as_utc(at) if at is not None else utcnow(),
                )
            )

    def usage_by_day(self, tenant: str, day: date) -> dict[str, float]:
        """Usage of ``tenant`` on UTC day ``day`` ([00:00, 24:00) UTC), summed per kind.

        Returns:
            Every kind of ``USAGE_KINDS`` (0.0 when nothing was recorded). Usage events are
            summed per kind; on top, the query log contributes ``llm_prompt_tokens`` and
            ``llm_completion_tokens`` (sums of its token columns) and ``queries`` (its row
            count, every status). Query traffic must therefore be logged with
            :meth:`log_query` only, not also as usage events, or it is counted twice.
        """
        start = datetime.combine(day, time.min, tzinfo=UTC)
        end = start + timedelta(days=1)
        totals = {kind: 0.0 for kind in USAGE_KINDS}
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(_t_usage.c.kind, func.sum(_t_usage.c.quantity))
                .where(_t_usage.c.tenant == tenant, _t_usage.c.at >= start, _t_usage.c.at < end)
                .group_by(_t_usage.c.kind)
            )
            for kind, total in rows:
                totals[kind] += float(total or 0.0)
            prompt, completion, count = conn.execute(
                select(
                    func.coalesce(func.sum(_t_query.c.prompt_tokens), 0),
                    func.coalesce(func.sum(_t_query.c.completion_tokens), 0),
                    func.count(),
                ).where(
                    _t_query.c.tenant == tenant,
                    _t_query.c.created_at >= start,
                    _t_query.c.created_at < end,
                )
            ).one()
        totals["llm_prompt_tokens"] += float(prompt)
        totals["llm_completion_tokens"] += float(completion)
        totals["queries"] += float(count)
        return totals
