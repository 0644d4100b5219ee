"""The database handle of the metadata store: engine, transactions, locks, migrations, health.

SQLite (the embedded default, a file under ``RAG_HOME``) or PostgreSQL (scale-out) is chosen by
the URL. The SQLAlchemy engine is thread-safe, so one :class:`Database` serves every thread of a
process.

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
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, Table, create_engine, event, text
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

#: Folder holding the Alembic environment (env.py, versions/).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: How long a SQLite writer waits for the database lock before failing, in seconds.
SQLITE_BUSY_TIMEOUT_S = 30.0
#: PostgreSQL connect timeout, in seconds (libpq ``connect_timeout``).
PG_CONNECT_TIMEOUT_S = 3
#: Statement timeout of :meth:`Database.ping` on PostgreSQL, in milliseconds.
PING_STATEMENT_TIMEOUT_MS = 2000
#: Advisory-lock id serialising Alembic upgrades on PostgreSQL (arbitrary, fixed).
_MIGRATION_LOCK_ID = 0x7261675F6D6967  # "rag_mig"
#: Alembic's context proxy is process-global: one upgrade at a time per process.
_MIGRATE_LOCK = threading.Lock()


class NotFoundError(ValueError):
    """A referenced row (index version, query, ...) does not exist for the given tenant."""


def normalize_database_url(url: str) -> str:
    """Canonical SQLAlchemy URL: ``postgresql://`` and ``postgres://`` become
    ``postgresql+psycopg://`` (psycopg 3); an explicit driver is kept.

    Args:
        url: A ``sqlite://`` or ``postgresql://`` (``postgres://``) URL.

    Returns:
        The URL as SQLAlchemy renders it, password included.

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


def create_sqlite_folder(url: str) -> None:
    """Create the parent folder of a SQLite database file; nothing for other URLs.

    Args:
        url: A normalized database URL (:func:`normalize_database_url`).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            pool_timeout=10,
            connect_args={
                "connect_timeout": PG_CONNECT_TIMEOUT_S,
                "application_name": "rag-platform",
            },
        )
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or parsed.query.get("mode") == "memory"
    connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
    # In memory: one shared connection, or each pooled connection would see its own database.
    engine = (
        create_engine(url, connect_args=connect_args, poolclass=StaticPool)
        if in_memory
        else create_engine(url, connect_args=connect_args)
    )

    @event.listens_for(engine, "connect")
    def _sqlite_on_connect(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None  # type: ignore[attr-defined]  # we emit BEGIN ourselves
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


def dialect_insert(conn: Connection, table: Table) -> SqliteInsert | PgInsert:
    """An INSERT into ``table`` with its dialect's ``ON CONFLICT`` (SQLite or PostgreSQL)."""
    return (sqlite_insert if conn.dialect.name == "sqlite" else pg_insert)(table)


def lock_tenant(conn: Connection, purpose: str, tenant: str) -> None:
    """Serialise ``purpose`` (e.g. ``"publish"``) per tenant until the transaction ends.

    PostgreSQL: a transaction-scoped advisory lock on a 64-bit id derived from
    ``purpose:tenant``. SQLite: nothing to do, a write transaction (``BEGIN IMMEDIATE``) already
    holds the database's one write lock.

    Args:
        conn: A connection inside a write transaction.
        purpose: What is serialised.
        tenant: Tenant id.
    """
    if conn.dialect.name == "sqlite":
        return
    key = int.from_bytes(
        hashlib.sha256(f"{purpose}:{tenant}".encode()).digest()[:8], "big", signed=True
    )
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


class Database:
    """The engine of the metadata database and its transactions.

    Args:
        url: SQLAlchemy URL: ``sqlite:///path/metadata.db`` or ``postgresql://user@host/db``
            (rewritten to ``postgresql+psycopg://``). ``sqlite://`` (in memory) shares one
            connection and suits single-threaded tests only.

    Raises:
        ValueError: For an unsupported or malformed URL.
    """

    def __init__(self, url: str) -> None:
        self.url = normalize_database_url(url)
        self.engine = _create_engine(self.url)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Connection]:
        """One transaction, committed when the block exits normally, rolled back otherwise.

        Args:
            write: Whether the block writes; on SQLite a write transaction takes the write lock
                up front (``BEGIN IMMEDIATE``).

        Yields:
            The connection to run statements on.

        Raises:
            sqlalchemy.exc.OperationalError: The database cannot be reached.
        """
        with self.engine.connect() as conn:
            if write:
                conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    def migrate(self) -> None:
        """Upgrade the schema to the newest Alembic revision (idempotent).

        The whole upgrade runs in one transaction holding a lock (PostgreSQL: an advisory
        transaction lock; SQLite: ``BEGIN IMMEDIATE``), so processes starting at once run it one
        after the other and the later ones find the schema at head and do nothing.

        Raises:
            sqlalchemy.exc.OperationalError: The database cannot be reached.
        """
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
        with _MIGRATE_LOCK, self.transaction() as conn:
            if conn.dialect.name != "sqlite":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def ping(self) -> bool:
        """Whether the database answers ``SELECT 1`` (connect timeout 3 s, statement 2 s).

        Never raises.
        """
        try:
            with self.engine.connect() as conn:
                if conn.dialect.name != "sqlite":
                    conn.exec_driver_sql(
                        f"SET LOCAL statement_timeout = {PING_STATEMENT_TIMEOUT_MS}"
                    )
                return conn.exec_driver_sql("SELECT 1").scalar() == 1
        except Exception:
            return False

    def dispose(self) -> None:
        """Close every pooled connection (call before the process exits or forks)."""
        self.engine.dispose()
