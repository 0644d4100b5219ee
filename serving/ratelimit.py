"""Rate limits per API key and per tenant (the ``limits`` library, moving window), and the
limits of concurrent answer streams (:class:`StreamSlots`).

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
import uuid
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis import Redis

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


#: Acquires one stream slot under both limits atomically. KEYS: the key's and the tenant's
#: sorted sets (member: stream id, score: lease expiry). ARGV: now, expiry, stream id, per-key
#: limit, per-tenant limit, key TTL (s). Returns 0 (acquired), 1 (key full), 2 (tenant full).
_ACQUIRE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 1 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 2 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 0
"""


class StreamLease:
    """One held stream slot; :meth:`release` gives it back (idempotent), :meth:`keep_alive`
    extends a Redis lease while the stream runs.

    A Redis slot is a lease that expires ``lease_seconds`` after its last renewal, so the
    slots of a process that died come back by themselves.
    """

    def __init__(self, slots: StreamSlots, tenant: str, key_id: str, backend: str) -> None:
        self.id = uuid.uuid4().hex
        self.tenant = tenant
        self.key_id = key_id
        self.backend = backend
        self._slots = slots
        self._renewed = time.monotonic()
        self._released = False
        self._lock = threading.Lock()

    def keep_alive(self) -> None:
        """Renews a Redis lease once a third of its time has passed (cheap to call often)."""
        if self.backend != "redis" or time.monotonic() - self._renewed < self._slots.renew_after:
            return
        self._renewed = time.monotonic()
        self._slots._renew(self)

    def release(self) -> None:
        """Gives the slot back (once)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._slots._release(self)


class StreamSlots:
    """Concurrent answer streams per API key and per tenant.

    Counts live in Redis when ``redis_url`` is set (sorted sets of leases, checked and taken in
    one Lua script, so several API processes share the limits), else in process. On a Redis
    error the in-process counts are used for ``cooldown_seconds`` (limits stay enforced, per
    process); a storage error never fails a request.

    Args:
        per_key: most concurrent streams of one key.
        per_tenant: most concurrent streams of all keys of a tenant.
        redis_url: Redis URL; ``None`` counts in process.
        lease_seconds: a Redis slot's lifetime without renewal (a stream renews it while it
            runs, see :meth:`StreamLease.keep_alive`).
        key_prefix: prefix of the Redis keys.
        cooldown_seconds: after a Redis error, the in-process counts are used this long.
        timeout_seconds: Redis socket timeouts.
    """

    def __init__(
        self,
        per_key: int,
        per_tenant: int,
        redis_url: str | None = None,
        *,
        lease_seconds: float = 60.0,
        key_prefix: str = "rag-streams",
        cooldown_seconds: float = 5.0,
        timeout_seconds: float = 0.25,
    ) -> None:
        self.per_key = per_key
        self.per_tenant = per_tenant
        self.lease_seconds = lease_seconds
        self.renew_after = lease_seconds / 3
        self.key_prefix = key_prefix
        self.cooldown_seconds = cooldown_seconds
        self._redis: Redis | None = None
        if redis_url:
            self._redis = Redis.from_url(
                redis_url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
            )
            self._acquire = self._redis.register_script(_ACQUIRE_LUA)
        self._memory: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._down_until = 0.0

    def _keys(self, tenant: str, key_id: str) -> tuple[str, str]:
        return f"{self.key_prefix}:key:{key_id}", f"{self.key_prefix}:tenant:{tenant}"

    def acquire(self, tenant: str, key_id: str) -> StreamLease | RateLimitDecision:
        """A slot for one more stream of ``key_id`` (of ``tenant``), or the refusal (scope
        ``streams_per_key`` or ``streams_per_tenant``, ``retry_after`` 1 s)."""
        if self._redis is not None and time.monotonic() >= self._down_until:
            lease = StreamLease(self, tenant, key_id, "redis")
            now = time.time()
            try:
                full = int(
                    self._acquire(
                        keys=list(self._keys(tenant, key_id)),
                        args=[
                            now,
                            now + self.lease_seconds,
                            lease.id,
                            self.per_key,
                            self.per_tenant,
                            math.ceil(self.lease_seconds) + 1,
                        ],
                    )
                )
            except Exception as exc:  # redis errors: fall back, never fail the request
                with self._lock:
                    self._down_until = time.monotonic() + self.cooldown_seconds
                logger.warning(
                    "redis stream-slot storage failed; counting in process for %.1f s",
                    self.cooldown_seconds,
                    extra={"error": type(exc).__name__},
                )
            else:
                return lease if full == 0 else self._refused(full, "redis")
        lease = StreamLease(self, tenant, key_id, "memory")
        key, tenant_key = self._keys(tenant, key_id)
        with self._lock:
            by_key = self._memory.setdefault(key, set())
            by_tenant = self._memory.setdefault(tenant_key, set())
            if len(by_key) >= self.per_key:
                return self._refused(1, "memory")
            if len(by_tenant) >= self.per_tenant:
                return self._refused(2, "memory")
            by_key.add(lease.id)
            by_tenant.add(lease.id)
        return lease

    @staticmethod
    def _refused(full: int, backend: str) -> RateLimitDecision:
        scope = "streams_per_key" if full == 1 else "streams_per_tenant"
        return RateLimitDecision(False, scope, 1, backend)

    def active(self, tenant: str, key_id: str) -> tuple[int, int]:
        """``(streams of the key, streams of the tenant)`` held now (live leases only)."""
        key, tenant_key = self._keys(tenant, key_id)
        if self._redis is not None and time.monotonic() >= self._down_until:
            now = time.time()
            return (
                int(self._redis.zcount(key, now, "+inf")),
                int(self._redis.zcount(tenant_key, now, "+inf")),
            )
        with self._lock:
            return len(self._memory.get(key, ())), len(self._memory.get(tenant_key, ()))

    def _renew(self, lease: StreamLease) -> None:
        assert self._redis is not None
        expiry = time.time() + self.lease_seconds
        try:
            for name in self._keys(lease.tenant, lease.key_id):
                self._redis.zadd(name, {lease.id: expiry}, xx=True)
        except Exception as exc:
            logger.warning("renewing a stream slot failed", extra={"error": type(exc).__name__})

    def _release(self, lease: StreamLease) -> None:
        names = self._keys(lease.tenant, lease.key_id)
        if lease.backend == "redis":
            assert self._redis is not None
            try:
                for name in names:
                    self._redis.zrem(name, lease.id)
            except Exception as exc:  # the lease expires by itself
                logger.warning(
                    "releasing a stream slot failed", extra={"error": type(exc).__name__}
                )
            return
        with self._lock:
            for name in names:
                members = self._memory.get(name)
                if members is not None:
                    members.discard(lease.id)
                    if not members:
                        del self._memory[name]

    def close(self) -> None:
        """Closes the Redis connections."""
        if self._redis is not None:
            self._redis.close()
