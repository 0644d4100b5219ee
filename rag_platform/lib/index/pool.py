"""Process-wide pool of open index readers, one per (tenant, version), reference-counted.

The API resolves a tenant's published version per request and searches inside
``with pool.acquire(tenant, version, path) as reader:``. When a different version of the same
tenant is acquired (a publish or a rollback), it becomes the tenant's current version and the
previous one is *retired*: it closes as soon as its last in-flight query releases it. A query
therefore runs on exactly one version, old or new, never a mix.

Every open reader holds a shared ``flock`` on ``<version>.readers.lock``;
:func:`rag_platform.lib.index.versions.gc_versions` deletes a version directory only when it can
take that lock exclusively without blocking, so it never pulls a shard from under a reader in
this or another process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rag_platform.lib.index.edge import EdgeIndexReader

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    reader: EdgeIndexReader
    refcount: int = 0
    retired: bool = False


class ShardPool:
    """Shares one :class:`EdgeIndexReader` per (tenant, version) among threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._current: dict[str, str] = {}

    @contextmanager
    def acquire(self, tenant: str, version: str, path: Path) -> Iterator[EdgeIndexReader]:
        """Yields the open reader of ``tenant``'s ``version``, opening it on first use.

        Acquiring a version other than the tenant's current one makes it current and retires
        the previous one (closed when its reference count reaches 0).

        Args:
            tenant: tenant id.
            version: version name (the shard directory name).
            path: the shard directory.

        Raises:
            FileNotFoundError, IndexUnavailableError: the version cannot be opened.
        """
        key = (tenant, version)
        # Opening and closing happen under the pool lock: the engine allows one opener of a
        # shard directory, so a version being closed must be gone before it is opened again.
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = _Entry(EdgeIndexReader(Path(path)))
                self._entries[key] = entry
            entry.retired = False
            previous = self._current.get(tenant)
            if previous != version:
                self._current[tenant] = version
                if previous is not None:
                    old = self._entries.get((tenant, previous))
                    if old is not None:
                        old.retired = True
                        if old.refcount == 0:
                            del self._entries[(tenant, previous)]
                            self._close(old.reader)
            entry.refcount += 1
        try:
            yield entry.reader
        finally:
            with self._lock:
                entry.refcount -= 1
                if entry.refcount == 0 and entry.retired and self._entries.get(key) is entry:
                    del self._entries[key]
                    self._close(entry.reader)

    @staticmethod
    def _close(reader: EdgeIndexReader) -> None:
        try:
            reader.close()
        except Exception:  # a failing close must not fail the query that triggered it
            logger.exception("closing index reader %s failed", reader.path)

    def current_version(self, tenant: str) -> str | None:
        """The tenant's most recently acquired version, if any."""
        with self._lock:
            return self._current.get(tenant)

    def open_versions(self, tenant: str) -> dict[str, int]:
        """Open versions of a tenant and their reference counts."""
        with self._lock:
            return {v: e.refcount for (t, v), e in self._entries.items() if t == tenant}

    def release_tenant(self, tenant: str) -> None:
        """Retires every version of a tenant (closed once idle), e.g. when it is removed."""
        with self._lock:
            self._current.pop(tenant, None)
            for key in [k for k in self._entries if k[0] == tenant]:
                entry = self._entries[key]
                entry.retired = True
                if entry.refcount == 0:
                    del self._entries[key]
                    self._close(entry.reader)

    def close_all(self) -> None:
        """Retires every reader (API shutdown); readers in use close when released."""
        with self._lock:
            tenants = {t for t, _ in self._entries}
        for tenant in tenants:
            self.release_tenant(tenant)
