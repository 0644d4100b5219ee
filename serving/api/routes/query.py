"""``POST /v1/query``: an answer with ``[n]`` citations, as JSON or Server-Sent Events.

The answerer is ``LLMAnswerer`` when ``Settings.llm_base_url`` and ``llm_model`` are set, else
``ExtractiveAnswerer`` (best-matching sentences of the hits). With ``"stream": true`` or
``Accept: text/event-stream`` the response is an SSE stream of events ``hits`` (the hits),
``delta`` (answer text pieces), ``citations`` and ``done`` (query id, index version, usage,
timings); an error after the stream started is sent as an ``error`` event in the common error
shape.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request, Response
from fastapi.responses import StreamingResponse

from rag_platform.lib.models import Answer, Citation, Hit
from serving.api.deps import PrincipalDep, PublishedVersionDep, StateDep
from serving.api.routes.search import COMMON_ERRORS, retrieve_logged
from serving.errors import ApiError, error_body
from serving.schemas import (
    CitationPublic,
    HitPublic,
    QueryPublic,
    QueryRequest,
    TimingsPublic,
    UsagePublic,
)
from serving.state import QueryRecord, ServingState

logger = logging.getLogger("serving.query")

router = APIRouter(prefix="/v1", tags=["query"])

#: Sentences the extractive answerer cites.
MAX_SENTENCES = 3
_SENTENCE_END = re.compile(r"(?<=[.!?\]])\s+")

#: One Server-Sent Event of the answer stream (``data`` is a JSON document).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["hits", "delta", "citations", "done", "error"]},
        "data": {"type": "string", "description": "JSON: hits, text, citations or summary."},
    },
    "required": ["event", "data"],
}


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _answer_to_dict(answer: Answer) -> dict[str, Any]:
    return asdict(answer)


def _answer_from_dict(d: dict[str, Any]) -> Answer:
    return Answer(
        text=d["text"],
        citations=[Citation(**c) for c in d["citations"]],
        mode=d["mode"],
        prompt_tokens=int(d.get("prompt_tokens", 0)),
        completion_tokens=int(d.get("completion_tokens", 0)),
    )


def _answer(state: ServingState, question: str, hits: list[Hit]) -> Answer:
    answer: Answer = state.answerer.answer(question, hits, max_sentences=MAX_SENTENCES)
    return answer


def _safe_citations(answer: Answer, hits: list[Hit]) -> list[Citation]:
    """Keeps only citations of chunks among the (re-checked) hits."""
    allowed = {h.chunk_id for h in hits}
    return [c for c in answer.citations if c.chunk_id in allowed]


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
    background_tasks: BackgroundTasks,
) -> Any:
    """Retrieves the caller's visible chunks and answers from them with ``[n]`` citations."""
    record, got, started = retrieve_logged(
        state=state,
        principal=principal,
        version=version,
        endpoint="query",
        body=body,
    )
    query_id = record.query_id
    cached_answer: Answer | None = None
    if got.cached_value is not None and "answer" in got.cached_value:
        try:
            cached_answer = _answer_from_dict(got.cached_value["answer"])
        except (KeyError, TypeError):
            cached_answer = None
    wants_stream = body.stream or "text/event-stream" in request.headers.get("accept", "")
    headers = {"X-Query-Id": query_id}
    if wants_stream:
        stream = _stream(
            state,
            body.query,
            got.hits,
            cached_answer,
            record,
            version.version,
            got.cache_key,
            started,
        )
        background_tasks.add_task(state.log_query, record)
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=background_tasks,
        )

    t0 = time.perf_counter()
    try:
        answer = cached_answer or _answer(state, body.query, got.hits)
    except Exception as exc:
        record.status_code = 502 if state.uses_llm else 500
        record.latency_ms = (time.perf_counter() - started) * 1000
        state.log_query(record)
        if state.uses_llm:
            raise ApiError(502, "answer_failed", "the answer service failed") from exc
        raise
    answer_ms = (time.perf_counter() - t0) * 1000 if cached_answer is None else 0.0
    if cached_answer is None:
        state.metrics.answer_latency.labels(principal.tenant, answer.mode).observe(answer_ms / 1000)
    citations = _safe_citations(answer, got.hits)
    if not got.cached or cached_answer is None:
        state.cache.set(
            got.cache_key,
            {"hits": [asdict(h) for h in got.hits], "answer": _answer_to_dict(answer)},
        )
    total_ms = (time.perf_counter() - started) * 1000
    record.cited_chunk_ids = list(dict.fromkeys(c.chunk_id for c in citations))
    record.prompt_tokens, record.completion_tokens = answer.prompt_tokens, answer.completion_tokens
    record.latency_ms = total_ms
    state.log_query(record)  # queued for the query-log writer thread
    response.headers["X-Query-Id"] = query_id
    return QueryPublic(
        query_id=query_id,
        index_version=version.version,
        cached=got.cached and cached_answer is not None,
        answer=answer.text,
        mode=answer.mode,
        citations=[CitationPublic.from_citation(c) for c in citations],
        hits=[HitPublic.from_hit(h) for h in got.hits],
        usage=UsagePublic(
            prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens
        ),
        timings=TimingsPublic(
            embed_ms=got.embed_ms, search_ms=got.search_ms, answer_ms=answer_ms, total_ms=total_ms
        ),
    )


def _stream(
    state: ServingState,
    question: str,
    hits: list[Hit],
    cached_answer: Answer | None,
    record: QueryRecord,
    index_version: str,
    key: str,
    started: float,
) -> Iterator[str]:
    """The SSE events; fills ``record`` (logged by the response's background task)."""
    yield _sse("hits", {"hits": [HitPublic.from_hit(h).model_dump() for h in hits]})
    t0 = time.perf_counter()
    answer: Answer | None = cached_answer
    try:
        if answer is not None:
            yield from (_sse("delta", {"text": p}) for p in _SENTENCE_END.split(answer.text) if p)
        elif state.uses_llm and hits:
            answerer = state.answerer
            parts: list[str] = []
            for delta in answerer.stream(question, hits):
                parts.append(delta)
                yield _sse("delta", {"text": delta})
            context = hits[: answerer.max_context_chunks]
            text, cites = answerer.cite("".join(parts), context)
            answer = Answer(text=text, citations=cites, mode="llm")
        else:
            answer = _answer(state, question, hits)
            for piece in _SENTENCE_END.split(answer.text):
                if piece:
                    yield _sse("delta", {"text": piece + " "})
    except Exception:
        logger.exception("answer stream failed")
        record.status_code = 502 if state.uses_llm else 500
        record.latency_ms = (time.perf_counter() - started) * 1000
        yield _sse("error", error_body("answer_failed", "the answer could not be completed"))
        return
    answer_ms = (time.perf_counter() - t0) * 1000 if cached_answer is None else 0.0
    citations = _safe_citations(answer, hits)
    if cached_answer is None:
        state.cache.set(key, {"hits": [asdict(h) for h in hits], "answer": _answer_to_dict(answer)})
    yield _sse(
        "citations",
        {"citations": [CitationPublic.from_citation(c).model_dump() for c in citations]},
    )
    total_ms = (time.perf_counter() - started) * 1000
    record.cited_chunk_ids = list(dict.fromkeys(c.chunk_id for c in citations))
    record.prompt_tokens, record.completion_tokens = answer.prompt_tokens, answer.completion_tokens
    record.latency_ms = total_ms
    yield _sse(
        "done",
        {
            "query_id": record.query_id,
            "index_version": index_version,
            "mode": answer.mode,
            "cached": cached_answer is not None,
            "answer": answer.text,
            "usage": {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
            },
            "timings": {
                "embed_ms": record.embed_ms,
                "search_ms": record.search_ms,
                "answer_ms": answer_ms,
                "total_ms": total_ms,
            },
        },
    )
