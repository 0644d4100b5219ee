"""``POST /v1/query``: an answer with ``[n]`` citations, as JSON or Server-Sent Events.

The answerer is the one :func:`rag_platform.lib.rag.build_answerer` picks (``LLMAnswerer`` when
``Settings.llm_base_url`` and ``llm_model`` are set, else ``ExtractiveAnswerer``). With
``"stream": true`` or ``Accept: text/event-stream`` the response is an SSE stream of events
``hits`` (the hits), ``delta`` (answer text pieces), ``citations`` and ``done`` (query id, index
version, ``grounded`` and the other grounding fields, usage, timings); an error after the
stream started is sent as an ``error`` event in the common error shape. The flow is
:mod:`serving.services.query`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from serving.api.deps import PrincipalDep, PublishedVersionDep, StateDep
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
    search = start_search(state, principal, version, "query", body)
    headers = {"X-Query-Id": search.record.query_id}
    if body.stream or "text/event-stream" in request.headers.get("accept", ""):
        log = service.QueryLogOnce(state, search)
        return StreamingResponse(
            service.stream(state, search, body.query, log),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(log),
        )
    done = service.answer(state, search, body.query)
    response.headers.update(headers)
    got = search.retrieved
    return QueryPublic(
        query_id=search.record.query_id,
        index_version=version.version,
        cached=done.cached,
        answer=done.answer.text,
        mode=done.answer.mode,
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
