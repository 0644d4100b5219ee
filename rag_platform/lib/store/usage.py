"""Usage events (tokens, seconds, bytes, queries) and their per-day sums for the cost rollup."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import func, select

from rag_platform.lib.store.db import Database
from rag_platform.lib.store.rows import check_text
from rag_platform.lib.store.schema import (
    USAGE_KINDS,
    as_utc,
    query_log_table,
    usage_events_table,
    utcnow,
)
from rag_platform.lib.store.tenants import check_tenant

_u = usage_events_table
_q = query_log_table


class UsageRepository:
    """The ``usage_events`` table (and the query log's token columns, read for the rollup).

    Args:
        db: The database handle.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(
        self,
        tenant: str,
        kind: str,
        quantity: float,
        run_id: str = "",
        at: datetime | None = None,
    ) -> None:
        """Record a metered quantity for the cost rollup.

        Args:
            tenant: Tenant id.
            kind: One of ``USAGE_KINDS``: ``embedding_tokens`` (tokens), ``compute_seconds``
                (s), ``storage_bytes`` (bytes, a snapshot), ``llm_prompt_tokens``,
                ``llm_completion_tokens`` (tokens used outside the query API, e.g. LLM-judged
                evaluation), ``queries``.
            quantity: Finite, >= 0.
            run_id: The Dagster run that incurred it, if any.
            at: When (default now; naive = UTC).

        Raises:
            ValueError: Unknown kind, negative or non-finite quantity, bad tenant id.
        """
        check_tenant(tenant)
        if kind not in USAGE_KINDS:
            raise ValueError(
                f"invalid usage kind {kind!r}: expected one of {', '.join(USAGE_KINDS)}"
            )
        quantity = float(quantity)
        if not math.isfinite(quantity) or quantity < 0:
            raise ValueError(f"usage quantity must be finite and >= 0, got {quantity}")
        check_text(run_id, "run_id", 200, allow_empty=True)
        with self._db.transaction() as conn:
            conn.execute(
                _u.insert().values(
                    tenant=tenant,
                    kind=kind,
                    quantity=quantity,
                    run_id=run_id,
                    at=as_utc(at) if at is not None else utcnow(),
                )
            )

    def by_day(self, tenant: str, day: date) -> dict[str, float]:
        """Usage of ``tenant`` on UTC day ``day`` ([00:00, 24:00) UTC), summed per kind.

        Returns:
            Every kind of ``USAGE_KINDS`` (0.0 when nothing was recorded). Usage events are
            summed per kind; on top, the query log contributes ``llm_prompt_tokens`` and
            ``llm_completion_tokens`` (sums of its token columns) and ``queries`` (its row
            count, every status). Query traffic must therefore be logged in the query log only,
            not also as usage events, or it is counted twice.
        """
        start = datetime.combine(day, time.min, tzinfo=UTC)
        end = start + timedelta(days=1)
        totals: dict[str, float] = dict.fromkeys(USAGE_KINDS, 0.0)
        events = (
            select(_u.c.kind, func.sum(_u.c.quantity))
            .where(_u.c.tenant == tenant, _u.c.at >= start, _u.c.at < end)
            .group_by(_u.c.kind)
        )
        queries = select(
            func.coalesce(func.sum(_q.c.prompt_tokens), 0),
            func.coalesce(func.sum(_q.c.completion_tokens), 0),
            func.count(),
        ).where(_q.c.tenant == tenant, _q.c.created_at >= start, _q.c.created_at < end)
        with self._db.transaction(write=False) as conn:
            for kind, total in conn.execute(events):
                totals[kind] += float(total or 0.0)
            prompt, completion, count = conn.execute(queries).one()
        totals["llm_prompt_tokens"] += float(prompt)
        totals["llm_completion_tokens"] += float(completion)
        totals["queries"] += float(count)
        return totals

    def llm_tokens(self, tenant: str, since: datetime, until: datetime | None = None) -> int:
        """LLM tokens (prompt + completion) ``tenant`` spent with ``since <= at < until``: the
        query log's token columns (every answer the API gave, streamed ones included) plus the
        ``llm_prompt_tokens`` / ``llm_completion_tokens`` usage events (LLM-judged evaluation),
        the same sources as :meth:`by_day`.

        Args:
            tenant: Tenant id.
            since: Inclusive lower bound (naive = UTC).
            until: Exclusive upper bound (naive = UTC); None: no bound.
        """
        start = as_utc(since)
        queries = select(
            func.coalesce(func.sum(_q.c.prompt_tokens + _q.c.completion_tokens), 0)
        ).where(_q.c.tenant == tenant, _q.c.created_at >= start)
        events = select(func.coalesce(func.sum(_u.c.quantity), 0.0)).where(
            _u.c.tenant == tenant,
            _u.c.kind.in_(("llm_prompt_tokens", "llm_completion_tokens")),
            _u.c.at >= start,
        )
        if until is not None:
            end = as_utc(until)
            queries = queries.where(_q.c.created_at < end)
            events = events.where(_u.c.at < end)
        with self._db.transaction(write=False) as conn:
            from_queries = conn.execute(queries).scalar_one()
            from_events = conn.execute(events).scalar_one()
        return int(from_queries or 0) + int(math.ceil(float(from_events or 0.0)))
