"""One interface over the two index engines, in the spirit of qdrant-client's ``QdrantBase``
with ``QdrantLocal`` and ``QdrantRemote`` behind it.

- :class:`EdgeBackend` (the embedded default): one Qdrant Edge shard directory per version,
  ``<index_dir>/<tenant>/<version>``; publishing is the store row alone; the API shares each
  open shard among its threads through a :class:`~rag_platform.lib.index.pool.ShardPool`.
- :class:`~rag_platform.lib.index.server.ServerBackend` (the scale-out path): a Qdrant server
  through ``qdrant-client``, one collection ``kb_<tenant>_<version>`` per version and an alias
  ``kb_<tenant>`` per tenant that publishing switches atomically; any number of API processes
  read through it.

:func:`open_backend` picks one from the settings (``RAG_QDRANT_URL``). A version's *location*
(its shard directory, or its collection name) is what the metadata store keeps in
``IndexVersion.path``.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from rag_platform.lib.index.edge import EdgeIndexReader, EdgeIndexWriter, IndexPoint
from rag_platform.lib.index.pool import ShardPool
from rag_platform.lib.index.versions import delete_shard, directory_bytes, gc_versions
from rag_platform.lib.retrieval import SearchableIndex

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

    from rag_platform.settings import Settings

#: ``(point id, payload)`` of one point, as the index holds it.
PointPayload = tuple[str, dict[str, Any]]


class IndexWriter(Protocol):
    """Writes the points of one new index version."""

    def upsert(self, points: Sequence[IndexPoint], batch_size: int = 512) -> int:
        """Inserts or replaces points by id; returns how many were written."""
        ...

    def count(self) -> int:
        """Points written so far."""
        ...

    def close(self) -> None:
        """Makes the version complete and durable (idempotent)."""
        ...


class IndexReader(SearchableIndex, Protocol):
    """Reads one index version: hybrid search, counts and every point's payload."""

    def count(self, tenant: str | None = None) -> int:
        """Points in the version (of one tenant when given)."""
        ...

    def payloads(self) -> Iterator[PointPayload]:
        """Every point's ``(id, payload)``, in id order, streamed."""
        ...

    def get_points(self, ids: Sequence[str]) -> list[IndexPoint]:
        """Points by id with their vectors and payload (missing ids are skipped)."""
        ...

    def close(self) -> None:
        """Releases what the reader holds (idempotent)."""
        ...


class IndexBackend(Protocol):
    """Where index versions live: create, read, publish and delete them.

    ``location`` arguments are the strings :meth:`location` returns (kept by the metadata store
    as ``IndexVersion.path``).
    """

    kind: Literal["edge", "server"]

    def location(self, tenant: str, version: str) -> str:
        """Where ``version`` of ``tenant`` lives: a shard directory or a collection name."""
        ...

    def create_writer(self, tenant: str, version: str, dim: int) -> IndexWriter:
        """An empty new version with ``dim``-dimensional dense vectors.

        Raises:
            FileExistsError: the version exists already (a version is written once).
        """
        ...

    def open_reader(self, tenant: str, version: str, location: str) -> IndexReader:
        """A reader of exactly this version (a build being checked or evaluated); the caller
        closes it.

        Raises:
            FileNotFoundError, IndexUnavailableError: the version cannot be opened.
        """
        ...

    def acquire(
        self, tenant: str, version: str, location: str
    ) -> AbstractContextManager[IndexReader]:
        """The API's reader of the tenant's *published* ``version``, held for the ``with``
        block and shared between threads; a query runs on one version, never a mix.

        Raises:
            FileNotFoundError, IndexUnavailableError: the version cannot be opened.
        """
        ...

    def publish(self, tenant: str, version: str) -> None:
        """Makes the engine serve ``version`` for the tenant (after the store's publish): on
        the server, the alias switch; on Edge, nothing.

        Raises:
            FileNotFoundError: the server has no collection for the version.
        """
        ...

    def delete(self, tenant: str, version: str) -> bool:
        """Deletes a version; False when it is in use (left for a later run) or absent."""
        ...

    def collect_garbage(self, tenant: str, keep: set[str]) -> list[str]:
        """Deletes every stored version of the tenant not in ``keep`` and not in use.

        Returns:
            The deleted version names, sorted.
        """
        ...

    def size_bytes(self, location: str) -> int | None:
        """The version's size on disk in bytes, None when the engine does not tell."""
        ...

    def exists(self, location: str) -> bool:
        """Whether the version at ``location`` is stored."""
        ...

    def available(self) -> bool:
        """Whether the engine can be reached (the index directory exists, the server answers)."""
        ...

    def release_tenant(self, tenant: str) -> None:
        """Lets go of the tenant's open readers (closed once idle)."""
        ...

    def close(self) -> None:
        """Lets go of every open reader."""
        ...


class EdgeBackend:
    """Qdrant Edge shards under ``index_dir``: ``<index_dir>/<tenant>/<version>``.

    Args:
        index_dir: ``RAG_HOME/indexes``.
        pool: the API's shard pool; default a new :class:`ShardPool` (only the API acquires).
    """

    kind: Literal["edge", "server"] = "edge"

    def __init__(self, index_dir: Path, pool: ShardPool | None = None) -> None:
        self.index_dir = Path(index_dir)
        self.pool = pool if pool is not None else ShardPool()

    def tenant_dir(self, tenant: str) -> Path:
        """The folder of the tenant's version directories."""
        return self.index_dir / tenant

    def location(self, tenant: str, version: str) -> str:
        """The shard directory ``<index_dir>/<tenant>/<version>``."""
        return str(self.tenant_dir(tenant) / version)

    def create_writer(self, tenant: str, version: str, dim: int) -> EdgeIndexWriter:
        """A new shard (see :meth:`EdgeIndexWriter.create`).

        Raises:
            FileExistsError: the version directory exists and is not empty.
        """
        path = self.tenant_dir(tenant) / version
        path.parent.mkdir(parents=True, exist_ok=True)
        return EdgeIndexWriter.create(path, dim)

    def open_reader(self, tenant: str, version: str, location: str) -> EdgeIndexReader:
        """The shard at ``location``, holding its reader lock until closed.

        Raises:
            FileNotFoundError: no such directory. IndexUnavailableError: another process has it.
        """
        return EdgeIndexReader(Path(location))

    def acquire(
        self, tenant: str, version: str, location: str
    ) -> AbstractContextManager[EdgeIndexReader]:
        """The pooled reader (see :meth:`ShardPool.acquire`: refcounted, the previous version
        retired once idle)."""
        return self.pool.acquire(tenant, version, Path(location))

    def publish(self, tenant: str, version: str) -> None:
        """Nothing beyond the store row: readers open the version the store publishes."""

    def delete(self, tenant: str, version: str) -> bool:
        """Deletes the shard directory unless a reader or writer holds its lock."""
        return delete_shard(self.tenant_dir(tenant) / version)

    def collect_garbage(self, tenant: str, keep: set[str]) -> list[str]:
        """See :func:`~rag_platform.lib.index.versions.gc_versions`."""
        return gc_versions(self.tenant_dir(tenant), keep)

    def size_bytes(self, location: str) -> int | None:
        """Total size of the shard's files."""
        path = Path(location)
        return directory_bytes(path) if path.is_dir() else None

    def exists(self, location: str) -> bool:
        """Whether the shard directory exists."""
        return Path(location).is_dir()

    def available(self) -> bool:
        """Whether ``index_dir`` exists."""
        return self.index_dir.is_dir()

    def release_tenant(self, tenant: str) -> None:
        """See :meth:`ShardPool.release_tenant`."""
        self.pool.release_tenant(tenant)

    def close(self) -> None:
        """See :meth:`ShardPool.close_all`."""
        self.pool.close_all()


_clients: dict[tuple[str, str | None], QdrantClient] = {}
_clients_lock = threading.Lock()


def _shared_client(url: str, api_key: str | None) -> QdrantClient:
    """One ``QdrantClient`` per (URL or local path, key) in the process.

    Local mode allows one client per path and process, and every backend of a process (the
    Dagster steps of an in-process run, the API in a test) then shares it; for a server it is
    one connection pool.
    """
    from qdrant_client import QdrantClient

    with _clients_lock:
        client = _clients.get((url, api_key))
        if client is None:
            if url.startswith(("http://", "https://")):
                client = QdrantClient(url=url, api_key=api_key)
            elif url == ":memory:":
                client = QdrantClient(location=":memory:")
            else:
                Path(url).mkdir(parents=True, exist_ok=True)
                client = QdrantClient(path=url)
            _clients[(url, api_key)] = client
        return client


@atexit.register
def _close_shared_clients() -> None:
    """Closes the shared clients while the interpreter can still run their ``close`` (left to
    ``__del__`` at shutdown, local mode's close fails with ``sys.meta_path is None``)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


def open_backend(settings: Settings, pool: ShardPool | None = None) -> IndexBackend:
    """The backend the settings select.

    ``RAG_QDRANT_URL`` unset: :class:`EdgeBackend` over ``settings.index_dir``. ``http(s)://…``:
    a Qdrant server (with ``RAG_QDRANT_API_KEY``). ``:memory:`` or a folder: qdrant-client local
    mode, the server API's stand-in for tests (one process per folder).

    Args:
        settings: the platform settings.
        pool: the Edge shard pool to use (the API's); ignored by the server backend.
    """
    if not settings.qdrant_url:
        return EdgeBackend(settings.index_dir, pool)
    from rag_platform.lib.index.server import ServerBackend

    return ServerBackend(_shared_client(settings.qdrant_url, settings.qdrant_api_key))


__all__ = [
    "EdgeBackend",
    "IndexBackend",
    "IndexReader",
    "IndexWriter",
    "PointPayload",
    "open_backend",
]
