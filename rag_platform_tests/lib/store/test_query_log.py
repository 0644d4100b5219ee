"""The query log (rag_platform.lib.store.query_log), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rag_platform.lib.store import MetadataStore, QueryLogEntry
from rag_platform_tests.lib.store.factories import log_query


class TestQueryLog:
    def test_log_and_read_back_every_field(self, store: MetadataStore) -> None:
        entry = QueryLogEntry(
            tenant="acme",
            key_id="0123456789ab",
            question_masked="What did <PERSON> say?",
            top_k=5,
            filters={"source_ids": ["docs"], "acl_groups": ["all"]},
            cited_chunk_ids=["c1"],
            hit_chunk_ids=["c1", "c2"],
            index_version="v3",
            latency_ms=12.5,
            embed_ms=3.25,
            search_ms=1.5,
            prompt_tokens=100,
            completion_tokens=20,
            cache_hit=True,
            status_code=200,
        )
        assert store.log_queries([entry]) == 1
        assert store.get_query(entry.query_id) == entry
        assert store.get_query("00000000-0000-0000-0000-000000000000") is None
        # The query id is the primary key: logging the row again writes nothing.
        assert store.log_queries([entry]) == 0
        assert store.list_queries("acme") == [entry]

    def test_list_queries_by_tenant_and_time(self, store: MetadataStore) -> None:
        t0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
        for i in range(3):
            log_query(store, created_at=t0 + timedelta(hours=i))
        log_query(store, tenant="beta", created_at=t0)
        assert len(store.list_queries("acme")) == 3
        window = store.list_queries(
            "acme", since=t0 + timedelta(hours=1), until=t0 + timedelta(hours=2)
        )
        assert [q.created_at for q in window] == [t0 + timedelta(hours=1)]
        assert [
            q.created_at for q in store.list_queries("acme", since=t0 + timedelta(hours=1))
        ] == [t0 + timedelta(hours=1), t0 + timedelta(hours=2)]
