"""Vector index: Qdrant Edge shards per version (embedded default), the reader pool, and the
version lifecycle (`.versions`: build-or-reuse, publish, garbage collection)."""

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
from rag_platform.lib.index.pool import ShardPool, get_pool

__all__ = [
    "DENSE_VECTOR",
    "SPARSE_VECTOR",
    "EdgeIndexReader",
    "EdgeIndexWriter",
    "IndexPoint",
    "IndexUnavailableError",
    "ShardPool",
    "build_filter",
    "get_pool",
    "make_payload",
    "shard_lock_path",
]
