"""``POST /v1/search``: hybrid search over the caller's tenant's published index (the flow is
:func:`serving.services.search.search`)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from serving.api.deps import PrincipalDep, PublishedVersionDep, StateDep
from serving.schemas import COMMON_ERRORS, HitPublic, SearchPublic, SearchRequest, TimingsPublic
from serving.services import search as service

router = APIRouter(prefix="/v1", tags=["search"])


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
    s = service.search(state, principal, version, body)
    response.headers["X-Query-Id"] = s.record.query_id
    got = s.retrieved
    return SearchPublic(
        query_id=s.record.query_id,
        index_version=version.version,
        cached=got.cached,
        hits=[HitPublic.from_hit(h) for h in got.hits],
        timings=TimingsPublic(
            embed_ms=got.embed_ms, search_ms=got.search_ms, total_ms=s.record.latency_ms
        ),
    )
