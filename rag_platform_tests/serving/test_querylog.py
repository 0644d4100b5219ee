"""The query-log writer against a real SQLite store: batching, outages, refused rows, shutdown."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from rag_platform.lib.store import MetadataStore, QueryLogEntry
from serving.querylog import QueryLogWriter, QueryRecord


def record(tenant: str = "acme", question: str = "q") -> QueryRecord:
    return QueryRecord(
        query_id=str(uuid.uuid4()),
        tenant=tenant,
        key_id="k",
        question=question,
        top_k=5,
        filters={"acl_groups": ["all"]},
    )


def upper_mask(tenant: str, question: str) -> str:
    return question.upper()


class Store:
    """A real store behind a switch: ``down`` makes writes fail like a refused connection."""

    def __init__(self, path: Path) -> None:
        self.store = MetadataStore(f"sqlite:///{path / 'metadata.db'}")
        self.store.migrate()
        self.down = False
        self.batches: list[int] = []

    def write(self, entries: list[QueryLogEntry]) -> int:
        if self.down:
            raise ConnectionRefusedError("database down")
        self.batches.append(len(entries))
        return self.store.log_queries(entries)


@pytest.fixture
def db(fast_tmp: Path) -> Store:
    return Store(fast_tmp)


def writer(db: Store, fast_tmp: Path, **kw: Any) -> QueryLogWriter:
    return QueryLogWriter(db.write, upper_mask, fast_tmp / "spool" / "query_log.jsonl", **kw)


class TestQueryLogWriter:
    def test_rows_are_masked_and_written_in_batches(self, db: Store, fast_tmp: Path) -> None:
        w = writer(db, fast_tmp, max_wait_seconds=0.2)
        records = [record(question=f"question {i}") for i in range(300)]
        for r in records:
            w.submit(r)
        assert w.flush()
        assert w.pending == 0
        rows = [db.store.get_query(r.query_id) for r in records]
        assert all(row is not None for row in rows)
        assert rows[7].question_masked == "QUESTION 7"  # type: ignore[union-attr]
        assert sum(db.batches) == 300
        assert len(db.batches) < 300 and max(db.batches) <= w.batch_size
        w.close()

    def test_outage_keeps_rows_in_order_until_the_database_is_back(
        self, db: Store, fast_tmp: Path
    ) -> None:
        failures: list[int] = []
        w = writer(db, fast_tmp, retry_seconds=60, on_failure=lambda: failures.append(1))
        db.down = True
        records = [record() for _ in range(5)]
        for r in records:
            w.submit(r)
        assert w.flush() is False
        assert w.pending == 5 and failures
        db.down = False
        assert w.flush() is True and w.pending == 0
        rows = db.store.list_queries("acme")
        assert [row.query_id for row in rows] == [r.query_id for r in records]
        w.close()
        assert not w.spool_path.exists()

    def test_backlog_is_retried_without_new_requests(self, db: Store, fast_tmp: Path) -> None:
        w = writer(db, fast_tmp, retry_seconds=0.1)
        db.down = True
        r = record()
        w.submit(r)
        assert w.flush(timeout=5) is False
        db.down = False
        deadline = time.monotonic() + 5
        while db.store.get_query(r.query_id) is None and time.monotonic() < deadline:
            time.sleep(0.05)  # no flush(): the writer thread retries on its own
        assert db.store.get_query(r.query_id) is not None
        w.close()

    def test_a_refused_row_is_dropped_alone(self, db: Store, fast_tmp: Path) -> None:
        w = writer(db, fast_tmp, max_wait_seconds=0.2)
        good = [record(), record()]
        bad = record(tenant="Not A Tenant!")
        for r in (good[0], bad, good[1]):
            w.submit(r)
        assert w.flush()
        assert all(db.store.get_query(r.query_id) is not None for r in good)
        assert db.store.get_query(bad.query_id) is None
        w.close()

    def test_close_while_down_spools_rows_to_disk(self, db: Store, fast_tmp: Path) -> None:
        w = writer(db, fast_tmp, close_timeout=0.3)
        db.down = True
        records = [record(question="call me") for _ in range(3)]
        for r in records:
            w.submit(r)
        w.close()
        lines = [json.loads(line) for line in w.spool_path.read_text().splitlines()]
        assert [line["query_id"] for line in lines] == [r.query_id for r in records]
        assert lines[0]["question_masked"] == "CALL ME" and "question" not in lines[0]
        # after close a submit still writes (in the caller's thread), it is not dropped
        db.down = False
        late = record()
        w.submit(late)
        assert db.store.get_query(late.query_id) is not None

    def test_full_queue_applies_back_pressure_without_loss(self, db: Store, fast_tmp: Path) -> None:
        w = writer(db, fast_tmp, max_queued=2, max_wait_seconds=0.0)
        records = [record() for _ in range(80)]

        def produce(part: list[QueryRecord]) -> None:
            for r in part:
                w.submit(r)

        threads = [threading.Thread(target=produce, args=(records[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert w.flush()
        assert len(db.store.list_queries("acme")) == 80
        w.close()

    def test_retried_batch_writes_each_row_once(self, db: Store, fast_tmp: Path) -> None:
        entries = [QueryLogEntry(tenant="acme", question_masked="x") for _ in range(3)]
        assert db.store.log_queries(entries) == 3
        assert db.store.log_queries(entries[:2] + [QueryLogEntry(tenant="acme")]) == 1
        assert len(db.store.list_queries("acme")) == 4
