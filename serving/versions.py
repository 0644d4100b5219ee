"""Per-tenant store look-ups memoised for a second: the published index version, the erased
documents.

A request reads the tenant's published version (and its suppressed document ids) from here; the
store is asked at most once per ``ttl_seconds`` per tenant, so publishing (or rolling back, or
erasing a document) reaches the API within a second without a restart, and a burst of requests
costs one database read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from cachetools import TTLCache

from rag_platform.lib.store import IndexVersion

T = TypeVar("T")


class TenantMemo(Generic[T]):
    """A one-second memo of ``lookup(tenant)``.

    Args:
        lookup: ``tenant -> value`` (e.g. ``MetadataStore.get_published_version``); may raise
            when the database is down.
        ttl_seconds: how long a look-up is reused.
        maxsize: most tenants memoised.
    """

    def __init__(
        self,
        lookup: Callable[[str], T],
        ttl_seconds: float = 1.0,
        maxsize: int = 10_000,
    ) -> None:
        self._lookup = lookup
        self._memo: TTLCache[str, T] = TTLCache(maxsize=maxsize, ttl=ttl_seconds)
        self._lock = threading.Lock()

    def get(self, tenant: str) -> T:
        """The tenant's value (a look-up under ``ttl_seconds`` old is reused).

        Raises:
            Exception: whatever ``lookup`` raises (the database is down).
        """
        with self._lock:
            if tenant in self._memo:
                return self._memo[tenant]
        value = self._lookup(tenant)
        with self._lock:
            self._memo[tenant] = value
        return value

    def memoized(self, tenant: str) -> tuple[bool, T | None]:
        """``(True, value)`` when the last look-up is under ``ttl_seconds`` old, else
        ``(False, None)``; never calls ``lookup``."""
        with self._lock:
            if tenant in self._memo:
                return True, self._memo[tenant]
        return False, None

    def invalidate(self, tenant: str) -> None:
        """Forgets the memoised value of ``tenant`` (after a rollback or erasure in this
        process)."""
        with self._lock:
            self._memo.pop(tenant, None)


class PublishedVersions(TenantMemo[IndexVersion | None]):
    """The one-second memo of each tenant's published version
    (``MetadataStore.get_published_version``)."""
