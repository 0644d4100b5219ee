"""The retrieve-and-log flow of ``/v1/search`` and ``/v1/query``.

Cache look-up keyed by endpoint, tenant, published version, normalised query, filters (with the
principal's groups), top_k and the tenant's retrieval settings; otherwise retrieval through the
pooled shard (opened only on a cache miss); then a per-hit re-check of tenant and ACL groups (on
cache hits too), so nothing outside the principal's tenant and groups is ever returned. Every
request leaves one query-log record, failures included.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from rag_platform.lib import tracing
from rag_platform.lib.experiments import Assignment, assign
from rag_platform.lib.models import Hit, Principal, SearchFilters
from rag_platform.lib.retrieval import Retriever
from rag_platform.lib.store import IndexVersion
from rag_platform.lib.tenants import RetrievalSettings
from serving.cache import cache_key
from serving.errors import ApiError, database_unavailable
from serving.observability import Metrics
from serving.querylog import QueryRecord
from serving.schemas import SearchRequest
from serving.state import ServingState

logger = logging.getLogger("serving.search")

#: The endpoints that share this flow (part of the cache key).
Endpoint = Literal["search", "query"]
#: What the query log records as the endpoint (a conversation turn answers as ``query``).
LoggedEndpoint = Literal["search", "query", "conversation"]


@dataclass
class Retrieved:
    """Hits of one request and how they were obtained.

    Attributes:
        hits: re-checked hits, best first.
        cached: whether they came from the query cache.
        embed_ms: query encoding, milliseconds (0 on a cache hit).
        search_ms: the index query, milliseconds (0 on a cache hit).
        cache_key: the request's cache key.
        cached_value: the whole cache entry on a hit (``/v1/query`` keeps its answer there).
        relevance: ``/v1/query`` only: the dense cosine of the question and the best visible
            chunk (:attr:`rag_platform.lib.retrieval.RetrievalResult.relevance`; the cached
            value's on a hit); None otherwise.
    """

    hits: list[Hit]
    cached: bool
    embed_ms: float
    search_ms: float
    cache_key: str
    cached_value: dict[str, Any] | None = None
    relevance: float | None = None


@dataclass
class Search:
    """A retrieval in progress: its query-log record, its hits and its start time.

    Attributes:
        record: the query-log record, filled with the hits and timings so far.
        retrieved: the hits.
        started: ``time.perf_counter()`` at the start of the request, seconds.
        version_details: the served index version's ``details`` (its calibrated grounding
            threshold, :func:`rag_platform.lib.grounding.resolve_min_score`).
    """

    record: QueryRecord
    retrieved: Retrieved
    started: float
    version_details: dict[str, Any] = field(default_factory=dict)

    def elapsed_ms(self) -> float:
        """Milliseconds since the request started."""
        return (time.perf_counter() - self.started) * 1000


def recheck_hits(metrics: Metrics, hits: list[Hit], principal: Principal) -> list[Hit]:
    """Drops any hit not of the principal's tenant or outside its ACL groups (and counts it)."""
    groups = set(principal.groups)
    kept = [h for h in hits if h.tenant == principal.tenant and groups.intersection(h.acl_groups)]
    if len(kept) != len(hits):
        metrics.isolation_violations.labels(principal.tenant).inc(len(hits) - len(kept))
        logger.error(
            "dropped hits failing the tenant/ACL re-check",
            extra={"tenant": principal.tenant, "dropped": len(hits) - len(kept)},
        )
    return kept


@contextmanager
def open_retriever(
    state: ServingState, version: IndexVersion, retrieval: RetrievalSettings | None = None
) -> Iterator[Retriever]:
    """A retriever over ``version`` (with ``retrieval`` settings when given, else the
    tenant's), its shard held open for the ``with`` block (call it from the thread pool:
    opening a shard reads the disk).

    Raises:
        ApiError: 503 ``index_unavailable`` when the version's shard cannot be opened.
    """
    cm = state.retrievers.open_retriever(version, retrieval)
    try:
        retriever = cm.__enter__()
    except Exception as exc:
        logger.error(
            "cannot open the published index",
            extra={
                "error": type(exc).__name__,
                "tenant": version.tenant,
                "version": version.version,
            },
        )
        raise ApiError(503, "index_unavailable", "the published index cannot be opened") from exc
    try:
        yield retriever
    except BaseException as exc:
        if not cm.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        cm.__exit__(None, None, None)


def retrieve_hits(
    state: ServingState,
    principal: Principal,
    version: IndexVersion,
    endpoint: Endpoint,
    query: str,
    top_k: int,
    filters: SearchFilters,
    retrieval: RetrievalSettings | None = None,
) -> Retrieved:
    """Cache look-up, else retrieval on the version's shard (opened only on a cache miss);
    hits re-checked either way. ``retrieval``: the settings to retrieve with (an experiment's
    variant); default the tenant's. They are part of the cache key.

    Raises:
        ApiError: 422 ``invalid_filters`` when the index refuses the filters,
            503 ``index_unavailable`` when the shard cannot be opened.
    """
    key = cache_key(
        endpoint=endpoint,
        tenant=principal.tenant,
        index_version=version.version,
        query=query,
        filters=filters,
        top_k=top_k,
        retrieval=(
            retrieval or state.tenants.retrieval_settings(principal.tenant)
        ).model_dump_json(),
    )
    with tracing.span("rag.cache.lookup", {"rag.cache.endpoint": endpoint}) as span:
        cached = state.cache.get(key)
        span.set_attribute("rag.cache.hit", cached is not None)
    if cached is not None:
        try:
            hits = [Hit(**h) for h in cached["hits"]]
        except (KeyError, TypeError):
            cached = None
        else:
            state.metrics.cache.labels(endpoint, "hit").inc()
            excluded = set(filters.exclude_doc_ids or ())
            kept = recheck_hits(state.metrics, hits, principal)
            kept = [h for h in kept if h.doc_id not in excluded]  # erased since it was cached
            relevance = cached.get("relevance")
            relevance = float(relevance) if isinstance(relevance, int | float) else None
            return Retrieved(kept, True, 0.0, 0.0, key, cached, relevance)
    state.metrics.cache.labels(endpoint, "miss").inc()
    if not principal.groups:
        return Retrieved([], False, 0.0, 0.0, key)
    with (
        tracing.span(
            "rag.retrieval",
            {
                "rag.tenant": principal.tenant,
                "rag.index_version": version.version,
                "rag.top_k": top_k,
            },
        ) as span,
        open_retriever(state, version, retrieval) as retriever,
    ):
        try:
            result = retriever.retrieve(query, top_k, filters, relevance=endpoint == "query")
        except ValueError as exc:
            raise ApiError(422, "invalid_filters", "the filters cannot be applied") from exc
        span.set_attribute("rag.hits", len(result.hits))
    state.metrics.embedding_latency.labels(principal.tenant).observe(result.embed_ms / 1000)
    state.metrics.retrieval_latency.labels(principal.tenant).observe(result.search_ms / 1000)
    hits = recheck_hits(state.metrics, list(result.hits), principal)
    relevance = result.relevance if hits else None
    return Retrieved(hits, False, result.embed_ms, result.search_ms, key, relevance=relevance)


def filters_for_log(filters: SearchFilters) -> dict[str, Any]:
    """The filters as JSON for the query log (dates as ISO strings, empty ones left out)."""
    out: dict[str, Any] = {}
    for k, v in asdict(filters).items():
        if v is None:
            continue
        out[k] = v.isoformat() if isinstance(v, datetime) else list(v)
    return out


def assignment_of(state: ServingState, principal: Principal) -> Assignment:
    """The principal's variant of its tenant's experiment (or the tenant's settings)."""
    return assign(
        state.tenants.tenant(principal.tenant),
        principal.key_id,
        state.tenants.retrieval_settings(principal.tenant),
    )


def start_search(
    state: ServingState,
    principal: Principal,
    version: IndexVersion,
    endpoint: Endpoint,
    body: SearchRequest,
    logged_endpoint: LoggedEndpoint | None = None,
) -> Search:
    """Starts the request's query-log record and retrieves its hits (see :func:`retrieve_hits`).

    The tenant's erased documents are excluded inside the index query. A principal of a tenant
    running an experiment retrieves with its variant's settings
    (:func:`rag_platform.lib.experiments.assign`); the record names the experiment and variant,
    and the endpoint (``logged_endpoint``, default ``endpoint``).
    On failure the record is logged (status and latency filled) and the error re-raised.

    Raises:
        ApiError: as :func:`retrieve_hits`; 503 ``database_unavailable`` when the erased
            documents cannot be read.
    """
    started = time.perf_counter()
    filters = body.filters.to_filters(principal)
    logged_filters = filters_for_log(filters)
    try:
        erased = state.erased_doc_ids(principal.tenant)
    except Exception as exc:
        logger.error("reading the erased documents failed", extra={"error": type(exc).__name__})
        raise database_unavailable() from exc
    if erased:  # erased documents never match, inside the index query (and in the cache key)
        filters = replace(filters, exclude_doc_ids=tuple(sorted(erased)))
    record = QueryRecord(
        query_id=str(uuid.uuid4()),
        tenant=principal.tenant,
        key_id=principal.key_id,
        question=body.query,
        top_k=body.top_k,
        filters=logged_filters,
        index_version=version.version,
        trace_id=tracing.current_trace_id(),
        endpoint=logged_endpoint or endpoint,
    )
    tracing.set_attributes({"rag.tenant": principal.tenant, "rag.query_id": record.query_id})
    try:
        assignment = assignment_of(state, principal)
        record.experiment, record.variant = assignment.experiment, assignment.variant
        got = retrieve_hits(
            state,
            principal,
            version,
            endpoint,
            body.query,
            body.top_k,
            filters,
            assignment.retrieval,
        )
    except Exception as exc:
        record.status_code = exc.status_code if isinstance(exc, ApiError) else 500
        record.latency_ms = (time.perf_counter() - started) * 1000
        state.log_query(record)
        raise
    record.hit_chunk_ids = [h.chunk_id for h in got.hits]
    record.embed_ms, record.search_ms, record.cache_hit = got.embed_ms, got.search_ms, got.cached
    return Search(record, got, started, dict(version.details or {}))


def search(
    state: ServingState, principal: Principal, version: IndexVersion, body: SearchRequest
) -> Search:
    """``/v1/search``: the hits (cached on a miss) and the logged record (latency filled).

    Raises:
        ApiError: as :func:`retrieve_hits`.
    """
    s = start_search(state, principal, version, "search", body)
    if not s.retrieved.cached:
        state.cache.set(s.retrieved.cache_key, {"hits": [asdict(h) for h in s.retrieved.hits]})
    s.record.latency_ms = s.elapsed_ms()
    state.log_query(s.record)  # queued for the query-log writer thread
    return s
