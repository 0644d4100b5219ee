"""The answer flow of ``/v1/query``: retrieve (see :mod:`serving.services.search`), answer with
``[n]`` citations, cache, log, as one JSON result or as Server-Sent Events.

The tenant's answerer (:meth:`serving.models.Models.answerer_for`) routes over its model list
with fallback (:mod:`rag_platform.lib.routing`): an LLM failure never fails the request; every
route failing gives the extractive answer, flagged ``fallback: "extractive"``, which is not
cached (the next request tries the models again).

Usage accounting: a request's query-log row carries the LLM tokens that request spent: from the
endpoint's ``usage`` (streams ask for it with ``include_usage``, or count with the model's
tokenizer), and 0 for an answer served from the cache (``cache_hit`` is set on its row).

Streams: the answer is generated in a worker thread (:class:`AnswerPump`) that hands its pieces
to the SSE generator, which sends an SSE comment (``: heartbeat``) whenever
``Settings.stream_heartbeat_seconds`` pass without a piece (a slow first token, a route falling
over). A client that disconnects mid-stream sets the stream's stop event: the worker stops at the
endpoint's next event and closes the upstream request, and the row is still logged, with status
499 and the tokens spent until then. Each stream holds a slot of the concurrent-stream limits
(:class:`~serving.ratelimit.StreamSlots`) until it ends.

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
import queue
import re
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from opentelemetry.trace import Span, StatusCode

from rag_platform.lib import tracing
from rag_platform.lib.answer import Answerer, LLMError
from rag_platform.lib.grounding import GroundingDecision, decide, refusal, resolve_min_score
from rag_platform.lib.injection import InjectionReport, detect_injection
from rag_platform.lib.models import Answer, Citation, Hit
from serving.errors import error_body
from serving.ratelimit import StreamLease
from serving.schemas import CitationPublic, HitPublic
from serving.services.search import Search
from serving.state import ServingState
from serving.tracing import answer_attributes, generation_attributes

logger = logging.getLogger("serving.query")

#: Sentences the extractive answerer cites.
MAX_SENTENCES = 3
#: The status logged for a stream whose client went away before its end (nginx's convention).
CLIENT_CLOSED_REQUEST = 499
#: The SSE comment a stream sends after ``Settings.stream_heartbeat_seconds`` of silence.
HEARTBEAT = ": heartbeat\n\n"
#: How long closing a stream waits for its worker to stop (seconds): the worker stops at the
#: endpoint's next event, a few tokens' time for a live model.
PUMP_STOP_SECONDS = 10.0
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
            model=d.get("model") or "",
            fallback=d.get("fallback"),
            fallback_reason=d.get("fallback_reason"),
        )
    except (KeyError, TypeError):
        return None


def _cache_answer(state: ServingState, search: Search, answer: Answer, grounded: bool) -> None:
    """Caches the answer, unless it is the extractive stand-in for failed models."""
    if answer.fallback == "extractive":
        return
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


def tenant_answerer(state: ServingState, tenant: str) -> Answerer:
    """The tenant's answerer: its model routes (or the platform endpoint), else extractive.

    Raises:
        KeyError: a route's ``api_key_env`` is not set.
    """
    return state.models.answerer_for(tenant, state.tenants.generation(tenant))


def _observe_answer(state: ServingState, tenant: str, answer: Answer, answer_ms: float) -> None:
    """The answer's latency and, per model, its tokens."""
    state.metrics.answer_latency.labels(tenant, answer.mode).observe(answer_ms / 1000)
    model = answer.model or answer.mode
    for kind, tokens in (
        ("prompt", answer.prompt_tokens),
        ("completion", answer.completion_tokens),
    ):
        if tokens:
            state.metrics.llm_tokens.labels(model, kind, tenant).inc(tokens)


def answer(state: ServingState, search: Search, question: str) -> Answered:
    """Answers from the hits of ``search`` (or the cache), caches and logs the request.

    Raises:
        Exception: whatever the extractive answerer raises when it answers (logged as a 500);
            a failing model never raises here (the next route, then the extractive answer,
            stands in).
    """
    hits = search.retrieved.hits
    screened = screen(state, search, question)
    cached = _cached_answer(search, screened.grounding.grounded)
    t0 = time.perf_counter()
    try:
        if cached is not None:
            result = cached
        else:
            answerer = tenant_answerer(state, search.record.tenant)
            if not screened.grounding.grounded:
                result = refusal(answerer.mode)
            else:
                with tracing.span("rag.generation", generation_attributes(answerer)) as span:
                    result = answerer.answer(question, hits, MAX_SENTENCES)
                    tracing.set_attributes(answer_attributes(result), span)
    except Exception:
        search.record.status_code = 500
        search.record.latency_ms = search.elapsed_ms()
        state.log_query(search.record)
        raise
    answer_ms = 0.0
    if cached is None:
        answer_ms = (time.perf_counter() - t0) * 1000
        _observe_answer(state, search.record.tenant, result, answer_ms)
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


_END = object()


class AnswerPump:
    """Runs an answer stream in a worker thread and hands its pieces over a queue, so the SSE
    generator can wait for the next piece with a timeout (and send heartbeats meanwhile).

    Attributes:
        result: the answer once the stream returned (a stopped stream's partial answer too).
        error: what the stream raised, if it did.

    Args:
        pieces: the answerer's stream (built with the session's stop event).
    """

    def __init__(self, pieces: Generator[str, None, Answer]) -> None:
        self.result: Answer | None = None
        self.error: Exception | None = None
        self._pieces = pieces
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="answer-stream", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                try:
                    piece = next(self._pieces)
                except StopIteration as stop:
                    self.result = stop.value
                    return
                self._queue.put(piece)
        except Exception as exc:
            self.error = exc
        finally:
            self._pieces.close()
            self._queue.put(_END)

    def next(self, timeout: float) -> str | None | bool:
        """The next piece; ``None`` at the end; ``False`` when ``timeout`` seconds passed
        without one."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return False
        return None if item is _END else item  # type: ignore[return-value]

    def join(self, timeout: float) -> bool:
        """Waits for the worker to end; True when it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


class StreamSession:
    """One streamed request's end: logs its record exactly once, when its stream ends or is
    closed, or from the response's background task (which Starlette runs after cancelling the
    stream of a client that went away); stops its answer worker and gives back its stream slot.
    A stream not marked :meth:`finished` is logged with status 499 and the tokens its stopped
    worker reports.

    Args:
        state: the serving state.
        search: the request's retrieval and record.
        lease: the stream's slot of the concurrent-stream limits (released on close).
    """

    def __init__(
        self, state: ServingState, search: Search, lease: StreamLease | None = None
    ) -> None:
        self._state = state
        self._search = search
        self.lease = lease
        self.stop = threading.Event()
        self.pump: AnswerPump | None = None
        self._lock = threading.Lock()
        self._finished = False
        self._logged = False

    def finished(self) -> None:
        """Marks the stream as sent to its end (or to its ``error`` event)."""
        self._finished = True

    def __call__(self, wait: bool = True) -> None:
        """Stops the worker, releases the slot and submits the record, unless done before.

        Args:
            wait: for a stream cut short, wait (up to :data:`PUMP_STOP_SECONDS`) for the
                stopped worker's partial answer and tokens here; False does that wait in a
                thread of its own (the stream's ``finally`` may run wherever the generator is
                collected, the event loop included, and before the background task).
        """
        with self._lock:
            if self._logged:
                return
            self._logged = True
        self.stop.set()
        if not self._finished and not wait:
            threading.Thread(target=self._submit, name="stream-end", daemon=True).start()
            return
        self._submit()

    def _submit(self) -> None:
        record = self._search.record
        if not self._finished:
            record.status_code = CLIENT_CLOSED_REQUEST
            record.latency_ms = self._search.elapsed_ms()
            pump = self.pump
            if pump is not None and pump.join(PUMP_STOP_SECONDS) and pump.result is not None:
                partial = pump.result
                record.prompt_tokens = partial.prompt_tokens
                record.completion_tokens = partial.completion_tokens
                _observe_answer(self._state, record.tenant, partial, record.latency_ms)
        elif not record.latency_ms:
            record.latency_ms = self._search.elapsed_ms()
        if self.lease is not None:
            self.lease.release()
        self._state.log_query(record)


def stream(
    state: ServingState, search: Search, question: str, session: StreamSession
) -> Iterator[str]:
    """The Server-Sent Events of one answer: ``hits``, ``delta`` pieces, ``citations``,
    ``done`` (or ``error`` once the stream has started), with ``: heartbeat`` comments in
    silences. Fills and logs the record through ``session`` when the stream ends, fails, or is
    closed early (client gone: status 499)."""
    hits = search.retrieved.hits
    record = search.record
    screened = screen(state, search, question)
    grounded = screened.grounding.grounded
    cached = _cached_answer(search, grounded)
    heartbeat = state.settings.stream_heartbeat_seconds
    gen_span: Span | None = None
    try:
        yield _sse("hits", {"hits": [HitPublic.from_hit(h).model_dump() for h in hits]})
        t0 = time.perf_counter()
        try:
            if cached is not None or not grounded:
                result = cached or refusal(tenant_answerer(state, record.tenant).mode)
                for piece in _SENTENCE_END.split(result.text):
                    if piece:
                        yield _sse("delta", {"text": piece + " "})
            else:
                answerer = tenant_answerer(state, record.tenant)
                # not made current: each step of this generator may run in another thread
                gen_span = tracing.start_span("rag.generation", generation_attributes(answerer))
                pump = session.pump = AnswerPump(answerer.stream(question, hits, session.stop))
                while (piece := pump.next(heartbeat)) is not None:
                    if session.lease is not None:
                        session.lease.keep_alive()
                    if piece is False:
                        yield HEARTBEAT
                    else:
                        yield _sse("delta", {"text": piece})
                if pump.error is not None:
                    raise pump.error
                assert pump.result is not None
                result = pump.result
                tracing.set_attributes(answer_attributes(result), gen_span)
                gen_span.end()
        except Exception as exc:
            logger.exception("answer stream failed")
            if gen_span is not None:
                gen_span.record_exception(exc)
                gen_span.set_status(StatusCode.ERROR)
                gen_span.end()
            record.status_code = 502 if isinstance(exc, LLMError) else 500
            log_partial = session.pump.result if session.pump is not None else None
            if log_partial is not None:
                record.prompt_tokens = log_partial.prompt_tokens
                record.completion_tokens = log_partial.completion_tokens
            session.finished()
            yield _sse("error", error_body("answer_failed", "the answer could not be completed"))
            return
        answer_ms = 0.0
        if cached is None:
            answer_ms = (time.perf_counter() - t0) * 1000
            _observe_answer(state, record.tenant, result, answer_ms)
            _cache_answer(state, search, result, grounded)
        citations = _safe_citations(result, hits)
        yield _sse(
            "citations",
            {"citations": [CitationPublic.from_citation(c).model_dump() for c in citations]},
        )
        _finish_record(search, result, citations)
        session.finished()
        yield _sse(
            "done",
            {
                "query_id": record.query_id,
                "index_version": record.index_version,
                "mode": result.mode,
                "model": result.model or result.mode,
                "fallback": result.fallback,
                "fallback_reason": result.fallback_reason,
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
        if gen_span is not None and gen_span.is_recording():  # the client went away
            gen_span.set_attribute("rag.client_disconnected", True)
            gen_span.end()
        session(wait=False)
