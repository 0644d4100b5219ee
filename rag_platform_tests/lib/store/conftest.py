"""Fixtures of the metadata-store tests: each test runs on SQLite (a file under tmp_path) and on
the real PostgreSQL.

PostgreSQL tests use one fresh database per test module (``fresh_postgres_database``), migrated
once and truncated before each test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from rag_platform.lib.store import MetadataStore
from rag_platform_tests.lib.store.factories import PEPPER, TABLES
from rag_platform_tests.utils.services import fresh_postgres_database


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        store = MetadataStore(url)
        store.migrate()
        store.dispose()
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    if request.param == "sqlite":
        s = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}", pepper=PEPPER)
        s.migrate()
    else:
        s = MetadataStore(request.getfixturevalue("pg_url"), pepper=PEPPER)
        with s.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(sorted(TABLES))} RESTART IDENTITY CASCADE"))
    yield s
    s.dispose()


def _fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a database with no tables at all."""
    yield from _fresh_url(request, tmp_path)
