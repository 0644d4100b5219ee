"""Published index versions opened for requests: a reader per version and a retriever over it.

A request opens its tenant's published version through the index backend
(:meth:`~rag_platform.lib.index.backend.IndexBackend.acquire`): on Qdrant Edge the refcounted
:class:`~rag_platform.lib.index.pool.ShardPool` (an old version closes once its last request
finishes), on the Qdrant server the tenant's alias. Either way a request sees the old version or
the new one, never a mix. The ``Retriever`` over an open reader is built once, through
:func:`rag_platform.lib.rag.build_retriever`, and reused until the version or the tenant's
retrieval settings change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rag_platform.lib.index.backend import IndexBackend, IndexReader
from rag_platform.lib.rag import build_retriever
from rag_platform.lib.retrieval import Retriever
from rag_platform.lib.store import IndexVersion
from rag_platform.lib.tenants import RetrievalSettings
from serving.models import Models


class Retrievers:
    """Opens published versions and hands out their retrievers.

    Args:
        backend: the process's index backend (``open_backend(settings)``).
        models: the query encoders the retrievers use.
        retrieval_settings: ``tenant -> RetrievalSettings`` (from the tenant registry).
    """

    def __init__(
        self,
        backend: IndexBackend,
        models: Models,
        retrieval_settings: Callable[[str], RetrievalSettings],
    ) -> None:
        self.backend = backend
        self._models = models
        self._retrieval_settings = retrieval_settings
        self._lock = threading.Lock()
        self._built: dict[str, tuple[str, IndexReader, Retriever]] = {}

    @contextmanager
    def open_reader(self, version: IndexVersion) -> Iterator[IndexReader]:
        """The shared reader of the published ``version``, held open for the ``with`` block.

        Raises:
            Exception: whatever opening the version raises (missing or locked shard directory,
                missing collection, unreachable server).
        """
        with self.backend.acquire(version.tenant, version.version, version.path) as reader:
            yield reader

    @contextmanager
    def open_retriever(
        self, version: IndexVersion, retrieval: RetrievalSettings | None = None
    ) -> Iterator[Retriever]:
        """A retriever over ``version``, its reader held open for the ``with`` block (one
        retriever per tenant, rebuilt when the version or its reader changes).

        Args:
            version: the published version.
            retrieval: settings other than the tenant's (an experiment's variant): a retriever
                with them over the same reader (building one costs nothing: no model, no I/O).

        Raises:
            Exception: whatever opening the version raises.
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
            if retrieval is not None and retrieval != retriever.settings:
                retriever = build_retriever(
                    reader, version.tenant, retrieval, retriever.embedder, retriever.sparse_encoder
                )
            yield retriever

    def forget(self, tenants: list[str]) -> None:
        """Drops the retrievers of ``tenants`` (their retrieval settings may have changed)."""
        with self._lock:
            for tenant in tenants:
                self._built.pop(tenant, None)

    def close(self) -> None:
        """Lets go of every open reader (Edge shards close once idle)."""
        self.backend.close()
