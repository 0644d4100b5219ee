"""The published index version of each tenant, memoised for a second.

A request reads the tenant's published version from here; the store is asked at most once per
``ttl_seconds`` per tenant, so publishing (or rolling back) reaches the API within a second
without a restart, and a burst of requests costs one database read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from cachetools import TTLCache

from rag_platform.lib.store import IndexVersion


class PublishedVersions:
    """A one-second memo of ``lookup(tenant)`` (the store's published version).

    Args:
        lookup: ``tenant -> published IndexVersion or None`` (e.g.
            ``MetadataStore.get_published_version``); may raise when the database is down.
        ttl_seconds: how long a look-up is reused.
        maxsize: most tenants memoised.
    """

    def __init__(
        self,
        lookup: Callable[[str], IndexVersion | None],
        ttl_seconds: float = 1.0,
        maxsize: int = 10_000,
    ) -> None:
        self._lookup = lookup
        self._memo: TTLCache[str, IndexVersion | None] = TTLCache(maxsize=maxsize, ttl=ttl_seconds)
        self._lock = threading.Lock()

    def get(self, tenant: str) -> IndexVersion | None:
        """The tenant's published version (a look-up under ``ttl_seconds`` old is reused).

        Raises:
            Exception: whatever ``lookup`` raises (the database is down).
        """
        found, version = self.memoized(tenant)
        if found:
            return version
        version = self._lookup(tenant)
        with self._lock:
            self._memo[tenant] = version
        return version

    def memoized(self, tenant: str) -> tuple[bool, IndexVersion | None]:
        """``(True, version)`` when the last look-up is under ``ttl_seconds`` old, else
        ``(False, None)``; never calls ``lookup``."""
        with self._lock:
            if tenant in self._memo:
                return True, self._memo[tenant]
        return False, None

    def invalidate(self, tenant: str) -> None:
        """Forgets the memoised version of ``tenant`` (after a rollback in this process)."""
        with self._lock:
            self._memo.pop(tenant, None)
