"""The query cache: Redis when configured, else an in-process TTL cache.

Keys are a SHA-256 over the canonical JSON of (endpoint, tenant, published index version,
normalised query, filters including the principal's sorted ACL groups, top_k, the tenant's
retrieval settings): every part and every list item is its own JSON string, so no separator
inside a value (a group named ``"a,b"``) can make two requests share a key, and

- two principals with different groups never share an entry (the groups are in the key);
- publishing a new index version invalidates every entry of that tenant by construction.

A Redis failure never fails a request: the cache logs it, answers as a miss, and stops calling
Redis for ``cooldown_seconds`` before trying again (a simple circuit breaker).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from typing import Any

from cachetools import TTLCache

from rag_platform.lib.models import SearchFilters

logger = logging.getLogger("serving.cache")


def normalise_query(query: str) -> str:
    """Case-folded, whitespace-collapsed query text (the cache's notion of "same question")."""
    return " ".join(query.casefold().split())


def _filters_key(filters: SearchFilters) -> dict[str, Any]:
    """The filters as a JSON-ready mapping: lists sorted, dates ISO 8601, unset ones ``None``."""
    return {
        "acl_groups": sorted(filters.acl_groups),
        "source_ids": sorted(filters.source_ids or ()),
        "mime_types": sorted(filters.mime_types or ()),
        "doc_ids": sorted(filters.doc_ids or ()),
        "updated_after": filters.updated_after.isoformat() if filters.updated_after else None,
        "updated_before": filters.updated_before.isoformat() if filters.updated_before else None,
        "exclude_doc_ids": sorted(filters.exclude_doc_ids or ()),
    }


def cache_key(
    *,
    endpoint: str,
    tenant: str,
    index_version: str,
    query: str,
    filters: SearchFilters,
    top_k: int,
    retrieval: str,
) -> str:
    """The cache key of a search or query request.

    Args:
        retrieval: the tenant's retrieval settings as canonical JSON, so a changed fusion or
            prefetch depth in ``tenants.yaml`` does not serve results ranked the old way.

    Returns:
        ``"rag:q:" + sha256 hex`` of the canonical JSON (sorted keys, no whitespace) of the
        inputs above.
    """
    canonical = json.dumps(
        [
            endpoint,
            tenant,
            index_version,
            normalise_query(query),
            _filters_key(filters),
            top_k,
            retrieval,
        ],
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=False,
    )
    return "rag:q:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class MemoryQueryCache:
    """In-process TTL cache (cachetools), thread-safe.

    Args:
        ttl_seconds: entry lifetime; 0 disables caching.
        maxsize: most entries kept (expired entries go first, then the least recently used).
    """

    backend = "memory"

    def __init__(self, ttl_seconds: int, maxsize: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self._cache: TTLCache[str, str] = TTLCache(maxsize=maxsize, ttl=max(ttl_seconds, 1))
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        if self.ttl_seconds <= 0:
            return None
        with self._lock:
            raw = self._cache.get(key)
        return json.loads(raw) if raw is not None else None

    def set(self, key: str, value: dict[str, Any]) -> None:
        if self.ttl_seconds <= 0:
            return
        raw = json.dumps(value)
        with self._lock:
            self._cache[key] = raw

    def ping(self) -> bool:
        return True


class RedisQueryCache:
    """Redis-backed cache; errors are logged and answered as misses.

    Args:
        url: Redis URL (``redis://host:port/db``).
        ttl_seconds: entry lifetime (Redis ``EX``); 0 disables caching.
        cooldown_seconds: after an error, Redis is not called again for this long.
        timeout_seconds: socket connect and read timeout, so a dead Redis costs little.
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        ttl_seconds: int,
        cooldown_seconds: float = 5.0,
        timeout_seconds: float = 0.25,
    ) -> None:
        import redis

        self.ttl_seconds = ttl_seconds
        self.cooldown_seconds = cooldown_seconds
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
        )
        self._down_until = 0.0
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        """False while cooling down after an error."""
        return time.monotonic() >= self._down_until

    def _failed(self, op: str, exc: Exception) -> None:
        with self._lock:
            self._down_until = time.monotonic() + self.cooldown_seconds
        logger.warning(
            "redis cache %s failed; treating as a miss for %.1f s",
            op,
            self.cooldown_seconds,
            extra={"error": type(exc).__name__},
        )

    def get(self, key: str) -> dict[str, Any] | None:
        if self.ttl_seconds <= 0 or not self.available:
            return None
        try:
            raw = self._client.get(key)
        except Exception as exc:  # redis.RedisError, OSError: a cache must never fail a request
            self._failed("get", exc)
            return None
        if raw is None:
            return None
        try:
            value: dict[str, Any] = json.loads(raw)
        except ValueError:
            return None
        return value

    def set(self, key: str, value: dict[str, Any]) -> None:
        if self.ttl_seconds <= 0 or not self.available:
            return
        try:
            self._client.set(key, json.dumps(value), ex=self.ttl_seconds)
        except Exception as exc:
            self._failed("set", exc)

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except Exception:
            return False

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead connection is not worth reporting
            self._client.close()


def make_cache(redis_url: str | None, ttl_seconds: int) -> MemoryQueryCache | RedisQueryCache:
    """Redis cache when ``redis_url`` is set, else the in-process TTL cache."""
    if redis_url:
        return RedisQueryCache(redis_url, ttl_seconds)
    return MemoryQueryCache(ttl_seconds)
