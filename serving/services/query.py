"""The answer flow of ``/v1/query``: retrieve (see :mod:`serving.services.search`), answer with
``[n]`` citations, cache, log, as one JSON result or as Server-Sent Events.

Usage accounting: a request's query-log row carries the LLM tokens that request spent: from the
endpoint's ``usage`` (streams ask for it with ``include_usage``, or count with the model's
tokenizer), and 0 for an answer served from the cache (``cache_hit`` is set on its row). A
client that disconnects mid-stream still gets its row, with status 499.

Grounding: before answering, :func:`screen` decides whether the question is refused (the
retrieval's relevance below the tenant's calibrated ``grounding.min_score``, nothing visible, or
a question flagged as a prompt injection by a tenant that refuses those); a refused question is
answered by :data:`~rag_platform.lib.grounding.REFUSAL_TEXT` without calling the answerer, and
the response says ``grounded: false``. A flagged question is logged (``serving.query`` warning
with the query id, score and patterns) and its score returned with the answer.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from opentelemetry.trace import Span, StatusCode

from rag_platform.lib import tracing
from rag_platform.lib.grounding import GroundingDecision, decide, refusal, resolve_min_score
from rag_platform.lib.injection import InjectionReport, detect_injection
from rag_platform.lib.models import Answer, Citation, Hit
from serving.errors import ApiError, error_body
from serving.schemas import CitationPublic, HitPublic
from serving.services.search import Search
from serving.state import ServingState
from serving.tracing import answer_attributes, generation_attributes

logger = logging.getLogger("serving.query")

#: Sentences the extractive answerer cites.
MAX_SENTENCES = 3
#: The status logged for a stream whose client went away before its end (nginx's convention).
CLIENT_CLOSED_REQUEST = 499
_SENTENCE_END = re.compile(r"(?<=[.!?\]])\s+")


@dataclass(frozen=True)
class Screened:
    """What is decided about a question before it is answered.

    Attributes:
        grounding: the refusal decision (:func:`rag_platform.lib.grounding.decide`).
        injection: the question's prompt-injection report.
        injection_flagged: whether its score reaches the tenant's ``injection.threshold``.
    """

    grounding: GroundingDecision
    injection: InjectionReport
    injection_flagged: bool


def screen(state: ServingState, search: Search, question: str) -> Screened:
    """The refusal decision and the injection screening of one ``/v1/query`` question."""
    tenant = search.record.tenant
    policy = state.tenants.injection_policy(tenant)
    report = detect_injection(question)
    flagged = report.flagged(policy.threshold)
    if flagged:
        logger.warning(
            "question flagged as a prompt injection",
            extra={
                "tenant": tenant,
                "query_id": search.record.query_id,
                "injection_score": report.score,
                "patterns": report.matches,
            },
        )
    min_score = resolve_min_score(state.tenants.grounding_settings(tenant), search.version_details)
    grounding = decide(
        bool(search.retrieved.hits),
        search.retrieved.relevance,
        min_score,
        injection_refused=flagged and policy.refuse_questions,
    )
    return Screened(grounding, report, flagged)


@dataclass
class Answered:
    """The outcome of one non-streamed ``/v1/query``.

    Attributes:
        search: the retrieval and its (logged) record.
        answer: the answer; its token counts are the ones this request spent (0 when cached).
        citations: the answer's citations of re-checked hits only.
        cached: whether the answer came from the query cache.
        answer_ms: time spent answering, milliseconds (0 when cached).
        total_ms: the whole request, milliseconds.
        screened: the refusal decision and the question's injection screening.
    """

    search: Search
    answer: Answer
    citations: list[Citation]
    cached: bool
    answer_ms: float
    total_ms: float
    screened: Screened


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _cached_answer(search: Search, grounded: bool) -> Answer | None:
    """The cached answer of a cache hit, with 0 tokens: serving it costs no LLM call. An entry
    cached under the other refusal decision (the threshold changed since) is not used."""
    value = search.retrieved.cached_value
    if value is None or "answer" not in value or value.get("grounded", True) != grounded:
        return None
    try:
        d = value["answer"]
        return Answer(
            text=d["text"],
            citations=[Citation(**c) for c in d["citations"]],
            mode=d["mode"],
        )
    except (KeyError, TypeError):
        return None


def _cache_answer(state: ServingState, search: Search, answer: Answer, grounded: bool) -> None:
    state.cache.set(
        search.retrieved.cache_key,
        {
            "hits": [asdict(h) for h in search.retrieved.hits],
            "answer": asdict(answer),
            "relevance": search.retrieved.relevance,
            "grounded": grounded,
        },
    )


def _safe_citations(answer: Answer, hits: list[Hit]) -> list[Citation]:
    """Keeps only citations of chunks among the (re-checked) hits."""
    allowed = {h.chunk_id for h in hits}
    return [c for c in answer.citations if c.chunk_id in allowed]


def _finish_record(search: Search, answer: Answer, citations: list[Citation]) -> None:
    record = search.record
    record.cited_chunk_ids = list(dict.fromkeys(c.chunk_id for c in citations))
    record.prompt_tokens, record.completion_tokens = answer.prompt_tokens, answer.completion_tokens
    record.latency_ms = search.elapsed_ms()


def _failure_status(state: ServingState) -> int:
    return 502 if state.models.uses_llm else 500


def _count_failure(state: ServingState, tenant: str) -> None:
    if state.models.uses_llm:
        state.metrics.llm_failures.labels(tenant).inc()


def _count_tokens(state: ServingState, tenant: str, answer: Answer) -> None:
    state.metrics.llm_tokens.labels(tenant, "prompt").inc(answer.prompt_tokens)
    state.metrics.llm_tokens.labels(tenant, "completion").inc(answer.completion_tokens)


def answer(state: ServingState, search: Search, question: str) -> Answered:
    """Answers from the hits of ``search`` (or the cache), caches and logs the request.

    Raises:
        ApiError: 502 ``answer_failed`` when the LLM endpoint fails (the failure is logged).
        Exception: whatever the extractive answerer raises (logged as a 500).
    """
    hits = search.retrieved.hits
    screened = screen(state, search, question)
    cached = _cached_answer(search, screened.grounding.grounded)
    t0 = time.perf_counter()
    try:
        if cached is not None:
            result = cached
        elif not screened.grounding.grounded:
            result = refusal(state.models.answerer.mode)
        else:
            answerer = state.models.answerer
            with tracing.span("rag.generation", generation_attributes(answerer)) as span:
                result = answerer.answer(question, hits, MAX_SENTENCES)
                tracing.set_attributes(answer_attributes(result), span)
    except Exception as exc:
        _count_failure(state, search.record.tenant)
        search.record.status_code = _failure_status(state)
        search.record.latency_ms = search.elapsed_ms()
        state.log_query(search.record)
        if state.models.uses_llm:
            raise ApiError(502, "answer_failed", "the answer service failed") from exc
        raise
    answer_ms = 0.0
    if cached is None:
        answer_ms = (time.perf_counter() - t0) * 1000
        state.metrics.answer_latency.labels(search.record.tenant, result.mode).observe(
            answer_ms / 1000
        )
        _count_tokens(state, search.record.tenant, result)
        _cache_answer(state, search, result, screened.grounding.grounded)
    citations = _safe_citations(result, hits)
    _finish_record(search, result, citations)
    state.log_query(search.record)  # queued for the query-log writer thread
    return Answered(
        search,
        result,
        citations,
        cached is not None,
        answer_ms,
        search.record.latency_ms,
        screened,
    )


def grounding_fields(screened: Screened) -> dict[str, Any]:
    """The response's (and the ``done`` event's) grounding fields: ``grounded`` (bool),
    ``refusal_reason`` (None when grounded), ``relevance`` (dense cosine of the best visible
    chunk, or None) and ``injection`` (the question's score and matched patterns)."""
    g = screened.grounding
    return {
        "grounded": g.grounded,
        "refusal_reason": g.reason,
        "relevance": g.relevance,
        "injection": {
            "score": screened.injection.score,
            "flagged": screened.injection_flagged,
            "patterns": list(screened.injection.matches),
        },
    }


class QueryLogOnce:
    """Logs a streamed request's record exactly once: when its stream ends or is closed, or from
    the response's background task (which Starlette runs after cancelling the stream of a client
    that went away). A stream not marked :meth:`finished` is logged with status 499."""

    def __init__(self, state: ServingState, search: Search) -> None:
        self._state = state
        self._search = search
        self._lock = threading.Lock()
        self._finished = False
        self._logged = False

    def finished(self) -> None:
        """Marks the stream as sent to its end (or to its ``error`` event)."""
        self._finished = True

    def __call__(self) -> None:
        """Submits the record unless it was submitted before."""
        with self._lock:
            if self._logged:
                return
            self._logged = True
        record = self._search.record
        if not self._finished:
            record.status_code = CLIENT_CLOSED_REQUEST
            record.latency_ms = self._search.elapsed_ms()
        elif not record.latency_ms:
            record.latency_ms = self._search.elapsed_ms()
        self._state.log_query(record)


def stream(state: ServingState, search: Search, question: str, log: QueryLogOnce) -> Iterator[str]:
    """The Server-Sent Events of one answer: ``hits``, ``delta`` pieces, ``citations``,
    ``done`` (or ``error`` once the stream has started). Fills and logs the record through
    ``log`` when the stream ends, fails, or is closed early (client gone: status 499)."""
    hits = search.retrieved.hits
    record = search.record
    screened = screen(state, search, question)
    grounded = screened.grounding.grounded
    cached = _cached_answer(search, grounded)
    pieces: Generator[str, None, Answer] | None = None
    gen_span: Span | None = None
    try:
        yield _sse("hits", {"hits": [HitPublic.from_hit(h).model_dump() for h in hits]})
        t0 = time.perf_counter()
        try:
            if cached is not None or not grounded:
                result = cached or refusal(state.models.answerer.mode)
                for piece in _SENTENCE_END.split(result.text):
                    if piece:
                        yield _sse("delta", {"text": piece + " "})
            else:
                # not made current: each step of this generator may run in another thread
                gen_span = tracing.start_span(
                    "rag.generation", generation_attributes(state.models.answerer)
                )
                pieces = state.models.answerer.stream(question, hits)
                while True:
                    try:
                        delta = next(pieces)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    yield _sse("delta", {"text": delta})
                tracing.set_attributes(answer_attributes(result), gen_span)
                gen_span.end()
        except Exception as exc:
            logger.exception("answer stream failed")
            if gen_span is not None:
                gen_span.record_exception(exc)
                gen_span.set_status(StatusCode.ERROR)
                gen_span.end()
            _count_failure(state, record.tenant)
            record.status_code = _failure_status(state)
            log.finished()
            yield _sse("error", error_body("answer_failed", "the answer could not be completed"))
            return
        answer_ms = 0.0
        if cached is None:
            answer_ms = (time.perf_counter() - t0) * 1000
            state.metrics.answer_latency.labels(record.tenant, result.mode).observe(
                answer_ms / 1000
            )
            _count_tokens(state, record.tenant, result)
            _cache_answer(state, search, result, grounded)
        citations = _safe_citations(result, hits)
        yield _sse(
            "citations",
            {"citations": [CitationPublic.from_citation(c).model_dump() for c in citations]},
        )
        _finish_record(search, result, citations)
        log.finished()
        yield _sse(
            "done",
            {
                "query_id": record.query_id,
                "index_version": record.index_version,
                "mode": result.mode,
                "cached": cached is not None,
                "answer": result.text,
                **grounding_fields(screened),
                "usage": {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                },
                "timings": {
                    "embed_ms": record.embed_ms,
                    "search_ms": record.search_ms,
                    "answer_ms": answer_ms,
                    "total_ms": record.latency_ms,
                },
            },
        )
    finally:
        if pieces is not None:
            pieces.close()  # an LLM stream cut short releases its connection
        if gen_span is not None and gen_span.is_recording():  # the client went away
            gen_span.set_attribute("rag.client_disconnected", True)
            gen_span.end()
        log()
