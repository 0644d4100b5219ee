"""The database handle (rag_platform.lib.store.db): URLs, ping, SQLite settings, migrations."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from rag_platform.lib.store import MetadataStore, normalize_database_url
from rag_platform.lib.store.db import MIGRATIONS_DIR
from rag_platform.lib.store.schema import Base
from rag_platform_tests.lib.store.factories import TABLES
from rag_platform_tests.utils.services import (
    fresh_postgres_database,
    postgres_dsn,
    require_postgres,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
#: The newest migration.
HEAD = "0008"


def _alembic(conn: Connection, action: str, revision: str) -> None:
    """Run ``alembic upgrade|downgrade revision`` on ``conn`` (inside its transaction)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = conn
    getattr(command, action)(config, revision)


def _statuses(conn: Connection) -> dict[str, str]:
    rows = conn.execute(text("SELECT version, status FROM index_versions"))
    return {r.version: r.status for r in rows}


class TestDatabase:
    def test_ping_true_when_reachable(self, store: MetadataStore) -> None:
        assert store.ping() is True

    def test_ping_false_fast_for_unreachable_postgres(self) -> None:
        start = time.monotonic()
        store = MetadataStore("postgresql://postgres@127.0.0.1:1/test")
        try:
            assert store.ping() is False
        finally:
            store.dispose()
        assert time.monotonic() - start < 5.0

    def test_ping_false_for_unopenable_sqlite(self, tmp_path: Path) -> None:
        store = MetadataStore(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
        assert store.ping() is False

    def test_migrate_is_idempotent_and_keeps_data(self, store: MetadataStore) -> None:
        info, plaintext = store.create_api_key("acme", ["all"])
        store.migrate()
        store.migrate()
        with store.engine.connect() as conn:
            assert conn.execute(
                text("SELECT version_num FROM alembic_version")
            ).scalars().all() == [HEAD]
        assert store.authenticate(plaintext).key_id == info.key_id  # type: ignore[union-attr]

    def test_url_normalisation(self) -> None:
        assert (
            normalize_database_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
        )
        assert normalize_database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
        assert (
            normalize_database_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
        )
        assert normalize_database_url("sqlite:///x.db") == "sqlite:///x.db"
        with pytest.raises(ValueError, match="unsupported database"):
            MetadataStore("mysql://u@h/db")
        with pytest.raises(ValueError, match="invalid database URL"):
            MetadataStore("not a url")

    def test_sqlite_uses_wal(self, tmp_path: Path) -> None:
        with MetadataStore(f"sqlite:///{tmp_path / 'm.db'}") as store:
            store.migrate()
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


class TestMigrations:
    def test_migration_matches_the_models(self, empty_db_url: str) -> None:
        store = MetadataStore(empty_db_url)
        try:
            store.migrate()
            with store.engine.connect() as conn:
                assert set(inspect(conn).get_table_names()) >= TABLES
                context = MigrationContext.configure(conn, opts={"compare_type": True})
                diff = compare_metadata(context, Base.metadata)
            assert diff == []
        finally:
            store.dispose()

    def test_comparison_detects_a_drift(self, empty_db_url: str) -> None:
        """Guard against a comparison that can never fail."""
        store = MetadataStore(empty_db_url)
        try:
            store.migrate()
            with store.engine.begin() as conn:
                conn.exec_driver_sql("DROP INDEX ix_feedback_tenant")
            with store.engine.connect() as conn:
                diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert [d[0] for d in diff] == ["add_index"]
        finally:
            store.dispose()

    def test_0002_maps_failed_checks_to_rejected_and_back(self, empty_db_url: str) -> None:
        store = MetadataStore(empty_db_url)
        insert = text(
            "INSERT INTO index_versions (tenant, version, path, status, documents, chunks, "
            "config_hash, details, created_at) "
            "VALUES ('acme', :v, '', :s, 0, 0, '', '{}', '2026-01-01 00:00:00')"
        )
        old = {"v1": "failed_checks", "v2": "published", "v3": "retired", "v4": "deleted"}
        try:
            with store.engine.begin() as conn:
                _alembic(conn, "upgrade", "0001")
                conn.execute(text("INSERT INTO tenants VALUES ('acme', '', '2026-01-01')"))
                for version, status in old.items():
                    conn.execute(insert, {"v": version, "s": status})
            store.migrate()
            with store.engine.connect() as conn:
                assert _statuses(conn) == {**old, "v1": "rejected"}
            # The new CHECK refuses the dropped status; one published version per tenant holds.
            for statement in (
                "UPDATE index_versions SET status = 'failed_checks' WHERE version = 'v3'",
                "UPDATE index_versions SET status = 'published' WHERE version = 'v3'",
            ):
                with pytest.raises(IntegrityError), store.engine.begin() as conn:
                    conn.execute(text(statement))
            assert store.get_version("acme", "v1").status == "rejected"  # type: ignore[union-attr]
            with pytest.raises(ValueError, match="rejected"):
                store.publish_version("acme", "v1")
            with store.engine.begin() as conn:
                _alembic(conn, "downgrade", "0001")
                assert _statuses(conn) == old
        finally:
            store.dispose()

    def test_0003_records_first_publishes_of_existing_rows(self, empty_db_url: str) -> None:
        store = MetadataStore(empty_db_url)
        insert = text(
            "INSERT INTO index_versions (tenant, version, path, status, documents, chunks, "
            "config_hash, details, created_at, published_at) "
            "VALUES ('acme', :v, '', :s, 0, 0, '', '{}', :c, :p)"
        )
        rows = {  # version: (status, created_at, published_at)
            "v1": ("retired", "2026-01-01 00:00:00", "2026-01-02 00:00:00"),
            "v2": ("retired", "2026-01-03 00:00:00", None),  # retired: published before
            "v3": ("published", "2026-01-04 00:00:00", "2026-01-05 00:00:00"),
            "v4": ("built", "2026-01-06 00:00:00", None),
            "v5": ("rejected", "2026-01-07 00:00:00", None),
            "v6": ("deleted", "2026-01-08 00:00:00", "2026-01-09 00:00:00"),
            "v7": ("deleted", "2026-01-10 00:00:00", None),
        }
        try:
            with store.engine.begin() as conn:
                _alembic(conn, "upgrade", "0002")
                conn.execute(text("INSERT INTO tenants VALUES ('acme', '', '2026-01-01')"))
                for version, (status, created, published) in rows.items():
                    conn.execute(insert, {"v": version, "s": status, "c": created, "p": published})
            store.migrate()
            first = {
                v.version: v.first_published_at.isoformat()[:10] if v.first_published_at else None
                for v in store.list_versions("acme")
            }
            assert first == {
                "v1": "2026-01-02",
                "v2": "2026-01-03",
                "v3": "2026-01-05",
                "v4": None,
                "v5": None,
                "v6": "2026-01-09",
                "v7": None,
            }
            # The migrated rows follow the lifecycle: rollback picks the newest retired one.
            assert store.rollback("acme").version == "v2"
            with pytest.raises(ValueError, match="never published"):
                store.rollback("acme", "v4")
            with pytest.raises(ValueError, match="rejected"):
                store.publish_version("acme", "v5")
            with store.engine.begin() as conn:
                _alembic(conn, "downgrade", "0002")
                columns = {c["name"] for c in inspect(conn).get_columns("index_versions")}
                assert "first_published_at" not in columns
                assert _statuses(conn)["v2"] == "published"
                # The partial unique index survived the table copy.
                with pytest.raises(IntegrityError), conn.begin_nested():
                    conn.execute(text("UPDATE index_versions SET status = 'published'"))
        finally:
            store.dispose()

    def test_two_processes_migrating_at_once(self, empty_db_url: str) -> None:
        code = (
            "import sys; from rag_platform.lib.store import MetadataStore; "
            "s = MetadataStore(sys.argv[1]); s.migrate(); s.dispose()"
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, empty_db_url],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], results
        engine = create_engine(normalize_database_url(empty_db_url))
        try:
            with engine.connect() as conn:
                versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars()
                assert list(versions) == [HEAD]
        finally:
            engine.dispose()

    @pytest.mark.integration
    def test_fresh_postgres_database_is_dropped_afterwards(self) -> None:
        require_postgres()
        import psycopg

        with fresh_postgres_database() as url:
            name = url.rsplit("/", 1)[1]
            assert name.startswith("rag_test_")
            with MetadataStore(url) as store:
                assert store.ping()
        with psycopg.connect(postgres_dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        assert row is None
