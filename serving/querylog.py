"""The query-log writer: one background thread masks questions and writes rows in batches.

Request threads only enqueue a :class:`QueryRecord` (microseconds); the writer thread masks each
question with its tenant's PII policy, then writes up to ``batch_size`` rows in one transaction
(``MetadataStore.log_queries``). So a request never waits for the database or for NER masking,
and a slow or unreachable database holds no request thread.

Nothing is lost:

- A batch that fails (after ``tries`` attempts with exponential back-off, tenacity) stays in the
  backlog, in order, and is retried every ``retry_seconds`` and on :meth:`QueryLogWriter.flush`.
  Rows already written are skipped on retry (the query id is the primary key).
- A row the database refuses for its content (``ValueError``) is logged and dropped alone; the
  rest of its batch is written.
- When the queue holds ``max_queued`` records, :meth:`QueryLogWriter.submit` writes the record in
  the caller's thread (back-pressure) instead of dropping it.
- :meth:`QueryLogWriter.close` drains the queue, retries the backlog for up to ``close_timeout``
  seconds, then appends what is left to ``spool_path`` (JSON lines) for an operator to load.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tenacity import Retrying, stop_after_attempt, wait_exponential

from rag_platform.lib.store import QueryLogEntry

logger = logging.getLogger("serving.querylog")


@dataclass
class QueryRecord:
    """What the query log needs about one search or query (the question is masked on write)."""

    query_id: str
    tenant: str
    key_id: str
    question: str
    top_k: int
    filters: dict[str, Any]
    index_version: str = ""
    hit_chunk_ids: list[str] = field(default_factory=list)
    cited_chunk_ids: list[str] = field(default_factory=list)
    latency_ms: float = 0.0
    embed_ms: float = 0.0
    search_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hit: bool = False
    status_code: int = 200
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    trace_id: str = ""
    endpoint: str = ""
    experiment: str = ""
    variant: str = ""


_STOP = object()


class QueryLogWriter:
    """Batched, lossless query-log writes from one daemon thread.

    Args:
        write_batch: writes entries in one transaction, e.g. ``store.log_queries``; looked up
            through this callable on every batch, so the store behind it may be replaced.
        mask: ``mask(tenant, question) -> masked question``; must not raise.
        spool_path: where :meth:`close` appends rows it could not write (JSON lines).
        on_failure: called once per failed batch write (e.g. a Prometheus counter's ``inc``).
        batch_size: most rows per transaction.
        max_wait_seconds: how long the writer waits to fill a batch after its first row.
        max_queued: queue bound; beyond it :meth:`submit` writes in the caller's thread.
        tries: attempts per batch before it goes back to the backlog.
        retry_seconds: how often the backlog is retried while the database is down.
        close_timeout: how long :meth:`close` retries the backlog before spooling it to disk.
    """

    def __init__(
        self,
        write_batch: Callable[[list[QueryLogEntry]], Any],
        mask: Callable[[str, str], str],
        spool_path: Path,
        *,
        on_failure: Callable[[], Any] | None = None,
        batch_size: int = 256,
        max_wait_seconds: float = 0.2,
        max_queued: int = 100_000,
        tries: int = 3,
        retry_seconds: float = 1.0,
        close_timeout: float = 5.0,
    ) -> None:
        self._write_batch = write_batch
        self._mask = mask
        self.spool_path = spool_path
        self._on_failure = on_failure
        self.batch_size = batch_size
        self.max_wait_seconds = max_wait_seconds
        self.retry_seconds = retry_seconds
        self.close_timeout = close_timeout
        self._tries = tries
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queued)
        self._backlog: deque[QueryLogEntry] = deque()
        self._write_lock = threading.Lock()  # one writer of the backlog at a time
        self._cond = threading.Condition()
        self._submitted = 0  # records accepted by submit()
        self._processed = 0  # records masked and written or put in the backlog
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="query-log-writer", daemon=True)
        self._thread.start()

    # -- producer side -------------------------------------------------------------------------
    def submit(self, record: QueryRecord) -> None:
        """Queues ``record`` for writing; never raises, never drops it.

        After :meth:`close`, or when the queue is full, the record is written in this thread.
        """
        with self._cond:
            self._submitted += 1
            closed = self._closed
        if not closed:
            try:
                self._queue.put_nowait(record)
                return
            except queue.Full:
                logger.warning("query log queue full; writing in the request thread")
        self._process([record])

    @property
    def pending(self) -> int:
        """Rows not yet in the database: queued, being masked, or in the failed backlog."""
        with self._cond:
            in_flight = self._submitted - self._processed
        return in_flight + len(self._backlog)

    def flush(self, timeout: float = 5.0) -> bool:
        """Waits until every record submitted before the call is processed, then retries the
        backlog once.

        Returns:
            True when nothing is pending any more (all written), False on timeout or while the
            database stays down.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            while self._processed < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        self._drain_backlog(tries=1)
        return self.pending == 0

    # -- writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            wait = self.retry_seconds if self._backlog else None
            try:
                first = self._queue.get(timeout=wait)
            except queue.Empty:
                self._drain_backlog(tries=1)
                continue
            if first is _STOP:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_seconds
            stop = False
            while len(batch) < self.batch_size:
                left = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._process(batch)
            if stop:
                return

    def _process(self, records: list[QueryRecord]) -> None:
        try:
            entries = [self._entry(r) for r in records]
            with self._write_lock:
                self._backlog.extend(entries)
            self._drain_backlog(tries=self._tries)
        except Exception:  # never let the writer thread die
            logger.exception("query log writer failed")
        finally:
            with self._cond:
                self._processed += len(records)
                self._cond.notify_all()

    def _entry(self, record: QueryRecord) -> QueryLogEntry:
        return QueryLogEntry(
            query_id=record.query_id,
            tenant=record.tenant,
            key_id=record.key_id,
            question_masked=self._mask(record.tenant, record.question),
            top_k=record.top_k,
            filters=record.filters,
            cited_chunk_ids=record.cited_chunk_ids,
            hit_chunk_ids=record.hit_chunk_ids,
            index_version=record.index_version,
            latency_ms=record.latency_ms,
            embed_ms=record.embed_ms,
            search_ms=record.search_ms,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            cache_hit=record.cache_hit,
            status_code=record.status_code,
            created_at=record.created_at,
            trace_id=record.trace_id,
            endpoint=record.endpoint,
            experiment=record.experiment,
            variant=record.variant,
        )

    def _drain_backlog(self, tries: int) -> int:
        """Writes the backlog, oldest first, in batches; stops at the first batch that fails.

        Returns:
            How many rows left the backlog.
        """
        done = 0
        with self._write_lock:
            while self._backlog:
                batch = [self._backlog[i] for i in range(min(self.batch_size, len(self._backlog)))]
                try:
                    self._write_with_retries(batch, tries)
                except ValueError:
                    self._write_one_by_one(batch)
                except Exception as exc:
                    if self._on_failure is not None:
                        self._on_failure()
                    logger.error(
                        "query log write failed; kept for retry",
                        extra={"error": type(exc).__name__, "rows": len(self._backlog)},
                    )
                    return done
                for _ in batch:
                    self._backlog.popleft()
                done += len(batch)
        return done

    def _write_with_retries(self, batch: list[QueryLogEntry], tries: int) -> None:
        for attempt in Retrying(
            stop=stop_after_attempt(max(1, tries)),
            wait=wait_exponential(multiplier=0.05, max=0.5),
            reraise=True,
        ):
            with attempt:
                self._write_batch(batch)

    def _write_one_by_one(self, batch: list[QueryLogEntry]) -> None:
        """Writes a batch the database refused row by row, dropping only refused rows.

        Raises:
            Exception: a database error other than a refused row (the batch stays queued).
        """
        for entry in batch:
            try:
                self._write_batch([entry])
            except ValueError as exc:
                logger.error(
                    "query log row refused; dropped",
                    extra={"error": str(exc), "query_id": entry.query_id},
                )

    # -- shutdown ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stops the writer: drains the queue, retries the backlog for up to ``close_timeout``
        seconds, then appends what is still unwritten to ``spool_path``. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=max(self.close_timeout, 1.0) + 30)
        leftover: list[Any] = []
        while True:  # anything queued after the stop marker (a racing submit)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                leftover.append(item)
        if leftover:
            self._process(leftover)
        deadline = time.monotonic() + self.close_timeout
        while self._backlog and time.monotonic() < deadline:
            if not self._drain_backlog(tries=1):
                time.sleep(0.2)
        self._spool_backlog()

    def _spool_backlog(self) -> None:
        with self._write_lock:
            if not self._backlog:
                return
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            rows = len(self._backlog)
            with self.spool_path.open("a") as f:
                while self._backlog:
                    f.write(json.dumps(asdict(self._backlog.popleft()), default=str) + "\n")
        logger.error(
            "query log rows written to the spool file",
            extra={"rows": rows, "path": str(self.spool_path)},
        )
