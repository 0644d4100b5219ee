"""Published index versions opened for requests: the shard pool and a retriever per version.

A request opens its tenant's published version through the :class:`ShardPool` (refcounted: an
old version closes once its last request finishes), so a request sees the old version or the new
one, never a mix. The ``Retriever`` over an open reader is built once, through
:func:`rag_platform.lib.rag.build_retriever`, and reused until the version or the tenant's
retrieval settings change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rag_platform.lib.index.edge import EdgeIndexReader
from rag_platform.lib.index.pool import ShardPool
from rag_platform.lib.rag import build_retriever
from rag_platform.lib.retrieval import Retriever
from rag_platform.lib.store import IndexVersion
from rag_platform.lib.tenants import RetrievalSettings
from serving.models import Models


class Retrievers:
    """Opens published versions and hands out their retrievers.

    Args:
        pool: the process's shard pool.
        models: the query encoders the retrievers use.
        retrieval_settings: ``tenant -> RetrievalSettings`` (from the tenant registry).
    """

    def __init__(
        self,
        pool: ShardPool,
        models: Models,
        retrieval_settings: Callable[[str], RetrievalSettings],
    ) -> None:
        self.pool = pool
        self._models = models
        self._retrieval_settings = retrieval_settings
        self._lock = threading.Lock()
        self._built: dict[str, tuple[str, EdgeIndexReader, Retriever]] = {}

    @contextmanager
    def open_reader(self, version: IndexVersion) -> Iterator[EdgeIndexReader]:
        """The pooled reader of ``version``, held open for the ``with`` block.

        Raises:
            Exception: whatever opening the shard raises (missing or locked directory).
        """
        with self.pool.acquire(version.tenant, version.version, Path(version.path)) as reader:
            yield reader

    @contextmanager
    def open_retriever(self, version: IndexVersion) -> Iterator[Retriever]:
        """A retriever over ``version``, its shard held open for the ``with`` block (one
        retriever per tenant, rebuilt when the version or its reader changes).

        Raises:
            Exception: whatever opening the shard raises.
        """
        with self.open_reader(version) as reader:
            with self._lock:
                built = self._built.get(version.tenant)
                if built is None or built[0] != version.version or built[1] is not reader:
                    retriever = build_retriever(
                        reader,
                        version.tenant,
                        self._retrieval_settings(version.tenant),
                        self._models.query_embedder_for(version),
                        self._models.sparse_encoder,
                    )
                    self._built[version.tenant] = (version.version, reader, retriever)
                else:
                    retriever = built[2]
            yield retriever

    def forget(self, tenants: list[str]) -> None:
        """Drops the retrievers of ``tenants`` (their retrieval settings may have changed)."""
        with self._lock:
            for tenant in tenants:
                self._built.pop(tenant, None)

    def close(self) -> None:
        """Retires every open shard (closed once idle)."""
        self.pool.close_all()
