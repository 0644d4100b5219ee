"""The one place that assembles the query path: the dense embedder of an index version, the
retriever over it and the answerer. The query API (``serving.models``, ``serving.retrievers``)
and the golden-set evaluation (:mod:`rag_platform.lib.evaluation.runner`) both call these, so an
evaluation scores exactly what the API serves.
"""

from __future__ import annotations

from collections.abc import Mapping

from rag_platform.lib.answer import Answerer, ExtractiveAnswerer, LLMAnswerer, TokenCounter
from rag_platform.lib.conversation import LLMRewriter, QuestionRewriter, RuleRewriter
from rag_platform.lib.embedding import (
    DenseEmbedder,
    DenseQueryEncoder,
    SparseEncoder,
    load_embedder,
    parse_embedding_identity,
)
from rag_platform.lib.ingestion.chunk import load_tokenizer
from rag_platform.lib.retrieval import Retriever, SearchableIndex
from rag_platform.lib.routing import RoutedAnswerer, RoutingObserver, build_routes
from rag_platform.lib.tenants import GenerationConfig, ModelRoute, RetrievalSettings
from rag_platform.settings import Settings


def build_embedder(
    settings: Settings, version_details: Mapping[str, object] | None = None
) -> DenseEmbedder:
    """The dense embedder: of an index version, or the one the settings select.

    Queries must be embedded by the model and backend that embedded the version's chunks: an
    index version records that embedding identity in ``details["embedding"]`` (written by
    ``IndexVersions.build_or_reuse``), and a version built before identities were recorded
    holds PyTorch vectors of ``RAG_EMBEDDING_MODEL``. So an API or evaluation whose
    ``RAG_EMBEDDING_BACKEND`` differs from the backend of the version it reads (during a switch
    of backend, or after a rollback across one) still embeds queries with the version's own.

    Args:
        settings: ``embedding_backend``, ``embedding_model``, ``embedding_batch_size``,
            ``resolved_models_dir`` and ``embedding_threads`` are read.
        version_details: the index version's ``details``; None: the settings' backend and
            model (the embedder the pipeline uses for new versions).

    Returns:
        The process-wide embedder of :func:`~rag_platform.lib.embedding.load_embedder`.
    """
    if version_details is None:
        backend, model_name = settings.embedding_backend, settings.embedding_model
    else:
        identity = version_details.get("embedding")
        model_name, backend = parse_embedding_identity(
            identity if isinstance(identity, str) and identity else settings.embedding_model
        )
    return load_embedder(
        backend,
        model_name,
        settings.embedding_batch_size,
        settings.resolved_models_dir,
        settings.embedding_threads,
    )


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
        query_encoder: the dense query encoder of the version (:func:`build_embedder`), or in
            the API the ``BatchingQueryEmbedder`` around it (same vectors, batched across
            requests).
        sparse_encoder: the BM25 query encoder.

    Raises:
        ValueError: empty ``tenant``.
    """
    return Retriever(reader, query_encoder, sparse_encoder, retrieval, tenant)


def embedding_token_counter() -> TokenCounter:
    """Counts tokens with the embedding model's tokenizer (an estimate of an LLM's count): the
    word pieces of all-MiniLM-L6-v2's fast tokenizer, without special tokens or truncation (the
    chunker's counter, the same for either embedding backend)."""
    tokenizer = load_tokenizer()

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count


def build_answerer(
    settings: Settings,
    embedder: DenseEmbedder,
    count_tokens: TokenCounter | None = None,
    generation: GenerationConfig | None = None,
    observe: RoutingObserver | None = None,
) -> Answerer:
    """The answerer of the query path.

    Without ``generation`` (the golden-set evaluation): ``LLMAnswerer`` when
    ``settings.llm_base_url`` and ``llm_model`` are set (with ``llm_api_key``,
    ``llm_timeout_seconds`` and ``llm_max_tokens``), else ``ExtractiveAnswerer``.

    With a tenant's ``generation`` block (the API): a ``RoutedAnswerer`` over its ``models``,
    or, when it declares none, over the settings' endpoint as one route named
    ``settings.llm_model`` (``llm_max_retries`` retries); the extractive answerer is the last
    resort. With no models and no endpoint configured, ``ExtractiveAnswerer``.

    Args:
        settings: the platform settings.
        embedder: the dense embedder (the extractive answerer scores sentences with it).
        count_tokens: the LLM's tokenizer as a counter, for streams whose endpoint reports no
            ``usage``; default the embedding model's tokenizer (an estimate).
        generation: the tenant's generation settings (routes, breaker).
        observe: called after each attempt of a route (see ``RoutedAnswerer``).

    Raises:
        KeyError: a route's ``api_key_env`` is not set in the environment.
    """
    has_endpoint = bool(settings.llm_base_url and settings.llm_model)
    if generation is None:
        if has_endpoint:
            assert settings.llm_base_url and settings.llm_model
            return LLMAnswerer(
                settings.llm_base_url,
                settings.llm_model,
                api_key=settings.llm_api_key,
                timeout=settings.llm_timeout_seconds,
                max_tokens=settings.llm_max_tokens,
                count_tokens=count_tokens or embedding_token_counter(),
            )
        return ExtractiveAnswerer(embedder)
    if not generation.models and not has_endpoint:
        return ExtractiveAnswerer(embedder)
    counter = count_tokens or embedding_token_counter()
    if generation.models:
        routes = build_routes(
            generation.models,
            generation.breaker,
            max_tokens=settings.llm_max_tokens,
            count_tokens=counter,
        )
    else:
        assert settings.llm_base_url and settings.llm_model
        (route,) = build_routes(
            [
                ModelRoute(
                    name="default",
                    base_url=settings.llm_base_url,
                    model=settings.llm_model,
                    timeout_seconds=settings.llm_timeout_seconds,
                    max_retries=settings.llm_max_retries,
                )
            ],
            generation.breaker,
            max_tokens=settings.llm_max_tokens,
            count_tokens=counter,
        )
        route.name = settings.llm_model
        route.answerer.api_key = settings.llm_api_key
        routes = [route]
    return RoutedAnswerer(routes, ExtractiveAnswerer(embedder), observe)


def build_rewriter(settings: Settings) -> QuestionRewriter:
    """The follow-up rewriter of conversations: ``LLMRewriter`` on the answer's endpoint when
    ``settings.llm_base_url`` and ``llm_model`` are set (falling back to the rule when the call
    fails), else the deterministic ``RuleRewriter``."""
    if settings.llm_base_url and settings.llm_model:
        return LLMRewriter(
            settings.llm_base_url,
            settings.llm_model,
            api_key=settings.llm_api_key,
            timeout=settings.llm_timeout_seconds,
        )
    return RuleRewriter()
