"""``POST /v1/search``: hybrid search over the caller's tenant's published index.

The flow shared with ``/v1/query`` lives here (:func:`retrieve_hits`): cache look-up keyed by
tenant, published version, normalised query, filters (with the principal's groups) and top_k;
otherwise retrieval through the pooled shard; then a per-hit re-check of tenant and ACL groups
(on cache hits too), so nothing outside the principal's tenant and groups is ever returned.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import APIRouter, Response

from rag_platform.lib.models import Hit, Principal, SearchFilters
from rag_platform.lib.store import IndexVersion
from serving.api.deps import PrincipalDep, PublishedVersionDep, StateDep, open_retriever
from serving.cache import cache_key
from serving.errors import ApiError
from serving.schemas import (
    ErrorPublic,
    HitPublic,
    SearchPublic,
    SearchRequest,
    TimingsPublic,
)
from serving.state import QueryRecord, ServingState

logger = logging.getLogger("serving.search")

router = APIRouter(prefix="/v1", tags=["search"])

#: Error responses documented on every authenticated endpoint.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorPublic, "description": "Body is not valid JSON (or not UTF-8)."},
    401: {"model": ErrorPublic, "description": "Missing, unknown, revoked or expired API key."},
    413: {"model": ErrorPublic, "description": "Request body too large."},
    422: {"model": ErrorPublic, "description": "Invalid request."},
    429: {"model": ErrorPublic, "description": "Rate limit exceeded (see Retry-After)."},
    503: {"model": ErrorPublic, "description": "No published index, or a store is down."},
}


@dataclass
class Retrieved:
    """Hits of one request and how they were obtained."""

    hits: list[Hit]
    cached: bool
    embed_ms: float
    search_ms: float
    cache_key: str
    cached_value: dict[str, Any] | None = None


def new_query_id() -> str:
    return str(uuid.uuid4())


def recheck_hits(state: ServingState, hits: list[Hit], principal: Principal) -> list[Hit]:
    """Drops any hit not of the principal's tenant or outside its ACL groups (and counts it)."""
    groups = set(principal.groups)
    kept = [h for h in hits if h.tenant == principal.tenant and groups.intersection(h.acl_groups)]
    if len(kept) != len(hits):
        state.metrics.isolation_violations.labels(principal.tenant).inc(len(hits) - len(kept))
        logger.error(
            "dropped hits failing the tenant/ACL re-check",
            extra={"tenant": principal.tenant, "dropped": len(hits) - len(kept)},
        )
    return kept


def retrieve_hits(
    *,
    state: ServingState,
    principal: Principal,
    version: IndexVersion,
    endpoint: str,
    query: str,
    top_k: int,
    filters: SearchFilters,
) -> Retrieved:
    """Cache look-up, else retrieval on the version's shard (opened only on a cache miss);
    hits re-checked either way.

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
        retrieval=state.retrieval_settings(principal.tenant).model_dump_json(),
    )
    cached = state.cache.get(key)
    if cached is not None:
        try:
            hits = [Hit(**h) for h in cached["hits"]]
        except (KeyError, TypeError):
            cached = None
        else:
            state.metrics.cache.labels(endpoint, "hit").inc()
            return Retrieved(recheck_hits(state, hits, principal), True, 0.0, 0.0, key, cached)
    state.metrics.cache.labels(endpoint, "miss").inc()
    if not principal.groups:
        return Retrieved([], False, 0.0, 0.0, key)
    with open_retriever(state, version) as retriever:
        try:
            result = retriever.retrieve(query, top_k, filters)
        except ValueError as exc:
            raise ApiError(422, "invalid_filters", "the filters cannot be applied") from exc
    state.metrics.embedding_latency.labels(principal.tenant).observe(result.embed_ms / 1000)
    state.metrics.retrieval_latency.labels(principal.tenant).observe(result.search_ms / 1000)
    hits = recheck_hits(state, list(result.hits), principal)
    return Retrieved(hits, False, result.embed_ms, result.search_ms, key)


def retrieve_logged(
    *,
    state: ServingState,
    principal: Principal,
    version: IndexVersion,
    endpoint: str,
    body: Any,
) -> tuple[QueryRecord, Retrieved, float]:
    """Starts the request's query-log record and retrieves its hits (see :func:`retrieve_hits`).

    On failure the record is logged (status and latency filled) and the error re-raised.

    Returns:
        (the record, filled with the hits and timings; the hits; the start, perf_counter s).
    """
    started = time.perf_counter()
    filters = body.filters.to_filters(principal)
    record = QueryRecord(
        query_id=new_query_id(),
        tenant=principal.tenant,
        key_id=principal.key_id,
        question=body.query,
        top_k=body.top_k,
        filters=filters_for_log(filters),
        index_version=version.version,
    )
    try:
        got = retrieve_hits(
            state=state,
            principal=principal,
            version=version,
            endpoint=endpoint,
            query=body.query,
            top_k=body.top_k,
            filters=filters,
        )
    except Exception as exc:
        record.status_code = exc.status_code if isinstance(exc, ApiError) else 500
        record.latency_ms = (time.perf_counter() - started) * 1000
        state.log_query(record)
        raise
    record.hit_chunk_ids = [h.chunk_id for h in got.hits]
    record.embed_ms, record.search_ms, record.cache_hit = got.embed_ms, got.search_ms, got.cached
    return record, got, started


def filters_for_log(filters: SearchFilters) -> dict[str, Any]:
    """The filters as JSON for the query log (dates as ISO strings, empty ones left out)."""
    out: dict[str, Any] = {}
    for k, v in asdict(filters).items():
        if v is None:
            continue
        out[k] = v.isoformat() if hasattr(v, "isoformat") else list(v)
    return out


@router.post(
    "/search",
    response_model=SearchPublic,
    responses=COMMON_ERRORS,
    summary="Hybrid search over the published index",
)
def search_chunks(
    body: SearchRequest,
    principal: PrincipalDep,
    version: PublishedVersionDep,
    state: StateDep,
    response: Response,
) -> SearchPublic:
    """Ranked chunks of the caller's tenant visible to the caller's ACL groups.

    The query id (also in ``X-Query-Id``) identifies the query-log row that feedback refers to.
    """
    record, got, started = retrieve_logged(
        state=state,
        principal=principal,
        version=version,
        endpoint="search",
        body=body,
    )
    if not got.cached:
        state.cache.set(got.cache_key, {"hits": [asdict(h) for h in got.hits]})
    total_ms = (time.perf_counter() - started) * 1000
    record.latency_ms = total_ms
    state.log_query(record)  # queued for the query-log writer thread
    response.headers["X-Query-Id"] = record.query_id
    return SearchPublic(
        query_id=record.query_id,
        index_version=version.version,
        cached=got.cached,
        hits=[HitPublic.from_hit(h) for h in got.hits],
        timings=TimingsPublic(embed_ms=got.embed_ms, search_ms=got.search_ms, total_ms=total_ms),
    )
