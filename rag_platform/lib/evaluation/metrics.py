"""Retrieval metrics over a golden set: nDCG@10, recall@k, precision@k, MRR, MAP@100.

The retriever under test is a callable, so the evaluation runs the *same* retrieval code the API
uses against a new index version without depending on how that index is built. Chunk hits are
turned into a document-level run (the usual practice for BEIR-style document qrels): a document
takes the rank of its first (best) chunk, so the retriever's order is kept exactly.

All metric values come from trec_eval itself, through its Python binding pytrec_eval (Van Gysel &
de Rijke, SIGIR 2018, https://github.com/cvangysel/pytrec_eval; the ``pytrec-eval-terrier``
wheels): ``ndcg@k`` is trec_eval's ``ndcg_cut_k`` with linear gains (Järvelin & Kekäläinen,
2002), ``mrr`` its ``recip_rank`` (the reciprocal rank of the first relevant document within the
retrieval depth), ``map@k`` its ``map_cut_k``, ``recall@k`` and ``precision@k`` its ``recall_k``
and ``P_k``. (ranx, used before, computes the same trec_eval definitions but JIT-compiles its
numba kernels in every new process: ~7 s of each evaluation on 2 cores.)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rag_platform.lib.evaluation.golden import GoldenSet
from rag_platform.lib.models import Hit

logger = logging.getLogger(__name__)

#: Metrics every evaluation reports; the gate's regression check reads the first three.
HEADLINE_METRICS = ("ndcg@10", "recall@100", "mrr", "recall@10", "precision@10")

#: How many documents each question retrieves (the depth of recall@100 and MRR).
RETRIEVAL_DEPTH = 100

Retrieve = Callable[[str, int], list[Hit]]


@dataclass
class RetrievalEvaluation:
    """The outcome of :func:`evaluate_retrieval`.

    Attributes:
        summary: metric name → mean over the judged questions (``ndcg@10``, ``recall@k``,
            ``precision@k``, ``mrr``, ``map@100``), plus ``latency_p50_ms``,
            ``latency_p95_ms`` (retrieval call wall time, milliseconds), ``questions``
            (judged questions) and ``errors`` (questions whose retrieval raised).
        per_question: one dict per judged question: ``qid``, ``question``, ``type``,
            ``metrics`` (name → value), ``first_relevant_rank`` (1-based or None),
            ``latency_ms``, ``error`` (str or None), ``retrieved`` (top 5: ``doc_id``,
            ``title``, ``score``, ``relevant``) and ``expected`` (``doc_id``, ``title``,
            ``relevance``, ``rank`` or None).
        by_question_type: question type → metric name → mean (types of the golden set only).
        skipped: qids of questions without any relevant document (not evaluated).
        metric_names: the metric names computed, in order.
    """

    summary: dict[str, float]
    per_question: list[dict[str, Any]]
    by_question_type: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    metric_names: list[str] = field(default_factory=list)

    def worst(self, n: int = 10, metric: str = "ndcg@10") -> list[dict[str, Any]]:
        """The ``n`` questions with the lowest ``metric`` (ties: lower recall@100 first)."""
        return sorted(
            self.per_question,
            key=lambda q: (q["metrics"].get(metric, 0.0), q["metrics"].get("recall@100", 0.0)),
        )[:n]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the report and Dagster metadata read it)."""
        return {
            "summary": dict(self.summary),
            "per_question": list(self.per_question),
            "by_question_type": {k: dict(v) for k, v in self.by_question_type.items()},
            "skipped": list(self.skipped),
            "metric_names": list(self.metric_names),
        }


def metric_names_for(k_values: Sequence[int]) -> list[str]:
    """Metric names for ``k_values``: ndcg@10, mrr, map@100, recall@k and precision@k."""
    names = ["ndcg@10", "mrr", "map@100"]
    for k in sorted(set(k_values) | {10, 100}):
        names += [f"recall@{k}", f"precision@{k}"]
    return names


def doc_level_run(hits: Sequence[Hit]) -> list[tuple[str, float, str]]:
    """Collapse chunk hits into documents, keeping the retriever's order.

    A document takes the position of its first hit, and that hit's score (its best chunk when the
    hits are sorted by score, as retrievers return them).

    Returns:
        ``(doc_id, best_chunk_score, title)`` in rank order, one per document.
    """
    seen: dict[str, tuple[str, float, str]] = {}
    for hit in hits:
        if hit.doc_id not in seen:
            seen[hit.doc_id] = (hit.doc_id, float(hit.score), hit.title)
    return list(seen.values())


def evaluate_retrieval(
    golden: GoldenSet,
    retrieve: Retrieve,
    k_values: Sequence[int] = (1, 3, 5, 10, 100),
    *,
    depth: int = RETRIEVAL_DEPTH,
) -> RetrievalEvaluation:
    """Run every judged golden question through ``retrieve`` and score the document ranking.

    Args:
        golden: a golden set whose ``relevant_doc_ids`` are platform doc ids (see
            :func:`~rag_platform.lib.evaluation.golden.resolve_relevance`). Questions without a
            relevant document are skipped and listed in ``skipped``.
        retrieve: ``retrieve(question, k) -> list[Hit]``, best first; called with ``k=depth``.
            An exception for one question is recorded in its ``error`` and counts as an empty
            ranking; the other questions go on.
        k_values: cut-offs for recall@k and precision@k (10 and 100 are always included).
        depth: how many chunks each question retrieves (100 by default).

    Returns:
        A :class:`RetrievalEvaluation`.

    Raises:
        ValueError: no question of the set has a relevant document (nothing to evaluate), or a
            cut-off is not a positive integer.
    """
    if any(int(k) < 1 for k in k_values):
        raise ValueError(f"k_values must be positive integers, got {list(k_values)}")
    judged = [q for q in golden.questions if q.has_relevance]
    skipped = [q.qid for q in golden.questions if not q.has_relevance]
    if not judged:
        raise ValueError(
            f"golden set {golden.name!r}: no question has a relevant document; "
            "resolve relevance against the index's documents first"
        )

    qrels_dict: dict[str, dict[str, int]] = {}
    run_dict: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, Any]] = {}
    latencies: list[float] = []
    errors = 0
    for q in judged:
        rel = {d: int(g) for d, g in q.relevant_doc_ids.items() if g > 0}
        qrels_dict[q.qid] = rel
        error: str | None = None
        started = time.perf_counter()
        try:
            hits = list(retrieve(q.question, depth))
        except Exception as exc:  # one failing question must not drop the others
            logger.warning("retrieval failed for golden question %s: %s", q.qid, exc)
            hits, error = [], f"{type(exc).__name__}: {exc}"
            errors += 1
        latency_ms = (time.perf_counter() - started) * 1000.0
        latencies.append(latency_ms)
        ranked = doc_level_run(hits)[:depth]
        # Rank-derived scores: trec_eval sorts by score (ties by doc id), so strictly
        # decreasing values keep the retriever's order even where fused scores tie.
        run_dict[q.qid] = {d: float(len(ranked) - i) for i, (d, _, _) in enumerate(ranked)}
        details[q.qid] = {"hits": ranked, "latency_ms": latency_ms, "error": error, "rel": rel}

    names = metric_names_for(k_values)
    per_query = trec_eval_scores(qrels_dict, run_dict, names)

    per_question: list[dict[str, Any]] = []
    for q in judged:
        d = details[q.qid]
        ranked = d["hits"]
        rank_of = {doc_id: i + 1 for i, (doc_id, _, _) in enumerate(ranked)}
        title_of = {doc_id: title for doc_id, _, title in ranked}
        rel = d["rel"]
        first = min((rank_of[x] for x in rel if x in rank_of), default=None)
        per_question.append(
            {
                "qid": q.qid,
                "question": q.question,
                "type": q.question_type,
                "metrics": {m: float(per_query[m].get(q.qid, 0.0)) for m in names},
                "first_relevant_rank": first,
                "latency_ms": round(d["latency_ms"], 3),
                "error": d["error"],
                "retrieved": [
                    {
                        "doc_id": doc_id,
                        "title": title or golden.doc_titles.get(doc_id, ""),
                        "score": score,
                        "relevant": doc_id in rel,
                    }
                    for doc_id, score, title in ranked[:5]
                ],
                "expected": sorted(
                    (
                        {
                            "doc_id": doc_id,
                            "relevance": grade,
                            "rank": rank_of.get(doc_id),
                            "title": golden.doc_titles.get(doc_id) or title_of.get(doc_id, ""),
                        }
                        for doc_id, grade in rel.items()
                    ),
                    key=lambda e: (e["rank"] is None, e["rank"] or 0, -e["relevance"]),
                ),
            }
        )

    summary = {m: _mean([per_query[m][q.qid] for q in judged]) for m in names}
    summary["latency_p50_ms"] = float(np.percentile(latencies, 50))
    summary["latency_p95_ms"] = float(np.percentile(latencies, 95))
    summary["questions"] = float(len(judged))
    summary["errors"] = float(errors)

    by_type: dict[str, dict[str, float]] = {}
    for qtype in golden.question_types:
        rows = [p for p in per_question if p["type"] == qtype]
        if rows:
            by_type[qtype] = {m: _mean([p["metrics"][m] for p in rows]) for m in names}
            by_type[qtype]["questions"] = float(len(rows))

    return RetrievalEvaluation(
        summary=summary,
        per_question=per_question,
        by_question_type=by_type,
        skipped=skipped,
        metric_names=names,
    )


def _trec_measure(name: str) -> str:
    if name == "mrr":
        return "recip_rank"
    metric, _, k = name.partition("@")
    try:
        return {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall", "precision": "P"}[
            metric
        ] + f"_{int(k)}"
    except (KeyError, ValueError):
        raise ValueError(f"unsupported metric {name!r}") from None


def trec_eval_scores(
    qrels: dict[str, dict[str, int]],
    run: dict[str, dict[str, float]],
    names: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Per-question values of ``names`` computed by trec_eval (pytrec_eval).

    Args:
        qrels: qid → doc id → relevance grade (> 0 relevant).
        run: qid → doc id → score (higher ranks first); a qid may map to an empty ranking.
        names: ``ndcg@k``, ``mrr``, ``map@k``, ``recall@k``, ``precision@k``.

    Returns:
        metric name → qid → value, for every qid of ``qrels``; a question with no ranking (or
        no relevant document in it) scores 0.

    Raises:
        ValueError: a metric name that is not one of the above.
    """
    import pytrec_eval

    measures = {name: _trec_measure(name) for name in names}
    families = {m.rsplit("_", 1)[0] if m != "recip_rank" else m for m in measures.values()}
    cuts = {m.rsplit("_", 1)[1] for m in measures.values() if m != "recip_rank"}
    requested = {
        f"{f}.{','.join(sorted(cuts, key=int))}" if f != "recip_rank" else f for f in families
    }
    ranked = {qid: docs for qid, docs in run.items() if docs and qid in qrels}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, requested)
    results = evaluator.evaluate(ranked) if ranked else {}
    return {
        name: {qid: float(results.get(qid, {}).get(measure, 0.0)) for qid in qrels}
        for name, measure in measures.items()
    }


def _mean(values: Sequence[float]) -> float:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(clean)) if clean else float("nan")
