"""The suppression list of erased documents, and the deletions erasure and retention use: on
SQLite and on the real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from rag_platform.lib.store import MetadataStore
from rag_platform.lib.store.schema import audit_log_table, feedback_table, query_log_table, utcnow
from rag_platform_tests.lib.store.factories import log_query

DOC = "5f0c7a52-3c1e-5a8e-9d0c-1b2a3c4d5e6f"


class TestSuppressions:
    def test_suppress_is_idempotent_and_release_is_audited(self, store: MetadataStore) -> None:
        store.upsert_tenant("acme")
        first = store.suppress_document("acme", DOC, "files", "a.md", "request 1", "cli")
        again = store.suppress_document("acme", DOC, "files", "a.md", "request 2", "cli")
        assert again.reason == "request 1" and again.created_at == first.created_at
        assert store.suppressed_doc_ids("acme") == {DOC}
        assert store.suppressed_doc_ids("globex") == frozenset()

        assert store.release_document("acme", DOC, actor="key:admin") is True
        assert store.release_document("acme", DOC) is False
        assert store.suppressed_doc_ids("acme") == frozenset()
        [row] = store.list_audit("acme", "document.release")
        assert row.details == {"doc_id": DOC} and row.actor == "key:admin"

    def test_bad_input_is_refused(self, store: MetadataStore) -> None:
        with pytest.raises(ValueError):
            store.suppress_document("acme", "x" * 37)
        with pytest.raises(ValueError):
            store.suppress_document("Not A Tenant", DOC)


class TestDeletions:
    def test_delete_one_principals_queries_and_feedback(self, store: MetadataStore) -> None:
        store.upsert_tenant("acme")
        mine = log_query(store, key_id="aaaaaaaaaaaa")
        theirs = log_query(store, key_id="bbbbbbbbbbbb")
        other_tenant = log_query(store, "globex", key_id="aaaaaaaaaaaa")
        store.add_feedback(mine, "acme", "bbbbbbbbbbbb", 4, "answer")  # on my query, by them
        store.add_feedback(theirs, "acme", "aaaaaaaaaaaa", 2, "answer", "my words")

        assert store.query_log.delete("acme", key_id="aaaaaaaaaaaa") == (1, 1)
        assert store.feedback.delete("acme", key_id="aaaaaaaaaaaa") == 1
        assert [q.query_id for q in store.list_queries("acme")] == [theirs]
        assert store.list_feedback("acme") == []
        assert [q.query_id for q in store.list_queries("globex")] == [other_tenant]

    def test_delete_before_a_cutoff(self, store: MetadataStore) -> None:
        store.upsert_tenant("acme")
        old, new = log_query(store), log_query(store)
        store.add_feedback(old, "acme", "k", 3, "answer")
        store.audit("x.old", "acme", "t", {})
        store.audit("x.new", "acme", "t", {})
        store.audit("x.platform", None, "t", {})
        long_ago = utcnow() - timedelta(days=400)
        with store.engine.begin() as conn:
            conn.execute(
                update(query_log_table)
                .where(query_log_table.c.query_id == old)
                .values(created_at=long_ago)
            )
            conn.execute(update(feedback_table).values(created_at=long_ago))
            conn.execute(
                update(audit_log_table)
                .where(audit_log_table.c.action.in_(["x.old", "x.platform"]))
                .values(created_at=long_ago)
            )
        cutoff = utcnow() - timedelta(days=90)
        assert store.feedback.delete("acme", before=cutoff) == 1
        assert store.query_log.delete("acme", before=cutoff) == (1, 0)
        assert [q.query_id for q in store.list_queries("acme")] == [new]
        # the audit log is one chain: pruning deletes its prefix before the first recent row
        assert store.audit_log.prune(cutoff) >= 1
        assert [a.action for a in store.list_audit("acme")] == ["x.new"]
        assert [a.action for a in store.list_audit(action="x.platform")] == ["x.platform"]

    def test_refuses_to_empty_the_log(self, store: MetadataStore) -> None:
        with pytest.raises(ValueError):
            store.query_log.delete("acme")
        with pytest.raises(ValueError):
            store.feedback.delete("acme")
