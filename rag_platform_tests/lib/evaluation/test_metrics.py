"""Retrieval metrics on hand-made runs whose nDCG@10, recall@k, precision@k and MRR are worked
out by hand below (linear gains, log2 discounts, as trec_eval and ranx define them)."""

from __future__ import annotations

import math

import pytest

from rag_platform.lib.evaluation.golden import GoldenQuestion, GoldenSet
from rag_platform.lib.evaluation.metrics import doc_level_run, evaluate_retrieval
from rag_platform.lib.models import Hit, make_doc_id

A, B, C, D, E, F = (make_doc_id("t", "src", n) for n in "ABCDEF")


def hit(doc_id: str, score: float, n: int = 0) -> Hit:
    return Hit(
        chunk_id=f"{doc_id}-{n}",
        doc_id=doc_id,
        tenant="t",
        text="...",
        score=score,
        title=f"title of {doc_id[:4]}",
    )


def hand_made() -> tuple[GoldenSet, dict[str, list[Hit]]]:
    golden = GoldenSet(
        [
            GoldenQuestion("q1", "first?", relevant_doc_ids={A: 1, B: 2}, question_type="x"),
            GoldenQuestion("q2", "second?", relevant_doc_ids={D: 1}, question_type="y"),
            GoldenQuestion("q3", "unjudged?", question_type="y"),
        ],
        "hand",
        doc_titles={A: "Doc A", B: "Doc B", D: "Doc D"},
    )
    runs = {
        # documents B, C, A: B's second chunk (0.7) must not count twice
        "first?": [hit(B, 0.9), hit(C, 0.8), hit(B, 0.7, 1), hit(A, 0.6)],
        "second?": [hit(E, 0.5), hit(F, 0.4), hit(D, 0.3)],
        "unjudged?": [hit(A, 1.0)],
    }
    return golden, runs


class TestDocLevelRun:
    def test_first_chunk_gives_rank_and_score(self) -> None:
        _, runs = hand_made()
        ranked = doc_level_run(runs["first?"])
        assert [(d, s) for d, s, _ in ranked] == [(B, 0.9), (C, 0.8), (A, 0.6)]


class TestEvaluateRetrieval:
    def test_hand_computed_values(self) -> None:
        golden, runs = hand_made()
        calls: list[tuple[str, int]] = []

        def retrieve(question: str, k: int) -> list[Hit]:
            calls.append((question, k))
            return runs[question]

        result = evaluate_retrieval(golden, retrieve)
        assert calls == [("first?", 100), ("second?", 100)]  # the unjudged question is skipped
        assert result.skipped == ["q3"]

        # q1: ranking B(2) C(0) A(1). DCG = 2/log2(2) + 1/log2(4) = 2.5;
        #     IDCG = 2/log2(2) + 1/log2(3) = 2.6309298; nDCG@10 = 0.9502344.
        # q2: ranking E F D(1). DCG = 1/log2(4) = 0.5; IDCG = 1; nDCG@10 = 0.5.
        ndcg_q1 = 2.5 / (2 + 1 / math.log2(3))
        per = {p["qid"]: p["metrics"] for p in result.per_question}
        assert per["q1"]["ndcg@10"] == pytest.approx(ndcg_q1)
        assert per["q1"]["ndcg@10"] == pytest.approx(0.9502344, abs=1e-7)
        assert per["q2"]["ndcg@10"] == pytest.approx(0.5)
        assert per["q1"]["recall@1"] == pytest.approx(0.5)
        assert per["q1"]["recall@3"] == pytest.approx(1.0)
        assert per["q1"]["precision@3"] == pytest.approx(2 / 3)
        assert per["q2"]["mrr"] == pytest.approx(1 / 3)
        assert per["q2"]["recall@1"] == 0.0 and per["q2"]["recall@3"] == 1.0

        s = result.summary
        assert s["ndcg@10"] == pytest.approx((ndcg_q1 + 0.5) / 2)
        assert s["mrr"] == pytest.approx((1 + 1 / 3) / 2)
        assert s["recall@1"] == pytest.approx(0.25)
        assert s["recall@3"] == pytest.approx(1.0)
        assert s["recall@100"] == pytest.approx(1.0)
        assert s["precision@1"] == pytest.approx(0.5)
        assert s["precision@3"] == pytest.approx(0.5)
        assert s["precision@10"] == pytest.approx((2 / 10 + 1 / 10) / 2)
        # MAP: q1 AP = (1/1 + 2/3) / 2 = 0.8333; q2 AP = 1/3
        assert s["map@100"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3) / 2)
        assert s["questions"] == 2 and s["errors"] == 0
        assert s["latency_p50_ms"] >= 0 and s["latency_p95_ms"] >= s["latency_p50_ms"]

    def test_per_question_detail_and_breakdown(self) -> None:
        golden, runs = hand_made()
        result = evaluate_retrieval(golden, lambda q, k: runs[q], k_values=(1, 3))
        q1 = next(p for p in result.per_question if p["qid"] == "q1")
        assert q1["type"] == "x" and q1["first_relevant_rank"] == 1
        assert [r["doc_id"] for r in q1["retrieved"]] == [B, C, A]
        assert [r["relevant"] for r in q1["retrieved"]] == [True, False, True]
        assert [(e["doc_id"], e["rank"], e["title"]) for e in q1["expected"]] == [
            (B, 1, "Doc B"),
            (A, 3, "Doc A"),
        ]
        assert set(result.by_question_type) == {"x", "y"}
        assert result.by_question_type["y"]["ndcg@10"] == pytest.approx(0.5)
        assert result.by_question_type["y"]["questions"] == 1
        assert [p["qid"] for p in result.worst(1)] == ["q2"]
        assert result.to_dict()["summary"] == result.summary

    def test_ties_keep_the_retrievers_order(self) -> None:
        # equal fused scores; the relevant document sorts last by id but was ranked first
        first, second = sorted([A, B], reverse=True)
        golden = GoldenSet([GoldenQuestion("q", "tie?", relevant_doc_ids={first: 1})], "ties")
        result = evaluate_retrieval(golden, lambda q, k: [hit(first, 0.5), hit(second, 0.5)])
        assert result.summary["mrr"] == 1.0

    def test_a_failing_question_counts_as_empty_and_the_rest_go_on(self) -> None:
        golden, runs = hand_made()

        def retrieve(question: str, k: int) -> list[Hit]:
            if question == "second?":
                raise RuntimeError("shard closed")
            return runs[question]

        result = evaluate_retrieval(golden, retrieve)
        q2 = next(p for p in result.per_question if p["qid"] == "q2")
        assert q2["error"] == "RuntimeError: shard closed"
        assert q2["metrics"]["ndcg@10"] == 0.0 and q2["retrieved"] == []
        assert result.summary["errors"] == 1
        assert result.summary["ndcg@10"] == pytest.approx(2.5 / (2 + 1 / math.log2(3)) / 2)

    def test_nothing_to_evaluate(self) -> None:
        golden = GoldenSet([GoldenQuestion("q", "?")], "empty")
        with pytest.raises(ValueError, match="no question has a relevant document"):
            evaluate_retrieval(golden, lambda q, k: [])
        golden, runs = hand_made()
        with pytest.raises(ValueError, match="positive"):
            evaluate_retrieval(golden, lambda q, k: runs[q], k_values=(0, 10))


@pytest.mark.slow  # ~60 s: ranx's numba kernels compile first
def test_trec_eval_scores_agree_with_ranx_on_random_runs() -> None:
    """Same definitions, two implementations: trec_eval (through pytrec_eval, what the platform
    uses) and ranx (what it used before), on 200 seeded random questions with graded relevance,
    empty rankings and rankings without any relevant document."""
    import random

    from ranx import Qrels, Run, evaluate

    from rag_platform.lib.evaluation.metrics import metric_names_for, trec_eval_scores

    rng = random.Random(7)
    docs = [f"d{i}" for i in range(60)]
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(200):
        qid = f"q{q}"
        qrels[qid] = {d: rng.randint(1, 3) for d in rng.sample(docs, rng.randint(1, 6))}
        ranked = rng.sample(docs, rng.choice([0, 1, 5, 20, 60]))
        run[qid] = {d: float(len(ranked) - i) for i, d in enumerate(ranked)}
    names = metric_names_for((1, 3, 5, 10, 100))
    ours = trec_eval_scores(qrels, run, names)

    ranx_run = Run.from_dict({q: r for q, r in run.items() if r})
    evaluate(Qrels.from_dict(qrels), ranx_run, names, threads=1, make_comparable=True)
    for name in names:
        theirs = ranx_run.scores[name]
        for qid in qrels:
            assert ours[name][qid] == pytest.approx(theirs.get(qid, 0.0), abs=1e-4), (name, qid)
    assert any(v > 0 for v in ours["ndcg@10"].values())
    assert any(v == 0 for v in ours["mrr"].values())


def test_unsupported_metric_is_refused() -> None:
    from rag_platform.lib.evaluation.metrics import trec_eval_scores

    with pytest.raises(ValueError, match="unsupported metric"):
        trec_eval_scores({"q": {"a": 1}}, {"q": {"a": 1.0}}, ["bpref"])
