"""The one place that assembles the query path: the retriever over an index version and the
answerer. The query API (``serving.models``, ``serving.retrievers``) and the golden-set
evaluation (:mod:`rag_platform.lib.evaluation.runner`) both call these, so an evaluation scores
exactly what the API serves.
"""

from __future__ import annotations

from rag_platform.lib.answer import Answerer, ExtractiveAnswerer, LLMAnswerer, TokenCounter
from rag_platform.lib.embedding import DenseQueryEncoder, Embedder, SparseEncoder
from rag_platform.lib.retrieval import Retriever, SearchableIndex
from rag_platform.lib.tenants import RetrievalSettings
from rag_platform.settings import Settings


def build_retriever(
    reader: SearchableIndex,
    tenant: str,
    retrieval: RetrievalSettings,
    query_encoder: DenseQueryEncoder,
    sparse_encoder: SparseEncoder,
) -> Retriever:
    """The hybrid retriever of ``tenant`` over one open index version.

    Args:
        reader: the open index version (an Edge shard or a Qdrant server collection, from
            ``IndexBackend.acquire`` or ``open_reader``).
        tenant: the tenant every hit must belong to.
        retrieval: the tenant's retrieval settings (fusion, weights, prefetch depths).
        query_encoder: the dense query encoder: the ``Embedder``, or in the API the
            ``BatchingQueryEmbedder`` around it (same vectors, batched across requests).
        sparse_encoder: the BM25 query encoder.

    Raises:
        ValueError: empty ``tenant``.
    """
    return Retriever(reader, query_encoder, sparse_encoder, retrieval, tenant)


def embedding_token_counter(embedder: Embedder) -> TokenCounter:
    """Counts tokens with the embedding model's tokenizer (an estimate of an LLM's count)."""

    def count(text: str) -> int:
        return len(embedder.tokenizer.encode(text, add_special_tokens=False))

    return count


def build_answerer(
    settings: Settings, embedder: Embedder, count_tokens: TokenCounter | None = None
) -> Answerer:
    """``LLMAnswerer`` when ``settings.llm_base_url`` and ``llm_model`` are set (with
    ``llm_api_key``, ``llm_timeout_seconds`` and ``llm_max_tokens``), else ``ExtractiveAnswerer``.

    Args:
        settings: the platform settings.
        embedder: the dense embedder (the extractive answerer scores sentences with it).
        count_tokens: the LLM's tokenizer as a counter, for streams whose endpoint reports no
            ``usage``; default the embedding model's tokenizer (an estimate).
    """
    if settings.llm_base_url and settings.llm_model:
        return LLMAnswerer(
            settings.llm_base_url,
            settings.llm_model,
            api_key=settings.llm_api_key,
            timeout=settings.llm_timeout_seconds,
            max_tokens=settings.llm_max_tokens,
            count_tokens=count_tokens or embedding_token_counter(embedder),
        )
    return ExtractiveAnswerer(embedder)
