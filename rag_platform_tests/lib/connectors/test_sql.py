"""The SQL connector against the machine's real PostgreSQL and MariaDB: databases the tests
create, watermark incremental syncs, id-set reconciliation for deletions, ACL columns, a failing
source that keeps its documents, and read-only queries."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from rag_platform.lib.connectors.base import Deleted, SourceState, Unchanged
from rag_platform.lib.connectors.sql import SqlConnector
from rag_platform.lib.ingestion.sync import SourceSync
from rag_platform.lib.models import SourceDocument, make_doc_id
from rag_platform.lib.tenants import SqlSource, TenantConfig
from rag_platform_tests.utils.services import fresh_mariadb_database, fresh_postgres_database

pytestmark = pytest.mark.integration

META = sa.MetaData()
DOCS = sa.Table(
    "docs",
    META,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("title", sa.String(200)),
    sa.Column("body", sa.Text),
    sa.Column("updated_at", sa.DateTime),
    sa.Column("acl", sa.String(200)),
)
T0 = datetime(2026, 1, 1, 12, 0, 0)


@pytest.fixture(params=["postgresql", "mariadb"])
def db(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[sa.Engine]:
    """A fresh database on the real server with the ``docs`` table; its URL in ``DOCS_DB_URL``."""
    fresh = fresh_postgres_database if request.param == "postgresql" else fresh_mariadb_database
    with fresh() as url:
        engine = sa.create_engine(url)
        META.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                DOCS.insert(),
                [
                    {
                        "id": "a",
                        "title": "Alpha",
                        "body": "Backups are kept 30 days.",
                        "updated_at": T0,
                        "acl": None,
                    },
                    {
                        "id": "b",
                        "title": "Beta",
                        "body": "Trains under 500 km.",
                        "updated_at": T0,
                        "acl": "hr,finance",
                    },
                    {
                        "id": "c",
                        "title": "Gamma",
                        "body": "The cafeteria closes at 3 pm.",
                        "updated_at": T0,
                        "acl": "",
                    },
                ],
            )
        monkeypatch.setenv("DOCS_DB_URL", url)
        try:
            yield engine
        finally:
            engine.dispose()


def _source(**extra: object) -> dict:
    return {
        "id": "db",
        "type": "sql",
        "url_env": "DOCS_DB_URL",
        "table": "docs",
        "text_column": "body",
        "acl_column": "acl",
        "full_sync_every": "P1D",
        **extra,
    }


def _tenant(**extra: object) -> TenantConfig:
    return TenantConfig.model_validate({"id": "t", "sources": [_source(**extra)]})


def _id(native: str) -> str:
    return make_doc_id("t", "db", native)


class TestSqlSync:
    def test_edits_deletions_and_acl_reach_the_next_sync_incrementally(
        self, db: sa.Engine, tmp_path: Path
    ) -> None:
        sync = SourceSync(tmp_path / "state")
        first = sync.run(_tenant())
        assert sorted(first.added) == sorted(_id(x) for x in "abc")
        assert first.sources["db"].full and not first.failed_sources
        rows = first.frame.set_index("native_id")
        assert rows.loc["a", "acl_groups"] == ["all"]  # NULL: the tenant's default groups
        assert rows.loc["b", "acl_groups"] == ["finance", "hr"]
        assert rows.loc["c", "acl_groups"] == []  # explicitly empty: nobody
        assert rows.loc["b", "text"] == "Trains under 500 km."

        later = T0 + timedelta(hours=1)
        with db.begin() as conn:
            conn.execute(
                DOCS.update()
                .where(DOCS.c.id == "b")
                .values(body="Planes over 800 km.", updated_at=later)
            )
            conn.execute(DOCS.update().where(DOCS.c.id == "a").values(acl="ops", updated_at=later))
            conn.execute(DOCS.delete().where(DOCS.c.id == "c"))
            conn.execute(
                DOCS.insert().values(id="d", title="Delta", body="New policy.", updated_at=later)
            )
        second = sync.run(_tenant())
        report = second.sources["db"]
        assert not report.full  # the watermark, not a full listing
        assert report.listed == 3  # only the rows at or after the watermark: a, b, d
        assert second.changed == [_id("b")]
        assert second.added == [_id("d")]
        assert second.deleted == [_id("c")]
        assert second.acl_changed == [_id("a")]
        rows = second.frame.set_index("native_id")
        assert sorted(rows.index) == ["a", "b", "d"]
        assert rows.loc["b", "text"] == "Planes over 800 km."
        assert rows.loc["a", "acl_groups"] == ["ops"]
        assert report.cursor is not None and later.isoformat() in report.cursor

        third = sync.run(_tenant())  # nothing changed: the watermark rows come back unchanged
        assert not (third.added or third.changed or third.deleted or third.acl_changed)
        assert sorted(third.frame["native_id"]) == ["a", "b", "d"]

    def test_a_full_listing_finds_an_edit_without_an_updated_at_bump(
        self, db: sa.Engine, tmp_path: Path
    ) -> None:
        sync = SourceSync(tmp_path / "state")
        sync.run(_tenant())
        with db.begin() as conn:  # the watermark moves past T0
            conn.execute(
                DOCS.update().where(DOCS.c.id == "b").values(updated_at=T0 + timedelta(hours=1))
            )
        sync.run(_tenant())
        with db.begin() as conn:
            conn.execute(DOCS.update().where(DOCS.c.id == "a").values(body="Silently edited."))
        assert not sync.run(_tenant()).changed  # incremental: the watermark cannot see it
        full = sync.run(_tenant(), full=True)
        assert full.sources["db"].full and full.changed == [_id("a")]

    def test_an_unreachable_database_keeps_the_previous_documents(
        self, db: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sync = SourceSync(tmp_path / "state")
        first = sync.run(_tenant())
        monkeypatch.delenv("DOCS_DB_URL")
        failed = sync.run(_tenant())
        assert "DOCS_DB_URL" in failed.failed_sources["db"]
        assert not failed.deleted and len(failed.frame) == 3
        assert set(failed.frame["change"]) == {"unchanged"}
        assert failed.sources["db"].last_sync_at == first.sources["db"].last_sync_at

    def test_a_query_source_with_a_bad_row(self, db: sa.Engine, tmp_path: Path) -> None:
        with db.begin() as conn:
            conn.execute(DOCS.insert().values(id="e", title="Empty", body=None, updated_at=T0))
        source = SqlSource.model_validate(
            _source(
                table=None,
                query="SELECT id, title, body, updated_at, acl FROM docs WHERE id <> 'b'",
            )
        )
        connector = SqlConnector(source, ["all"])
        docs = list(connector.changes(SourceState(), full=True))
        assert [d.native_id for d in docs] == ["a", "c"]
        assert connector.problems == [("e", "missing text in column 'body'")]
        versions = {d.native_id: d.version for d in docs if isinstance(d, SourceDocument)}
        again = list(connector.changes(SourceState(connector.next_cursor, versions), full=False))
        assert all(isinstance(d, Unchanged) for d in again) and len(again) == 2
        with db.begin() as conn:
            conn.execute(DOCS.delete().where(DOCS.c.id == "a"))
        gone = list(connector.changes(SourceState(connector.next_cursor, versions), full=False))
        assert Deleted("a", "row no longer in the table or query") in gone


def test_a_query_runs_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fresh_postgres_database() as url:
        engine = sa.create_engine(url)
        META.create_all(engine)
        with engine.begin() as conn:
            conn.execute(DOCS.insert().values(id="a", title="A", body="x", updated_at=T0))
            conn.execute(sa.text("CREATE SEQUENCE hits"))
        monkeypatch.setenv("DOCS_DB_URL", url)
        # a query with a side effect (nextval writes the sequence) inside the subquery
        writing = "SELECT id, title, body, updated_at, acl FROM docs WHERE nextval('hits') > 0"
        result = SourceSync(tmp_path / "s").run(_tenant(table=None, query=writing))
        assert "read-only" in result.failed_sources["db"]
        with engine.connect() as conn:  # the sequence was never advanced
            assert conn.execute(sa.text("SELECT nextval('hits')")).scalar() == 1
        engine.dispose()
