"""Feedback on logged queries (rag_platform.lib.store.feedback), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from rag_platform.lib.store import MetadataStore
from rag_platform_tests.lib.store.factories import log_query


class TestFeedback:
    def test_feedback_on_own_query(self, store: MetadataStore) -> None:
        qid = log_query(store)
        fid = store.add_feedback(qid, "acme", "0123456789ab", 4, "answer", "good")
        (fb,) = store.list_feedback("acme")
        assert (fb.feedback_id, fb.query_id, fb.rating, fb.type, fb.comment) == (
            fid,
            qid,
            4,
            "answer",
            "good",
        )
        assert store.list_feedback("acme", query_id="other") == []

    def test_cross_tenant_and_unknown_query_feedback_is_refused(self, store: MetadataStore) -> None:
        qid = log_query(store, tenant="acme")
        with pytest.raises(ValueError, match="no query"):
            store.add_feedback(qid, "beta", "0123456789ab", 5, "answer")
        with pytest.raises(ValueError, match="no query"):
            store.add_feedback("missing", "acme", "0123456789ab", 5, "answer")
        assert store.list_feedback("acme") == [] and store.list_feedback("beta") == []

    @pytest.mark.parametrize("rating", [0, 6, -1, True, 3.5])
    def test_rating_out_of_range_is_refused(self, store: MetadataStore, rating: object) -> None:
        qid = log_query(store)
        with pytest.raises(ValueError, match="rating"):
            store.add_feedback(qid, "acme", "k", rating, "answer")  # type: ignore[arg-type]
