"""The query log: one row per answered (or refused) search or query (``query_log`` table).

The serving layer's writer thread masks each question and appends rows in batches
(:meth:`QueryLogRepository.append`); feedback refers to a row by its ``query_id``, and the daily
cost rollup sums its token columns (:mod:`rag_platform.lib.store.usage`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import delete, select

from rag_platform.lib.crypto import PURPOSE_QUERY_LOG, Keyring
from rag_platform.lib.store.db import Database, dialect_insert
from rag_platform.lib.store.rows import check_text, from_row, to_values
from rag_platform.lib.store.schema import (
    JSONObject,
    as_utc,
    feedback_table,
    query_log_table,
    utcnow,
)
from rag_platform.lib.store.tenants import check_tenant


@dataclass(kw_only=True)
class QueryLogEntry:
    """One row of the query log (keyword-only construction).

    Times are milliseconds; ``question_masked`` must already be PII-masked by the caller. The
    repository seals it with the tenant's data key on write and opens it on read, so an entry
    always holds the plaintext. ``trace_id`` is the request's W3C trace id (32 hex digits, ``""``
    when not traced). ``endpoint`` is ``search``, ``query`` or ``conversation``; ``experiment``
    and ``variant`` name the retrieval variant the principal was assigned (``""`` outside an
    experiment).
    """

    query_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    tenant: str
    key_id: str = ""
    question_masked: str = ""
    top_k: int = 0
    filters: JSONObject = field(default_factory=dict)
    cited_chunk_ids: list[str] = field(default_factory=list)
    hit_chunk_ids: list[str] = field(default_factory=list)
    index_version: str = ""
    latency_ms: float = 0.0
    embed_ms: float = 0.0
    search_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hit: bool = False
    status_code: int = 200
    created_at: datetime = field(default_factory=utcnow)
    trace_id: str = ""
    endpoint: str = ""
    experiment: str = ""
    variant: str = ""


class QueryLogRepository:
    """The ``query_log`` table.

    Args:
        db: The database handle.
        keyring: Seals ``question_masked`` at rest (plaintext when it has no master key).
    """

    def __init__(self, db: Database, keyring: Keyring | None = None) -> None:
        self._db = db
        self._keyring = keyring

    def _seal(self, entry: QueryLogEntry) -> dict[str, object]:
        values = to_values(entry)
        if self._keyring is not None and entry.question_masked:
            values["question_masked"] = self._keyring.seal_text(
                entry.tenant, entry.question_masked, PURPOSE_QUERY_LOG
            )
        return values

    def _open(self, entry: QueryLogEntry) -> QueryLogEntry:
        if self._keyring is None or not entry.question_masked:
            return entry
        question = self._keyring.open_text(entry.tenant, entry.question_masked, PURPOSE_QUERY_LOG)
        return replace(entry, question_masked=question)

    def append(self, entries: list[QueryLogEntry]) -> int:
        """Append query-log rows in one transaction (one multi-row INSERT).

        Rows whose ``query_id`` is already logged are skipped (``ON CONFLICT DO NOTHING``), so
        a batch retried after a lost commit acknowledgement writes each row once.

        Returns:
            How many rows were new.

        Raises:
            ValueError: A bad tenant id or query id (nothing is written).
            sqlalchemy.exc.OperationalError: The database cannot be reached.
            rag_platform.lib.crypto.SealedDataError: The tenant's data key cannot be unwrapped.
        """
        for entry in entries:
            check_tenant(entry.tenant)
            check_text(entry.query_id, "query_id", 36)
        if not entries:
            return 0
        rows = [self._seal(e) for e in entries]  # before the transaction: it may add a key
        with self._db.transaction() as conn:
            stmt = (
                dialect_insert(conn, query_log_table)
                .on_conflict_do_nothing(index_elements=["query_id"])
                .returning(query_log_table.c.query_id)
            )
            written = conn.execute(stmt, rows).all()
        return len(written)

    def get(self, query_id: str) -> QueryLogEntry | None:
        """One query-log row, or None.

        Raises:
            rag_platform.lib.crypto.SealedDataError: its question does not open (the tenant's
                data key destroyed, or the row tampered with).
        """
        stmt = select(query_log_table).where(query_log_table.c.query_id == query_id)
        with self._db.transaction(write=False) as conn:
            row = conn.execute(stmt).mappings().first()
        return self._open(from_row(QueryLogEntry, row)) if row is not None else None

    def find(
        self, tenant: str, since: datetime | None = None, until: datetime | None = None
    ) -> list[QueryLogEntry]:
        """The tenant's queries with ``since <= created_at < until``, oldest first.

        Args:
            tenant: Tenant id.
            since: Inclusive lower bound (naive = UTC); None: no bound.
            until: Exclusive upper bound (naive = UTC); None: no bound.
        """
        stmt = select(query_log_table).where(query_log_table.c.tenant == tenant)
        if since is not None:
            stmt = stmt.where(query_log_table.c.created_at >= as_utc(since))
        if until is not None:
            stmt = stmt.where(query_log_table.c.created_at < as_utc(until))
        stmt = stmt.order_by(query_log_table.c.created_at, query_log_table.c.query_id)
        with self._db.transaction(write=False) as conn:
            rows = [from_row(QueryLogEntry, r) for r in conn.execute(stmt).mappings()]
        return [self._open(e) for e in rows]

    def delete(
        self, tenant: str, *, key_id: str | None = None, before: datetime | None = None
    ) -> tuple[int, int]:
        """Deletes the tenant's queries of one principal and/or older than a cut-off, with all
        feedback on them, in one transaction.

        Args:
            tenant: Tenant id.
            key_id: Only the queries of this API key (the principal); None: any.
            before: Only queries with ``created_at < before`` (naive = UTC); None: any age.

        Returns:
            ``(queries deleted, feedback rows deleted with them)``.

        Raises:
            ValueError: Neither ``key_id`` nor ``before`` given (refusing to empty the log).
        """
        if key_id is None and before is None:
            raise ValueError("give key_id or before: refusing to delete the whole query log")
        where = [query_log_table.c.tenant == tenant]
        if key_id is not None:
            where.append(query_log_table.c.key_id == key_id)
        if before is not None:
            where.append(query_log_table.c.created_at < as_utc(before))
        ids = select(query_log_table.c.query_id).where(*where)
        with self._db.transaction() as conn:
            feedback = conn.execute(
                delete(feedback_table).where(feedback_table.c.query_id.in_(ids))
            ).rowcount
            queries = conn.execute(delete(query_log_table).where(*where)).rowcount
        return int(queries), int(feedback)
