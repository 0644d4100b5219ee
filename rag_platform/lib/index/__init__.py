"""Vector index: one interface (:mod:`.backend`) over Qdrant Edge shards per version (the
embedded default, :mod:`.edge`, with the API's reader pool :mod:`.pool`) and a Qdrant server
with a collection per version and an alias per tenant (:mod:`.server`, imported only when
``RAG_QDRANT_URL`` selects it); the version lifecycle (:mod:`.versions`: build-or-reuse,
publish, garbage collection); reconciliation receipts (:mod:`.receipt`)."""

from rag_platform.lib.index.backend import (
    EdgeBackend,
    IndexBackend,
    IndexReader,
    IndexWriter,
    open_backend,
)
from rag_platform.lib.index.edge import (
    DENSE_VECTOR,
    SPARSE_VECTOR,
    EdgeIndexReader,
    EdgeIndexWriter,
    IndexPoint,
    IndexUnavailableError,
    build_filter,
    make_payload,
    shard_lock_path,
)
from rag_platform.lib.index.pool import ShardPool

__all__ = [
    "DENSE_VECTOR",
    "SPARSE_VECTOR",
    "EdgeBackend",
    "EdgeIndexReader",
    "EdgeIndexWriter",
    "IndexBackend",
    "IndexPoint",
    "IndexReader",
    "IndexUnavailableError",
    "IndexWriter",
    "ShardPool",
    "build_filter",
    "make_payload",
    "open_backend",
    "shard_lock_path",
]
