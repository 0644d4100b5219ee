"""The API's models, each built once on first use: the dense embedders, a batching query
embedder around each, the BM25 sparse encoder, the per-tenant answerers (model routes with
their circuit breakers) and the per-tenant PII maskers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from rag_platform.lib.answer import Answerer
from rag_platform.lib.conversation import QuestionRewriter
from rag_platform.lib.embedding import (
    BatchingQueryEmbedder,
    DenseEmbedder,
    SparseEncoder,
    embedding_identity,
    get_sparse_encoder,
)
from rag_platform.lib.rag import build_answerer, build_embedder, build_rewriter
from rag_platform.lib.routing import RoutingObserver
from rag_platform.lib.store import IndexVersion
from rag_platform.lib.tenants import GenerationConfig, PIIPolicy
from rag_platform.settings import Settings

if TYPE_CHECKING:
    from rag_platform.lib.ingestion.mask import PIIMasker

logger = logging.getLogger("serving.models")


class Models:
    """Lazily built, thread-safe model holders.

    Queries are embedded by the model and backend that embedded the index version they search
    (:func:`~rag_platform.lib.rag.build_embedder`), whatever ``RAG_EMBEDDING_BACKEND`` says:
    while a switch of backend reaches the tenants one materialization at a time, or after a
    rollback to a version of the other backend, each tenant's vectors are compared with query
    vectors of their own kind. The settings' backend is the one warmed up and the one the
    extractive answerer scores sentences with.

    Args:
        settings: platform settings (embedding backend, model, batch sizes, LLM endpoint,
            spaCy model).
        observer_for: ``tenant -> observer`` of the tenant's model routing (the LLM metrics).
    """

    def __init__(
        self,
        settings: Settings,
        observer_for: Callable[[str], RoutingObserver] | None = None,
    ) -> None:
        self.settings = settings
        self.observer_for = observer_for
        self._lock = threading.Lock()
        self._query_embedders: dict[str, BatchingQueryEmbedder] = {}
        self._answerers: dict[str, Answerer] = {}
        self._rewriter: QuestionRewriter | None = None
        self._maskers: dict[str, PIIMasker] = {}

    @property
    def embedder(self) -> DenseEmbedder:
        """The process-wide dense embedder the settings select (loaded on first use)."""
        return build_embedder(self.settings)

    @property
    def sparse_encoder(self) -> SparseEncoder:
        """The process-wide BM25 encoder."""
        return get_sparse_encoder()

    @property
    def query_embedder(self) -> BatchingQueryEmbedder:
        """The batching query embedder of the settings' embedder."""
        return self._batching(self.embedder)

    def query_embedder_for(self, version: IndexVersion) -> BatchingQueryEmbedder:
        """The batching query embedder of the embedder that embedded ``version``'s chunks."""
        return self._batching(build_embedder(self.settings, version.details))

    def _batching(self, embedder: DenseEmbedder) -> BatchingQueryEmbedder:
        """Embeds the queries of concurrent requests together (see ``BatchingQueryEmbedder``),
        one worker per embedding identity."""
        identity = embedding_identity(embedder.model_name, embedder.backend)
        with self._lock:
            batcher = self._query_embedders.get(identity)
            if batcher is None:
                batcher = BatchingQueryEmbedder(embedder, self.settings.query_batch_size)
                self._query_embedders[identity] = batcher
            return batcher

    def answerer_for(self, tenant: str, generation: GenerationConfig) -> Answerer:
        """The tenant's answerer (:func:`~rag_platform.lib.rag.build_answerer` with its
        ``generation`` block), built once until :meth:`forget_tenants`: its routes' circuit
        breakers remember failures across requests.

        Raises:
            KeyError: a route's ``api_key_env`` is not set.
        """
        with self._lock:
            answerer = self._answerers.get(tenant)
            if answerer is None:
                observe = self.observer_for(tenant) if self.observer_for else None
                answerer = build_answerer(
                    self.settings, self.embedder, generation=generation, observe=observe
                )
                self._answerers[tenant] = answerer
            return answerer

    @property
    def rewriter(self) -> QuestionRewriter:
        """The conversations' follow-up rewriter (:func:`~rag_platform.lib.rag.build_rewriter`)."""
        with self._lock:
            if self._rewriter is None:
                self._rewriter = build_rewriter(self.settings)
            return self._rewriter

    def masker(self, tenant: str, policy: PIIPolicy) -> PIIMasker:
        """The tenant's ``PIIMasker`` for ``policy`` (built once per tenant until
        :meth:`forget_tenants`; Presidio loads on first use)."""
        from rag_platform.lib.ingestion.mask import PIIMasker

        with self._lock:
            masker = self._maskers.get(tenant)
            if masker is None:
                masker = PIIMasker(policy, spacy_model=self.settings.spacy_model)
                self._maskers[tenant] = masker
            return masker

    def forget_tenants(self, tenants: list[str]) -> None:
        """Drops the maskers and answerers of ``tenants`` (their PII policy or model routes
        may have changed; new answerers start with closed circuits). A dropped answerer is not
        closed: requests still using it finish, and its HTTP clients go with it."""
        with self._lock:
            for tenant in tenants:
                self._answerers.pop(tenant, None)
                self._maskers.pop(tenant, None)

    def close(self) -> None:
        """Stops the batching workers and closes the answerer's clients."""
        with self._lock:
            query_embedders = list(self._query_embedders.values())
            answerers = list(self._answerers.values())
            self._answerers.clear()
            rewriter = self._rewriter
        for query_embedder in query_embedders:
            query_embedder.close()
        for answerer in answerers:
            answerer.close()
        if rewriter is not None:
            rewriter.close()
