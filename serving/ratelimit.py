"""Rate limits per API key and per tenant (the ``limits`` library, moving window).

Storage is Redis (``limits``' ``RedisStorage``) when ``Settings.redis_url`` is set, so several API
processes share the counts, else in-process ``MemoryStorage``. When Redis fails mid-run the
limiter switches to an in-process moving window (limits stay enforced, per process) for a
cool-down, then tries Redis again. A storage error never fails a request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter

logger = logging.getLogger("serving.ratelimit")


@dataclass(frozen=True)
class RateLimitDecision:
    """Outcome of a check: ``allowed``; when refused, which ``scope`` and ``retry_after`` (s)."""

    allowed: bool
    scope: str = ""
    retry_after: int = 0
    backend: str = "memory"


class RateLimiter:
    """Per-key and per-tenant moving-window limits with Redis fallback.

    Args:
        per_key: ``limits`` rate string for each API key, e.g. ``"120/minute"``.
        per_tenant: rate string for all keys of a tenant together.
        redis_url: Redis URL; ``None`` keeps the counts in process.
        cooldown_seconds: after a Redis error, the in-process limiter is used this long.
        timeout_seconds: Redis socket timeouts.

    Raises:
        ValueError: a rate string ``limits`` cannot parse.
    """

    def __init__(
        self,
        per_key: str,
        per_tenant: str,
        redis_url: str | None = None,
        cooldown_seconds: float = 5.0,
        timeout_seconds: float = 0.25,
    ) -> None:
        self.per_key: RateLimitItem = parse(per_key)
        self.per_tenant: RateLimitItem = parse(per_tenant)
        self.cooldown_seconds = cooldown_seconds
        self._memory = MovingWindowRateLimiter(MemoryStorage())
        self._redis: MovingWindowRateLimiter | None = None
        self._redis_storage: RedisStorage | None = None
        if redis_url:
            self._redis_storage = RedisStorage(
                redis_url,
                key_prefix="rag-limits",
                socket_timeout=timeout_seconds,
                socket_connect_timeout=timeout_seconds,
            )
            self._redis = MovingWindowRateLimiter(self._redis_storage)
        self._down_until = 0.0
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        """``"redis"``, ``"memory"``, or ``"memory-fallback"`` while Redis cools down."""
        if self._redis is None:
            return "memory"
        return "redis" if time.monotonic() >= self._down_until else "memory-fallback"

    def _check_with(
        self, limiter: MovingWindowRateLimiter, tenant: str, key_id: str, backend: str
    ) -> RateLimitDecision:
        for scope, item, ident in (
            ("key", self.per_key, f"key:{key_id}"),
            ("tenant", self.per_tenant, f"tenant:{tenant}"),
        ):
            if not limiter.hit(item, ident):
                stats = limiter.get_window_stats(item, ident)
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                return RateLimitDecision(False, scope, retry, backend)
        return RateLimitDecision(True, backend=backend)

    def check(self, tenant: str, key_id: str) -> RateLimitDecision:
        """Counts one request of ``key_id`` (of ``tenant``) and says whether it is allowed.

        The key's limit is checked first, so a key over its own limit does not use up the
        tenant's budget.
        """
        if self._redis is not None and time.monotonic() >= self._down_until:
            try:
                return self._check_with(self._redis, tenant, key_id, "redis")
            except Exception as exc:  # redis errors: fall back, never fail the request
                with self._lock:
                    self._down_until = time.monotonic() + self.cooldown_seconds
                logger.warning(
                    "redis rate-limit storage failed; using in-process limits for %.1f s",
                    self.cooldown_seconds,
                    extra={"error": type(exc).__name__},
                )
        backend = "memory" if self._redis is None else "memory-fallback"
        return self._check_with(self._memory, tenant, key_id, backend)

    def ping(self) -> bool:
        """True when the storage answers (always for in-process storage)."""
        if self._redis_storage is None:
            return True
        try:
            return bool(self._redis_storage.check())
        except Exception:
            return False
