"""Hybrid retrieval: the one code path used by the query API and by golden-set evaluation.

query → dense embedding + BM25 sparse vector → one Qdrant query (dense and sparse prefetches,
each filtered by tenant, ACL groups and user filters) → fusion per the tenant's
:class:`~rag_platform.lib.tenants.RetrievalSettings` → top k. Every hit is re-checked against the
tenant and the principal's ACL groups before it leaves this module (defence in depth: the
index-level filter is the primary control).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from rag_platform.lib import tracing
from rag_platform.lib.embedding import DenseQueryEncoder, SparseEncoder, SparseVector
from rag_platform.lib.models import Hit, SearchFilters
from rag_platform.lib.tenants import RetrievalSettings

logger = logging.getLogger(__name__)

#: Largest ``top_k`` a caller may ask for.
MAX_TOP_K = 1000


class SearchableIndex(Protocol):
    """What the retriever needs from an index version (Edge reader or server reader)."""

    def search(
        self,
        dense: np.ndarray,
        sparse: SparseVector,
        filters: SearchFilters,
        tenant: str,
        settings: RetrievalSettings,
        limit: int,
    ) -> list[Hit]: ...


@dataclass
class RetrievalResult:
    """Hits of one query and where the time went.

    Attributes:
        hits: best first, at most ``top_k``, all visible to the principal.
        embed_ms: dense + sparse query encoding, milliseconds.
        search_ms: the index query, milliseconds.
        dropped: hits removed by the post-check (should always be 0).
        query_vector: the dense query embedding, shape ``(dim,)``.
        relevance: the dense cosine similarity of the query and the best visible chunk,
            whatever the fusion (the grounding signal, :mod:`rag_platform.lib.grounding`);
            None when not asked for or nothing is visible.
    """

    hits: list[Hit]
    embed_ms: float
    search_ms: float
    dropped: int = 0
    query_vector: np.ndarray | None = field(default=None, repr=False)
    relevance: float | None = None


class Retriever:
    """Hybrid retriever over one index version of one tenant.

    Args:
        reader: an open index version (Edge or server reader, see
            :mod:`rag_platform.lib.index.backend`).
        embedder: dense query encoder (an ``Embedder``, or a ``BatchingQueryEmbedder`` in the
            query API).
        sparse_encoder: BM25 query encoder.
        settings: the tenant's retrieval settings (fusion, weights, prefetch depths).
        tenant: the tenant every hit must belong to.
    """

    def __init__(
        self,
        reader: SearchableIndex,
        embedder: DenseQueryEncoder,
        sparse_encoder: SparseEncoder,
        settings: RetrievalSettings,
        tenant: str,
    ) -> None:
        if not tenant:
            raise ValueError("tenant is required")
        self.reader = reader
        self.embedder = embedder
        self.sparse_encoder = sparse_encoder
        self.settings = settings
        self.tenant = tenant

    def retrieve(
        self, query: str, top_k: int, filters: SearchFilters, relevance: bool = False
    ) -> RetrievalResult:
        """Runs one query.

        Args:
            query: the user's question.
            top_k: number of hits wanted, 1..1000.
            filters: the principal's ACL groups and optional user filters.
            relevance: also measure :attr:`RetrievalResult.relevance` (one dense-only index
                query of limit 1 more, unless the fusion is ``dense`` already).

        Returns:
            :class:`RetrievalResult` with up to ``top_k`` visible hits.

        Raises:
            ValueError: empty query, ``top_k`` out of range, or filters without ACL groups.
        """
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        self._check_args(top_k, filters)
        t0 = time.perf_counter()
        with tracing.span("rag.embedding", {"rag.tenant": self.tenant}):
            dense = self.embedder.embed_query(query)
            sparse = self.sparse_encoder.encode_query(query)
        embed_ms = (time.perf_counter() - t0) * 1000.0
        result = self.retrieve_vectors(dense, sparse, top_k, filters, relevance)
        result.embed_ms = embed_ms
        return result

    def retrieve_vectors(
        self,
        dense: np.ndarray,
        sparse: SparseVector,
        top_k: int,
        filters: SearchFilters,
        relevance: bool = False,
    ) -> RetrievalResult:
        """Same as :meth:`retrieve` with the query already encoded (batch evaluation)."""
        self._check_args(top_k, filters)
        t0 = time.perf_counter()
        with tracing.span(
            "rag.index.search",
            {"rag.tenant": self.tenant, "rag.fusion": self.settings.fusion, "rag.limit": top_k},
        ) as span:
            raw = self.reader.search(dense, sparse, filters, self.tenant, self.settings, top_k)
            span.set_attribute("rag.hits", len(raw))
        hits = self._post_check(raw, filters)
        best: float | None = None
        if relevance and hits:
            best = self._dense_relevance(dense, sparse, filters, hits)
        search_ms = (time.perf_counter() - t0) * 1000.0
        return RetrievalResult(
            hits=hits[:top_k],
            embed_ms=0.0,
            search_ms=search_ms,
            dropped=len(raw) - len(hits),
            query_vector=dense,
            relevance=best,
        )

    def _dense_relevance(
        self, dense: np.ndarray, sparse: SparseVector, filters: SearchFilters, hits: list[Hit]
    ) -> float | None:
        """The cosine of ``dense`` and the best visible chunk (the index's cosine distance)."""
        if self.settings.fusion == "dense":
            return float(hits[0].score)
        dense_only = self.settings.model_copy(update={"fusion": "dense"})
        top = self._post_check(
            self.reader.search(dense, sparse, filters, self.tenant, dense_only, 1), filters
        )
        return float(top[0].score) if top else None

    def search(self, query: str, top_k: int, filters: SearchFilters) -> list[Hit]:
        """The hits of :meth:`retrieve` only."""
        return self.retrieve(query, top_k, filters).hits

    @staticmethod
    def _check_args(top_k: int, filters: SearchFilters) -> None:
        if not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        if not filters.acl_groups:
            raise ValueError("filters.acl_groups is empty: a principal needs an ACL group")

    def _post_check(self, hits: list[Hit], filters: SearchFilters) -> list[Hit]:
        allowed = set(filters.acl_groups)
        kept: list[Hit] = []
        for hit in hits:
            if hit.tenant != self.tenant:
                logger.warning(
                    "dropped hit %s: tenant %r does not match %r",
                    hit.chunk_id,
                    hit.tenant,
                    self.tenant,
                )
            elif not allowed.intersection(hit.acl_groups):
                logger.warning(
                    "dropped hit %s: ACL groups %s do not intersect the principal's",
                    hit.chunk_id,
                    hit.acl_groups,
                )
            else:
                kept.append(hit)
        return kept
