"""``POST /v1/query``: an answer with ``[n]`` citations, as JSON or Server-Sent Events.

The answerer is the tenant's (:func:`rag_platform.lib.rag.build_answerer` with its
``generation`` block: model routes with fallback, or the platform endpoint, else extractive).
With ``"stream": true`` or ``Accept: text/event-stream`` the response is an SSE stream of events
``hits`` (the hits), ``delta`` (answer text pieces), ``citations`` and ``done`` (query id, index
version, model, fallback, ``grounded`` and the other grounding fields, usage, timings), with
``: heartbeat`` comments in long silences; an error after the stream started is sent as an
``error`` event in the common error shape. The flow is :mod:`serving.services.query`.

Refusals before any work: 429 ``budget_exhausted`` when the tenant's monthly token budget is
used up (details ``resets_at``, ``Retry-After``), 429 ``too_many_streams`` when the key or the
tenant already holds its most concurrent streams.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from serving.api.deps import PrincipalDep, PublishedVersionDep, StateDep
from serving.errors import ApiError
from serving.ratelimit import StreamLease
from serving.schemas import (
    COMMON_ERRORS,
    CitationPublic,
    HitPublic,
    QueryPublic,
    QueryRequest,
    TimingsPublic,
    UsagePublic,
)
from serving.services import query as service
from serving.services.search import start_search

router = APIRouter(prefix="/v1", tags=["query"])

#: One Server-Sent Event of the answer stream (``data`` is a JSON document).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["hits", "delta", "citations", "done", "error"]},
        "data": {"type": "string", "description": "JSON: hits, text, citations or summary."},
    },
    "required": ["event", "data"],
}


@router.post(
    "/query",
    response_model=QueryPublic,
    responses={
        **COMMON_ERRORS,
        200: {
            "description": "The answer (JSON), or a Server-Sent Events stream when requested.",
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
        },
    },
    summary="Answer a question with citations",
)
def answer_query(
    body: QueryRequest,
    request: Request,
    principal: PrincipalDep,
    version: PublishedVersionDep,
    state: StateDep,
    response: Response,
) -> QueryPublic | StreamingResponse:
    """Retrieves the caller's visible chunks and answers from them with ``[n]`` citations."""
    tenant = principal.tenant
    state.budgets.check(tenant, state.tenants.generation(tenant).monthly_token_budget)
    if body.stream or "text/event-stream" in request.headers.get("accept", ""):
        lease = state.streams.acquire(tenant, principal.key_id)
        if not isinstance(lease, StreamLease):
            state.metrics.rate_limited.labels(lease.scope, tenant).inc()
            raise ApiError(
                429,
                "too_many_streams",
                f"too many concurrent answer streams ({lease.scope.replace('_', ' ')})",
                headers={"Retry-After": str(lease.retry_after)},
            )
        try:
            search = start_search(state, principal, version, "query", body)
        except BaseException:
            lease.release()
            raise
        session = service.StreamSession(state, search, lease)
        return StreamingResponse(
            service.stream(state, search, body.query, session),
            media_type="text/event-stream",
            headers={
                "X-Query-Id": search.record.query_id,
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
            background=BackgroundTask(session),
        )
    search = start_search(state, principal, version, "query", body)
    headers = {"X-Query-Id": search.record.query_id}
    done = service.answer(state, search, body.query)
    response.headers.update(headers)
    got = search.retrieved
    return QueryPublic(
        query_id=search.record.query_id,
        index_version=version.version,
        cached=done.cached,
        answer=done.answer.text,
        mode=done.answer.mode,
        model=done.answer.model or done.answer.mode,
        fallback=done.answer.fallback,  # type: ignore[arg-type]
        fallback_reason=done.answer.fallback_reason,
        citations=[CitationPublic.from_citation(c) for c in done.citations],
        hits=[HitPublic.from_hit(h) for h in got.hits],
        **service.grounding_fields(done.screened),
        usage=UsagePublic(
            prompt_tokens=done.answer.prompt_tokens,
            completion_tokens=done.answer.completion_tokens,
        ),
        timings=TimingsPublic(
            embed_ms=got.embed_ms,
            search_ms=got.search_ms,
            answer_ms=done.answer_ms,
            total_ms=done.total_ms,
        ),
    )
