"""The API's models, each built once on first use: the dense embedder, the batching query
embedder around it, the BM25 sparse encoder, the answerer and the per-tenant PII maskers."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from rag_platform.lib.answer import Answerer
from rag_platform.lib.embedding import (
    BatchingQueryEmbedder,
    Embedder,
    SparseEncoder,
    get_embedder,
    get_sparse_encoder,
)
from rag_platform.lib.rag import build_answerer
from rag_platform.lib.tenants import PIIPolicy
from rag_platform.settings import Settings

if TYPE_CHECKING:
    from rag_platform.lib.ingestion.mask import PIIMasker

logger = logging.getLogger("serving.models")


class Models:
    """Lazily built, thread-safe model holders.

    Args:
        settings: platform settings (query batch size, LLM endpoint, spaCy model).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._query_embedder: BatchingQueryEmbedder | None = None
        self._answerer: Answerer | None = None
        self._maskers: dict[str, PIIMasker] = {}

    @property
    def embedder(self) -> Embedder:
        """The process-wide dense embedder (loaded on first use)."""
        return get_embedder()

    @property
    def sparse_encoder(self) -> SparseEncoder:
        """The process-wide BM25 encoder."""
        return get_sparse_encoder()

    @property
    def query_embedder(self) -> BatchingQueryEmbedder:
        """Embeds the queries of concurrent requests together (see ``BatchingQueryEmbedder``)."""
        with self._lock:
            if self._query_embedder is None:
                self._query_embedder = BatchingQueryEmbedder(
                    self.embedder, self.settings.query_batch_size
                )
            return self._query_embedder

    @property
    def answerer(self) -> Answerer:
        """The answerer :func:`~rag_platform.lib.rag.build_answerer` picks for the settings."""
        with self._lock:
            if self._answerer is None:
                self._answerer = build_answerer(self.settings, self.embedder)
            return self._answerer

    @property
    def uses_llm(self) -> bool:
        """Whether answers come from the configured LLM endpoint."""
        return self.answerer.mode == "llm"

    def masker(self, tenant: str, policy: PIIPolicy) -> PIIMasker:
        """The tenant's ``PIIMasker`` for ``policy`` (built once per tenant until
        :meth:`forget_maskers`; Presidio loads on first use)."""
        from rag_platform.lib.ingestion.mask import PIIMasker

        with self._lock:
            masker = self._maskers.get(tenant)
            if masker is None:
                masker = PIIMasker(policy, spacy_model=self.settings.spacy_model)
                self._maskers[tenant] = masker
            return masker

    def forget_maskers(self, tenants: list[str]) -> None:
        """Drops the maskers of ``tenants`` (their PII policy may have changed)."""
        with self._lock:
            for tenant in tenants:
                self._maskers.pop(tenant, None)

    def close(self) -> None:
        """Stops the batching worker and closes the answerer's clients."""
        with self._lock:
            query_embedder, answerer = self._query_embedder, self._answerer
        if query_embedder is not None:
            query_embedder.close()
        if answerer is not None:
            answerer.close()
