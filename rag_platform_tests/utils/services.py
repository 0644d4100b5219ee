"""Real PostgreSQL and Redis for tests: URLs, availability checks, isolated databases.

The services are expected at 127.0.0.1:5432 (database ``test``, user ``postgres``, trust auth) and
127.0.0.1:6379. When one is unreachable, :func:`require_postgres` / :func:`require_redis` skip the
test, or fail it when ``RAG_REQUIRE_SERVICES=1`` (CI sets it, so a missing service can never turn
into a silently green run).

Usage::

    def test_x():
        with fresh_postgres_database() as url:   # postgresql+psycopg://.../rag_test_<hex>
            ...
        with flushed_redis() as url:             # redis://127.0.0.1:6379/15, FLUSHDB'd
            ...
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import pytest

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_USER = "postgres"
POSTGRES_DB = "test"
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
#: Redis logical database reserved for tests (flushed by :func:`flushed_redis`).
REDIS_TEST_DB = 15
#: Seconds to wait for a service before calling it unreachable.
CONNECT_TIMEOUT_S = 2


def postgres_url(database: str = POSTGRES_DB) -> str:
    """SQLAlchemy URL of a database on the test server (psycopg 3 driver)."""
    return f"postgresql+psycopg://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{database}"


def postgres_dsn(database: str = POSTGRES_DB) -> str:
    """libpq connection string (for ``psycopg.connect``) of a database on the test server."""
    return (
        f"host={POSTGRES_HOST} port={POSTGRES_PORT} user={POSTGRES_USER} dbname={database} "
        f"connect_timeout={CONNECT_TIMEOUT_S}"
    )


def redis_url(db: int = REDIS_TEST_DB) -> str:
    """URL of a logical database on the test Redis (default: the reserved test db 15)."""
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("RAG_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (RAG_REQUIRE_SERVICES=1 makes this a failure)", pytrace=False)
    pytest.skip(reason)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def postgres_available() -> bool:
    """Whether the test PostgreSQL answers ``SELECT 1`` (never raises)."""
    if not _port_open(POSTGRES_HOST, POSTGRES_PORT):
        return False
    try:
        import psycopg

        with psycopg.connect(postgres_dsn(), autocommit=True) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except Exception:
        return False


def redis_available() -> bool:
    """Whether the test Redis answers PING (never raises)."""
    if not _port_open(REDIS_HOST, REDIS_PORT):
        return False
    try:
        import redis

        client = redis.Redis(
            host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=CONNECT_TIMEOUT_S
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def require_postgres() -> str:
    """The test PostgreSQL URL; skips (or fails, see module docstring) when unreachable."""
    if not postgres_available():
        _unavailable(f"PostgreSQL not reachable at {POSTGRES_HOST}:{POSTGRES_PORT}/{POSTGRES_DB}")
    return postgres_url()


def require_redis() -> str:
    """The test Redis URL (db 15); skips (or fails, see module docstring) when unreachable."""
    if not redis_available():
        _unavailable(f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT}")
    return redis_url()


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database ``rag_test_<hex>``, dropped afterwards; yields its SQLAlchemy URL.

    Created and dropped through the ``test`` database with autocommit. The drop uses
    ``WITH (FORCE)`` (PostgreSQL >= 13), so connections a test left open do not leak the
    database. Skips (or fails) when PostgreSQL is unreachable.
    """
    require_postgres()
    import psycopg
    from psycopg import sql

    name = f"rag_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield postgres_url(name)
    finally:
        with psycopg.connect(postgres_dsn(), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def flushed_redis(db: int = REDIS_TEST_DB) -> Iterator[str]:
    """Yield the URL of Redis logical database ``db``, FLUSHDB'd before and after.

    Skips (or fails) when Redis is unreachable. Tests sharing ``db`` must not run concurrently
    (pytest runs them one after the other).
    """
    require_redis()
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    try:
        client.flushdb()
        yield redis_url(db)
    finally:
        try:
            client.flushdb()
        finally:
            client.close()


MARIADB_HOST = "127.0.0.1"
MARIADB_PORT = 3306


def mariadb_url(database: str) -> str:
    """SQLAlchemy URL of a database on the machine's MariaDB (root, no password; PyMySQL)."""
    return f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{database}?charset=utf8mb4"


@contextmanager
def fresh_mariadb_database() -> Iterator[str]:
    """A new, empty MariaDB database ``rag_test_<hex>``, dropped afterwards; yields its URL.

    Skips (or fails, see the module docstring) when MariaDB is unreachable.
    """
    if not _port_open(MARIADB_HOST, MARIADB_PORT):
        _unavailable(f"MariaDB not reachable at {MARIADB_HOST}:{MARIADB_PORT}")
    import pymysql

    name = f"rag_test_{uuid.uuid4().hex[:16]}"
    admin = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root", autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        admin.close()
    try:
        yield mariadb_url(name)
    finally:
        admin = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root", autocommit=True)
        try:
            with admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            admin.close()
