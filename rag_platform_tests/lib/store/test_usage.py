"""Usage events and the per-day rollup (rag_platform.lib.store.usage), on SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from rag_platform.lib.store import USAGE_KINDS, MetadataStore, QueryLogEntry


class TestUsage:
    def test_usage_by_day_sums_events_and_query_log(self, store: MetadataStore) -> None:
        day = date(2026, 3, 14)
        start = datetime(2026, 3, 14, tzinfo=UTC)
        store.record_usage("acme", "embedding_tokens", 1000, run_id="r1", at=start)  # 00:00 in
        store.record_usage("acme", "embedding_tokens", 500, at=start + timedelta(hours=23.99))
        store.record_usage("acme", "compute_seconds", 12.5, at=start + timedelta(hours=5))
        store.record_usage("acme", "storage_bytes", 4096, at=start + timedelta(hours=6))
        store.record_usage("acme", "embedding_tokens", 7, at=start - timedelta(microseconds=1))
        store.record_usage("acme", "embedding_tokens", 9, at=start + timedelta(days=1))
        store.record_usage("beta", "embedding_tokens", 11, at=start + timedelta(hours=1))
        # A UTC+2 timestamp of 01:00 local is 23:00 UTC the day before: not counted.
        store.record_usage(
            "acme",
            "compute_seconds",
            100,
            at=datetime(2026, 3, 14, 1, tzinfo=timezone(timedelta(hours=2))),
        )
        logged = store.log_queries(
            [
                QueryLogEntry(
                    tenant="acme",
                    question_masked="q",
                    prompt_tokens=p,
                    completion_tokens=c,
                    created_at=start + timedelta(hours=8 + i),
                )
                for i, (p, c) in enumerate([(100, 10), (50, 5)])
            ]
            + [
                QueryLogEntry(
                    tenant="acme", prompt_tokens=999, created_at=start - timedelta(hours=1)
                )
            ]
        )
        assert logged == 3
        usage = store.usage_by_day("acme", day)
        assert set(usage) == set(USAGE_KINDS)
        assert usage == {
            "embedding_tokens": 1500.0,
            "compute_seconds": 12.5,
            "storage_bytes": 4096.0,
            "llm_prompt_tokens": 150.0,
            "llm_completion_tokens": 15.0,
            "queries": 2.0,
        }
        assert store.usage_by_day("acme", date(2026, 3, 16)) == dict.fromkeys(USAGE_KINDS, 0.0)

    @pytest.mark.parametrize(
        ("kind", "quantity", "message"),
        [
            ("gpu_hours", 1, "invalid usage kind"),
            ("queries", -1, ">= 0"),
            ("queries", float("nan"), "finite"),
        ],
    )
    def test_bad_usage_is_refused(
        self, store: MetadataStore, kind: str, quantity: float, message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            store.record_usage("acme", kind, quantity)
