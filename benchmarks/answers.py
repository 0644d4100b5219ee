"""Generated answers over the sec-filings dev questions with the local model: quality, refusal,
time to first token, and the fallback share after the primary endpoint is killed.

Corpus: the filings of three companies (``KEPT``: Apple, Amazon, NVIDIA; 12 PDFs) parsed and
chunked by the platform's parser and chunker (200 tokens, 32 overlap, the sec-filings tenant's
chunking; no PII masking) into a Qdrant Edge shard. The filings of Intel and Microsoft are left
out, SQuAD 2.0-style: a dev question whose source documents (its ``Source Docs`` patterns) are
all left out is *unanswerable*; one whose source documents are all indexed is *answerable*; a
question over both kinds is skipped.

Each request runs the ``/v1/query`` steps in process: ``Retriever.retrieve(relevance=True)``
(the tenant's default retrieval settings), the refusal decision of ``lib/grounding.py`` with
``min_score`` calibrated as ``min_score: auto`` does (the 0.05 quantile of the golden — here the
answerable dev — questions' relevance), then ``LLMAnswerer.stream`` against llama.cpp serving
Qwen2.5-0.5B (``rag_platform_tests/utils/llm.py``). Time to first token is measured from the
start of the request (retrieval included) to the first streamed delta, over the answers the
model generated (refusals send their text at once and are left out of it).
``answer_similarity`` and ``faithfulness`` are ragas' (``lib/evaluation/answers.py``), judged by
the same local model, over the answerable questions; ``refusal_precision`` / ``refusal_recall``
count an unanswerable question refused as a true positive.

``fallback_share_after_kill`` (:func:`fallback_share_after_kill`): a second llama.cpp server is
started as the primary, the first one is the fallback; the requests go through the platform's
model router (``lib/routing.py``: the routes primary → fallback with retries and circuit
breakers, the extractive answer last) and the primary is killed after half of them; the share is
the requests after the kill that the fallback route answered.

Usage::

    flock /tmp/heavy.lock .venv/bin/python benchmarks/answers.py --limit 8

Prints one JSON line on stdout (diagnostics on stderr).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.retrieval import cache_dir, cached_embeddings  # noqa: E402
from rag_platform.settings import PROJECT_ROOT, configure_runtime_env, get_settings  # noqa: E402

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "sec10q"
TENANT = "bench"
#: Companies whose filings are indexed; the others' questions are unanswerable.
KEPT = ("AAPL", "AMZN", "NVDA")
#: The calibration quantile of ``grounding.auto_quantile``'s default.
QUANTILE = 0.05
#: Hits put in the prompt, and the answer length (a 0.5B model on 2 shared cores).
CONTEXT_K = 3
MAX_TOKENS = 160


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` percentile (0-100, linear interpolation); None for no values."""
    return round(float(np.percentile(values, q)), 1) if values else None


def sec_chunks(docs_dir: Path, companies: tuple[str, ...]) -> list[dict[str, Any]]:
    """Parses and chunks the filings of ``companies`` with the platform's parser and chunker.

    Returns:
        One dict per chunk: ``key`` (file:ordinal), ``file``, ``text`` (the body),
        ``embedding_text``, ``heading_path``, ``page``.
    """
    from rag_platform.lib.ingestion.chunk import Chunker, embedding_text, load_tokenizer
    from rag_platform.lib.ingestion.formats import parse_document
    from rag_platform.lib.models import SourceDocument, make_doc_id

    chunker = Chunker(load_tokenizer(), max_tokens=200, overlap_tokens=32)
    out: list[dict[str, Any]] = []
    for path in sorted(docs_dir.glob("*.pdf")):
        if not any(c in path.name for c in companies):
            continue
        doc = SourceDocument(
            source_id="filings",
            native_id=path.name,
            uri=f"file://{path}",
            title=path.stem,
            mime_type="application/pdf",
            content=path.read_bytes(),
        )
        parsed = parse_document(doc)
        for c in chunker.run(make_doc_id(TENANT, "filings", path.name), parsed, path.stem):
            out.append(
                {
                    "key": f"{path.name}:{c.ordinal}",
                    "file": path.name,
                    "doc_id": c.doc_id,
                    "chunk_id": c.chunk_id,
                    "text": c.text,
                    "embedding_text": embedding_text(path.stem, c.heading_path, c.text),
                    "heading_path": c.heading_path,
                    "page": c.page,
                }
            )
    return out


def build_shard(path: Path, chunks: list[dict[str, Any]], matrix: np.ndarray) -> None:
    """One Edge shard of the chunks (ACL group ``all``)."""
    from rag_platform.lib.embedding import SparseEncoder
    from rag_platform.lib.index.edge import EdgeIndexWriter, IndexPoint, make_payload

    sparse = SparseEncoder().encode_documents([c["embedding_text"] for c in chunks])
    points = [
        IndexPoint(
            id=c["chunk_id"],
            dense=dense,
            sparse=sp,
            payload=make_payload(
                tenant=TENANT,
                doc_id=c["doc_id"],
                chunk_id=c["chunk_id"],
                ordinal=int(c["key"].rsplit(":", 1)[1]),
                text=c["text"],
                title=c["file"].removesuffix(".pdf"),
                uri=c["file"],
                source_id="filings",
                mime_type="application/pdf",
                heading_path=c["heading_path"],
                page=c["page"],
                acl_groups=["all"],
            ),
        )
        for c, dense, sp in zip(chunks, matrix, sparse, strict=True)
    ]
    writer = EdgeIndexWriter.create(path, matrix.shape[1])
    writer.upsert(points)
    writer.close()


def question_class(patterns: list[str], files: list[str], kept: set[str]) -> str | None:
    """``answerable`` when every file the patterns name is indexed, ``unanswerable`` when none
    is, None (skipped) when both kinds or no file match."""
    named = {f for f in files for p in patterns if fnmatch.fnmatch(f, p)}
    if not named:
        return None
    if named <= kept:
        return "answerable"
    if not named & kept:
        return "unanswerable"
    return None


@dataclass
class Timings:
    """Per-request measurements of one phase."""

    ttft_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: int = 0


def stream_answer(
    answerer: Any, question: str, hits: list[Any], started: float
) -> tuple[Any, float]:
    """Streams one answer; returns ``(Answer, ms to the first delta since started)``."""
    pieces = answerer.stream(question, hits)
    first: float | None = None
    while True:
        try:
            next(pieces)
        except StopIteration as stop:
            answer = stop.value
            break
        if first is None:
            first = (time.perf_counter() - started) * 1000
    return answer, first if first is not None else (time.perf_counter() - started) * 1000


def fallback_share_after_kill(
    questions: list[str],
    retrieve: Callable[[str], list[Any]],
    fallback_url: str,
    model: str,
    embedder: Any,
) -> dict[str, Any]:
    """Starts a second llama.cpp server as the primary (the running one is the fallback) and
    streams ``questions`` through the platform's router (:class:`~rag_platform.lib.routing.
    RoutedAnswerer` over the routes ``primary`` → ``fallback``, with their circuit breakers and
    the extractive answer last), killing the primary after half of them.

    Returns:
        ``{"fallback_share_after_kill", "requests_after_kill", "answered_after_kill",
        "extractive_after_kill", "errors", "primary_share_before_kill"}``: shares of the
        requests whose answer came from the ``fallback`` route (after the kill) or the
        ``primary`` (before it); an error is a request that raised.
    """
    from rag_platform.lib.answer import ExtractiveAnswerer
    from rag_platform.lib.routing import RoutedAnswerer, build_routes
    from rag_platform.lib.tenants import BreakerConfig, ModelRoute
    from rag_platform_tests.utils.llm import llama_server_process

    half = len(questions) // 2
    served: list[str] = []
    errors: list[str] = []
    with llama_server_process() as (primary_url, proc):
        routes = build_routes(
            [
                ModelRoute(name="primary", base_url=primary_url, model=model, timeout_seconds=60),
                ModelRoute(
                    name="fallback", base_url=fallback_url, model=model, timeout_seconds=120
                ),
            ],
            BreakerConfig(),
            max_tokens=MAX_TOKENS,
        )
        for route in routes:
            route.answerer.max_context_chunks = CONTEXT_K
        router = RoutedAnswerer(routes, ExtractiveAnswerer(embedder))
        try:
            for i, question in enumerate(questions):
                if i == half:
                    proc.kill()
                    proc.wait(timeout=30)
                    log(f"primary killed after {i} requests")
                hits = retrieve(question)
                try:
                    answer, _ = stream_answer(router, question, hits, time.perf_counter())
                except Exception as exc:  # the router must not raise: count it
                    log(f"request failed: {exc}")
                    served.append("none")
                    errors.append(question)
                    continue
                served.append(answer.model or answer.mode)
        finally:
            router.close()
    after = served[half:]
    before = served[:half]
    return {
        "fallback_share_after_kill": round(after.count("fallback") / len(after), 4)
        if after
        else None,
        "requests_after_kill": len(after),
        "answered_after_kill": sum(1 for s in after if s != "none"),
        "extractive_after_kill": after.count("extractive"),
        "primary_share_before_kill": round(before.count("primary") / len(before), 4)
        if before
        else None,
        "errors": len(errors),
    }


def main(argv: list[str] | None = None) -> int:
    configure_runtime_env()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="sec10q folder")
    parser.add_argument(
        "--limit", type=int, default=None, help="answer this many questions (half each class)"
    )
    parser.add_argument("--fallback-requests", type=int, default=6)
    parser.add_argument(
        "--kept",
        default=",".join(KEPT),
        help="tickers whose filings are indexed (the others' questions are unanswerable)",
    )
    args = parser.parse_args(argv)

    from rag_platform.lib.answer import LLMAnswerer, LLMError
    from rag_platform.lib.embedding import get_sparse_encoder
    from rag_platform.lib.evaluation.answers import LLMConfig, evaluate_answers
    from rag_platform.lib.evaluation.golden import GoldenSet, load_golden_set
    from rag_platform.lib.grounding import calibrate_min_score, decide, refusal, refusal_scores
    from rag_platform.lib.index.edge import EdgeIndexReader
    from rag_platform.lib.models import SearchFilters
    from rag_platform.lib.rag import build_embedder, build_retriever
    from rag_platform.lib.tenants import RetrievalSettings
    from rag_platform_tests.utils.llm import MODEL_ALIAS, llama_server

    settings = get_settings()
    t_start = time.perf_counter()
    files = sorted(p.name for p in (args.data / "docs").glob("*.pdf"))
    kept = tuple(t.strip() for t in args.kept.split(",") if t.strip())
    kept_files = {f for f in files if any(c in f for c in kept)}
    golden = load_golden_set(args.data / "qna_dev.csv", "sec10q")
    classes = {
        q.qid: question_class(q.relevant_patterns, files, kept_files) for q in golden.questions
    }
    answerable = [q for q in golden.questions if classes[q.qid] == "answerable"]
    unanswerable = [q for q in golden.questions if classes[q.qid] == "unanswerable"]
    log(f"{len(answerable)} answerable, {len(unanswerable)} unanswerable dev questions")

    chunk_cache = cache_dir() / f"sec_chunks_{'_'.join(sorted(kept))}.json"
    if chunk_cache.exists():
        chunks = json.loads(chunk_cache.read_text())
    else:
        chunks = sec_chunks(args.data / "docs", kept)
        chunk_cache.write_text(json.dumps(chunks))
    embedder = build_embedder(settings)
    matrix = cached_embeddings(embedder, [c["embedding_text"] for c in chunks])
    log(
        f"{len(chunks)} chunks of {len(kept_files)} filings ({time.perf_counter() - t_start:.0f} s)"
    )
    filters = SearchFilters(acl_groups=("all",))

    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        shard = Path(tmp) / "v1"
        build_shard(shard, chunks, matrix)
        with EdgeIndexReader(shard) as reader:
            retriever = build_retriever(
                reader, TENANT, RetrievalSettings(), embedder, get_sparse_encoder()
            )

            def relevance(question: str) -> float | None:
                return retriever.retrieve(question, CONTEXT_K, filters, relevance=True).relevance

            # min_score: auto, calibrated on the golden (answerable) questions
            golden_rel = [r for q in answerable if (r := relevance(q.question)) is not None]
            min_score = calibrate_min_score(golden_rel, QUANTILE)
            refused_flags: list[bool] = []
            truth: list[bool] = []
            for q in [*answerable, *unanswerable]:
                result = retriever.retrieve(q.question, CONTEXT_K, filters, relevance=True)
                refused_flags.append(
                    not decide(bool(result.hits), result.relevance, min_score).grounded
                )
                truth.append(classes[q.qid] == "unanswerable")
            scores = refusal_scores(refused_flags, truth)
            log(f"min_score {min_score}: refusal P {scores.precision:.3f} R {scores.recall:.3f}")

            n = args.limit or len(answerable) + len(unanswerable)
            ans_sample = answerable[: max(1, n - n // 2)]
            unans_sample = unanswerable[: n // 2]
            phase = Timings()
            out: dict[str, Any] = {
                "requests": 0,
                "errors": 0,
                "fallback_share_after_kill": None,
                "refusal_precision": round(scores.precision, 4),
                "refusal_recall": round(scores.recall, 4),
                "answer_similarity": None,
                "faithfulness": None,
                "ttft_p50_ms": None,
                "ttft_p95_ms": None,
                "total_p50_ms": None,
                "total_p95_ms": None,
                "min_score": min_score,
                "refusal_questions": scores.questions,
                "unanswerable_questions": scores.unanswerable,
                "refused": scores.refused,
                "model": MODEL_ALIAS,
                "kept": list(kept),
                "chunks": len(chunks),
                "complete": False,
            }

            def emit(*_: Any) -> None:
                """Prints what was measured so far (also on SIGTERM from ``timeout``)."""
                out["seconds"] = round(time.perf_counter() - t_start, 1)
                print(json.dumps(out), flush=True)
                if _:  # unwinds the ``with`` blocks: the llama.cpp servers are terminated
                    raise SystemExit(0)

            signal.signal(signal.SIGTERM, emit)

            with llama_server() as url:
                answerer = LLMAnswerer(
                    url,
                    MODEL_ALIAS,
                    timeout=120,
                    max_tokens=MAX_TOKENS,
                    max_context_chunks=CONTEXT_K,
                )
                warm = answerable[-1].question  # the model's first request loads its caches
                stream_answer(
                    answerer, warm, retriever.search(warm, CONTEXT_K, filters), time.perf_counter()
                )
                answered: dict[str, tuple[list[Any], Any]] = {}
                for q in [*ans_sample, *unans_sample]:  # every request as /v1/query runs it
                    phase.requests += 1
                    t0 = time.perf_counter()
                    result = retriever.retrieve(q.question, CONTEXT_K, filters, relevance=True)
                    if not decide(bool(result.hits), result.relevance, min_score).grounded:
                        answer = refusal("llm")
                    else:
                        try:
                            answer, ttft = stream_answer(answerer, q.question, result.hits, t0)
                        except LLMError as exc:
                            phase.errors.append(str(exc))
                            continue
                        phase.ttft_ms.append(ttft)
                    phase.total_ms.append((time.perf_counter() - t0) * 1000)
                    answered[q.question] = (result.hits, answer)
                    log(f"request {phase.requests}: {phase.total_ms[-1]:.0f} ms")
                    out.update(
                        requests=phase.requests,
                        errors=len(phase.errors),
                        ttft_p50_ms=percentile(phase.ttft_ms, 50),
                        ttft_p95_ms=percentile(phase.ttft_ms, 95),
                        total_p50_ms=percentile(phase.total_ms, 50),
                        total_p95_ms=percentile(phase.total_ms, 95),
                    )
                answerer.close()
                log(f"answers done ({time.perf_counter() - t_start:.0f} s)")

                fb_questions = [q.question for q in ans_sample][: args.fallback_requests]
                while len(fb_questions) < args.fallback_requests:
                    fb_questions.append(answerable[len(fb_questions)].question)
                fallback = fallback_share_after_kill(
                    fb_questions,
                    lambda question: retriever.search(question, CONTEXT_K, filters),
                    url,
                    MODEL_ALIAS,
                    embedder,
                )
                out.update(
                    fallback_share_after_kill=fallback["fallback_share_after_kill"],
                    errors=len(phase.errors) + fallback["errors"],
                    fallback=fallback,
                )
                log(f"fallback done ({time.perf_counter() - t_start:.0f} s)")

                # ragas over the answerable questions' answers above, judged by the same model
                judged = [q for q in ans_sample if q.question in answered]
                evaluation = evaluate_answers(
                    GoldenSet(name="sec10q-answerable", questions=judged),
                    lambda question, k: answered[question][0],
                    lambda question, hits: answered[question][1],
                    llm=LLMConfig(base_url=url, model=MODEL_ALIAS),
                    embedder_fn=embedder.embed_documents,
                    limit=None,
                    context_k=CONTEXT_K,
                )

    summary = evaluation["summary"]
    out.update(
        answer_similarity=round(summary["answer_similarity"], 4)
        if "answer_similarity" in summary
        else None,
        faithfulness=round(summary["faithfulness"], 4) if "faithfulness" in summary else None,
        answered_questions=len(judged),
        judge_errors=sum(
            1
            for r in evaluation["per_question"]
            if r["error"] and r["error"].startswith("LLM judge")
        ),
        complete=True,
    )
    emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
