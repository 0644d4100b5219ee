"""ragas answer metrics (non-LLM ones) on three hand-made examples, with the real embedding
model, and with every outbound connection refused."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from rag_platform.lib.evaluation.answers import LLMConfig, evaluate_answers, sample_questions
from rag_platform.lib.evaluation.golden import GoldenQuestion, GoldenSet
from rag_platform.lib.models import Answer, Hit
from rag_platform.settings import Settings

PARIS = "Paris is the capital and most populous city of France."
HAMLET = "Hamlet is a tragedy written by William Shakespeare around 1600."

GOLDEN = GoldenSet(
    [
        # retrieval finds the reference passage; the answer equals the reference answer
        GoldenQuestion(
            "paris",
            "What is the capital of France?",
            reference_contexts=[PARIS],
            reference_answer="The capital of France is Paris.",
        ),
        # no reference contexts: the reference answer stands in for one
        GoldenQuestion(
            "banana", "What colour are ripe bananas?", reference_answer="Ripe bananas are yellow."
        ),
        # retrieval misses, and the answer is off topic
        GoldenQuestion(
            "hamlet",
            "Who wrote Hamlet?",
            reference_contexts=[HAMLET],
            reference_answer="William Shakespeare wrote Hamlet.",
        ),
    ],
    "hand",
)
CONTEXTS = {
    "What is the capital of France?": [PARIS, "Bananas turn yellow when they ripen."],
    "What colour are ripe bananas?": ["Ripe bananas are yellow.", "Apples can be red or green."],
    "Who wrote Hamlet?": ["The Eiffel Tower stands in Paris."],
}
ANSWERS = {
    "What is the capital of France?": "The capital of France is Paris.",
    "What colour are ripe bananas?": "Ripe bananas are yellow.",
    "Who wrote Hamlet?": "The Eiffel Tower is a landmark in Paris.",
}


def retrieve(question: str, k: int) -> list[Hit]:
    return [
        Hit(chunk_id=f"c{i}", doc_id=f"d{i}", tenant="t", text=t, score=1 / (i + 1))
        for i, t in enumerate(CONTEXTS[question][:k])
    ]


def answer(question: str, hits: list[Hit]) -> Answer:
    return Answer(
        text=ANSWERS[question],
        citations=[],
        mode="extractive",
        prompt_tokens=7,
        completion_tokens=3,
    )


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as mp:

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise OSError("network access during answer evaluation")

        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        return evaluate_answers(GOLDEN, retrieve, answer, llm=None)


class TestEvaluateAnswers:
    def test_values_per_example(self, result: dict[str, Any]) -> None:
        rows = {r["qid"]: r for r in result["per_question"]}
        assert all(r["error"] is None for r in rows.values())
        for r in rows.values():
            for key in ("context_precision", "context_recall", "answer_similarity"):
                assert 0.0 <= r[key] <= 1.0
        paris, banana, hamlet = rows["paris"], rows["banana"], rows["hamlet"]
        assert paris["answer_similarity"] == pytest.approx(1.0, abs=1e-4)  # identical answer
        assert paris["context_precision"] == pytest.approx(1.0, abs=1e-6)  # hit at rank 1
        assert paris["context_recall"] == 1.0
        assert paris["reference_context_source"] == "golden"
        assert banana["reference_context_source"] == "reference_answer"
        assert banana["context_recall"] == 1.0
        assert hamlet["context_precision"] == 0.0 and hamlet["context_recall"] == 0.0
        assert hamlet["answer_similarity"] < 0.5
        assert paris["faithfulness"] is None and paris["answer_relevancy"] is None

    def test_summary_and_bookkeeping(self, result: dict[str, Any]) -> None:
        s = result["summary"]
        assert set(s) == {"context_precision", "context_recall", "answer_similarity"}
        assert s["context_recall"] == pytest.approx(2 / 3)
        assert result["sample_size"] == result["population"] == 3
        assert result["llm_judged"] is False and result["errors"] == 0
        assert result["tokens"] == {"prompt": 21, "completion": 9}
        assert any("reference answer" in n for n in result["notes"])
        assert any("No LLM endpoint" in n for n in result["notes"])

    def test_failures_are_recorded_per_question(self) -> None:
        def flaky(question: str, hits: list[Hit]) -> Answer:
            if "Hamlet" in question:
                raise TimeoutError("answerer timed out")
            return answer(question, hits)

        out = evaluate_answers(GOLDEN, retrieve, flaky, embedder_fn=_bag_of_letters)
        rows = {r["qid"]: r for r in out["per_question"]}
        assert rows["hamlet"]["error"] == "TimeoutError: answerer timed out"
        assert rows["paris"]["error"] is None
        assert rows["paris"]["answer_similarity"] == pytest.approx(1.0)
        assert out["errors"] == 1
        assert out["embedding_model"].startswith("caller-provided")

    def test_prepare_sees_every_retrieval_before_the_first_answer(self) -> None:
        events: list[str] = []

        def prepare(batch: list[tuple[str, list[Hit]]]) -> None:
            events.append(f"prepare:{len(batch)}")

        def answering(question: str, hits: list[Hit]) -> Answer:
            events.append("answer")
            return answer(question, hits)

        out = evaluate_answers(
            GOLDEN, retrieve, answering, embedder_fn=_bag_of_letters, prepare=prepare
        )
        assert events == ["prepare:3", "answer", "answer", "answer"]
        assert out["errors"] == 0

    def test_a_failing_prepare_loses_no_answer(self) -> None:
        def broken(batch: list[tuple[str, list[Hit]]]) -> None:
            raise RuntimeError("batch embedding failed")

        out = evaluate_answers(
            GOLDEN, retrieve, answer, embedder_fn=_bag_of_letters, prepare=broken
        )
        assert out["errors"] == 0
        assert all(r["answer"] == ANSWERS[r["question"]] for r in out["per_question"])


class TestLLMJudge:
    def test_unreachable_endpoint_is_tried_once_and_reported(self) -> None:
        # nothing listens on port 9 of this machine: the connection is refused
        out = evaluate_answers(
            GOLDEN,
            retrieve,
            answer,
            embedder_fn=_bag_of_letters,
            llm=LLMConfig("http://127.0.0.1:9/v1", "judge-model"),
        )
        assert out["llm_judged"] is True and out["llm_model"] == "judge-model"
        errors = [r["error"] for r in out["per_question"]]
        assert errors[0].startswith("LLM judge: APIConnectionError")
        assert errors[1:] == [None, None]
        assert all(r["faithfulness"] is None for r in out["per_question"])
        assert all(r["answer_similarity"] is not None for r in out["per_question"])
        assert any(n.startswith("LLM endpoint failed") for n in out["notes"])
        assert "faithfulness" not in out["summary"]


class TestSampling:
    def test_seeded_sample_in_file_order(self) -> None:
        golden = GoldenSet([GoldenQuestion(f"q{i}", f"question {i}?") for i in range(200)], "big")
        first = [q.qid for q in sample_questions(golden, 50)]
        assert len(first) == 50 == len(set(first))
        assert first == [q.qid for q in sample_questions(golden, 50)]
        assert first == sorted(first, key=lambda qid: int(qid[1:]))
        assert len(sample_questions(golden, None)) == 200
        # once some questions are judged, only they are answered
        golden.questions[7].relevant_doc_ids = {"d": 1}
        golden.questions[9].relevant_doc_ids = {"d": 2}
        assert [q.qid for q in sample_questions(golden, 50)] == ["q7", "q9"]
        with pytest.raises(ValueError, match="limit"):
            evaluate_answers(golden, retrieve, answer, limit=0)


class TestLLMConfig:
    def test_only_when_endpoint_and_model_are_set(self) -> None:
        def settings(**values: str | None) -> Settings:
            return Settings.model_validate(values)

        assert LLMConfig.from_settings(settings(llm_base_url=None, llm_model=None)) is None
        assert LLMConfig.from_settings(settings(llm_base_url="http://x/v1", llm_model=None)) is None
        cfg = LLMConfig.from_settings(
            settings(llm_base_url="http://localhost:11434/v1", llm_model="qwen2.5", llm_api_key="k")
        )
        assert cfg == LLMConfig("http://localhost:11434/v1", "qwen2.5", "k")


def _bag_of_letters(texts: list[str]) -> list[list[float]]:
    """A tiny deterministic embedding (letter counts) standing in for a caller's embedder."""
    return [[float(t.lower().count(c)) + 1e-6 for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts]
