"""Embeddings: dense sentence embeddings (`.dense`), BM25 sparse vectors (`.sparse`) and the
pipeline's embedding stage with its cache (`.stage`)."""

from rag_platform.lib.embedding.dense import (
    DEFAULT_MODEL_NAME,
    BatchingQueryEmbedder,
    DenseQueryEncoder,
    Embedder,
    get_embedder,
)
from rag_platform.lib.embedding.sparse import SparseEncoder, SparseVector, get_sparse_encoder

__all__ = [
    "DEFAULT_MODEL_NAME",
    "BatchingQueryEmbedder",
    "DenseQueryEncoder",
    "Embedder",
    "SparseEncoder",
    "SparseVector",
    "get_embedder",
    "get_sparse_encoder",
]
