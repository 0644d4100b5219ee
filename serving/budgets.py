"""Per-tenant monthly LLM token budgets (``generation.monthly_token_budget`` of the registry).

A tenant's spend is read from the usage records (:meth:`MetadataStore.llm_tokens`: the query
log's token columns plus the LLM usage events) since the start of the UTC calendar month, and
reused for ``ttl_seconds`` per tenant, so a budget costs one SUM query per tenant every few
seconds, not one per request. A budget can therefore be overshot by what the tenant spends
within one TTL plus the answers in flight when it is reached; it resets at 00:00 UTC on the
first day of the next month. When the store cannot be read the request is let through (logged):
the budget is a cost control, and the store's outage shows elsewhere.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from cachetools import TTLCache

from serving.errors import ApiError

logger = logging.getLogger("serving.budgets")


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month holding ``now``: ``(first instant, first instant of the next)``."""
    now = now.astimezone(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


class TokenBudgets:
    """Checks tenants' monthly LLM token budgets against their recorded usage.

    Args:
        spent: ``(tenant, since) -> tokens`` spent since ``since`` (``MetadataStore.llm_tokens``).
        ttl_seconds: how long one tenant's spend is reused.
        clock: the current time (UTC, aware).
    """

    def __init__(
        self,
        spent: Callable[[str, datetime], int],
        ttl_seconds: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._spent = spent
        self._clock = clock
        self._memo: TTLCache[tuple[str, datetime], int] = TTLCache(10_000, ttl_seconds)
        self._lock = threading.Lock()

    def spent(self, tenant: str, month_start: datetime) -> int:
        """Tokens ``tenant`` spent since ``month_start`` (memoised ``ttl_seconds``).

        Raises:
            Exception: whatever the store raises.
        """
        key = (tenant, month_start)
        with self._lock:
            if key in self._memo:
                return self._memo[key]
        value = self._spent(tenant, month_start)
        with self._lock:
            self._memo[key] = value
        return value

    def check(self, tenant: str, budget: int | None) -> None:
        """Passes when ``budget`` is None or the month's spend is below it.

        Raises:
            ApiError: 429 ``budget_exhausted``, with ``Retry-After`` (seconds until the month
                ends) and details ``[{"budget": int, "used": int, "resets_at": ISO 8601 UTC}]``.
        """
        if budget is None:
            return
        now = self._clock()
        start, resets_at = month_bounds(now)
        try:
            used = self.spent(tenant, start)
        except Exception as exc:
            logger.warning(
                "token usage unreadable; letting the request through",
                extra={"tenant": tenant, "error": type(exc).__name__},
            )
            return
        if used < budget:
            return
        retry_after = max(1, math.ceil((resets_at - now).total_seconds()))
        raise ApiError(
            429,
            "budget_exhausted",
            f"the tenant's monthly LLM token budget ({budget}) is used up until "
            f"{resets_at.isoformat()}",
            details=[{"budget": budget, "used": used, "resets_at": resets_at.isoformat()}],
            headers={"Retry-After": str(retry_after)},
        )
