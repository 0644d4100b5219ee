"""Edits and deletions at a SQL table (real PostgreSQL) and an S3 bucket (moto's server) reach
the next published index version: the real tenant pipeline materialized in-process, twice."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from rag_platform.lib.index.edge import EdgeIndexReader
from rag_platform.lib.models import make_doc_id
from rag_platform.lib.store import MetadataStore
from rag_platform.runner import materialize_tenant
from rag_platform.settings import Settings
from rag_platform_tests.utils.processes import MotoServer
from rag_platform_tests.utils.services import fresh_postgres_database

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _published(settings: Settings, tenant: str) -> tuple[str, list[dict[str, Any]]]:
    store = MetadataStore.from_settings(settings)
    try:
        published = store.get_published_version(tenant)
    finally:
        store.dispose()
    assert published is not None
    with EdgeIndexReader(Path(published.path)) as reader:
        return published.version, [p for _, p in reader.scroll()]


def _tenant(tenant_id: str, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": tenant_id,
        "sources": [source],
        "pii": {"ner": False},
        "chunking": {"max_tokens": 200, "overlap_tokens": 32},
    }


@pytest.fixture
def postgres_docs(monkeypatch: pytest.MonkeyPatch) -> Iterator[sa.Engine]:
    with fresh_postgres_database() as url:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE kb (id text PRIMARY KEY, title text, body text, "
                    "updated_at timestamptz NOT NULL, groups text[])"
                )
            )
        monkeypatch.setenv("KB_URL", url)
        try:
            yield engine
        finally:
            engine.dispose()


def test_sql_edits_and_deletions_reach_the_published_index(
    rag_home: Settings, write_tenants: Any, postgres_docs: sa.Engine
) -> None:
    t0 = datetime(2026, 3, 1, 9, 0, tzinfo=datetime.now().astimezone().tzinfo)
    rows = [
        ("backup", "Backups", "Backups are kept for 30 days in the vault.", None),
        ("travel", "Travel", "Trains are preferred for trips under 500 km.", None),
        ("cafe", "Cafeteria", "The cafeteria closes at 3 pm on Fridays.", ["staff"]),
    ]
    with postgres_docs.begin() as conn:
        for id_, title, body, groups in rows:
            conn.execute(
                sa.text("INSERT INTO kb VALUES (:i, :t, :b, :u, :g)"),
                {"i": id_, "t": title, "b": body, "u": t0, "g": groups},
            )
    source = {
        "id": "kb",
        "type": "sql",
        "url_env": "KB_URL",
        "table": "kb",
        "text_column": "body",
        "acl_column": "groups",
        "full_sync_every": "P1D",
    }
    write_tenants(_tenant("sqlkb", source))
    first = materialize_tenant("sqlkb", rag_home)
    assert first.success and first.published, first.failed_checks
    v1, payloads = _published(rag_home, "sqlkb")
    travel, cafe = make_doc_id("sqlkb", "kb", "travel"), make_doc_id("sqlkb", "kb", "cafe")
    assert {travel, cafe} <= {p["doc_id"] for p in payloads}
    assert {p["doc_id"]: p["acl_groups"] for p in payloads}[cafe] == ["staff"]

    with postgres_docs.begin() as conn:
        conn.execute(
            sa.text("UPDATE kb SET body = :b, updated_at = :u WHERE id = 'travel'"),
            {"b": "Flights need approval by a director.", "u": t0 + timedelta(hours=1)},
        )
        conn.execute(sa.text("DELETE FROM kb WHERE id = 'cafe'"))
    second = materialize_tenant("sqlkb", rag_home)
    assert second.success and second.published, second.failed_checks
    meta = second.metadata["source_documents"]
    assert meta["changed"] == 1 and meta["deleted"] == 1
    assert meta["sources"]["kb"]["full"] is False  # the watermark listing
    assert 0 < second.embedded < first.embedded
    v2, payloads2 = _published(rag_home, "sqlkb")
    assert v2 != v1
    assert cafe not in {p["doc_id"] for p in payloads2}
    edited = [p for p in payloads2 if p["doc_id"] == travel]
    assert edited and all("approval" in p["text"] for p in edited)


def test_s3_edits_and_deletions_reach_the_published_index(
    rag_home: Settings, write_tenants: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MotoServer(tmp_path / "moto") as moto:
        s3: Any = moto.client()
        s3.create_bucket(Bucket="kbase")
        s3.put_object(Bucket="kbase", Key="p/backup.md", Body=b"# Backups\n\nKept 30 days.\n")
        s3.put_object(Bucket="kbase", Key="p/travel.md", Body=b"# Travel\n\nTrains under 500 km.\n")
        s3.put_object(
            Bucket="kbase",
            Key="p/cafe.txt",
            Body=b"The cafeteria closes at 3 pm.",
            Metadata={"acl-groups": "staff"},
        )
        monkeypatch.setenv("KB_KEY", "testing")
        monkeypatch.setenv("KB_SECRET", "testing")
        source = {
            "id": "bucket",
            "type": "s3",
            "bucket": "kbase",
            "prefix": "p/",
            "endpoint_url": moto.url,
            "access_key_id_env": "KB_KEY",
            "secret_access_key_env": "KB_SECRET",
        }
        write_tenants(_tenant("s3kb", source))
        first = materialize_tenant("s3kb", rag_home)
        assert first.success and first.published, first.failed_checks
        v1, payloads = _published(rag_home, "s3kb")
        travel = make_doc_id("s3kb", "bucket", "p/travel.md")
        cafe = make_doc_id("s3kb", "bucket", "p/cafe.txt")
        assert {p["doc_id"]: p["acl_groups"] for p in payloads}[cafe] == ["staff"]

        s3.put_object(
            Bucket="kbase", Key="p/travel.md", Body=b"# Travel\n\nFlights need approval.\n"
        )
        s3.delete_object(Bucket="kbase", Key="p/cafe.txt")
        second = materialize_tenant("s3kb", rag_home)
        assert second.success and second.published, second.failed_checks
        meta = second.metadata["source_documents"]
        assert meta["changed"] == 1 and meta["deleted"] == 1
        assert meta["sources"]["bucket"]["unchanged"] == 1
        v2, payloads2 = _published(rag_home, "s3kb")
        assert v2 != v1
        assert cafe not in {p["doc_id"] for p in payloads2}
        edited = [p for p in payloads2 if p["doc_id"] == travel]
        assert edited and all("approval" in p["text"] for p in edited)
