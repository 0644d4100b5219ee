"""The generated-answer path against a real LLM: Qwen2.5-0.5B-Instruct under llama.cpp's
OpenAI-compatible server (see ``rag_platform_tests/utils/llm.py``), through ``LLMAnswerer``, the
query API and the LLM-judged ragas metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from rag_platform.lib.answer import NO_ANSWER_TEXT, LLMAnswerer
from rag_platform.lib.evaluation.answers import LLMConfig, evaluate_answers
from rag_platform.lib.evaluation.golden import GoldenQuestion, GoldenSet
from rag_platform.lib.models import Hit
from rag_platform_tests.serving.factories import (
    bearer,
    fast_home,
    make_settings,
    new_store,
    publish_tenant,
    scifact_docs,
)
from rag_platform_tests.utils.llm import MODEL_ALIAS, llama_server
from serving.main import create_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm_url() -> Iterator[str]:
    with llama_server() as url:
        yield url


def hit(i: int, text: str, title: str) -> Hit:
    return Hit(
        chunk_id=f"c{i}",
        doc_id=f"d{i}",
        tenant="t",
        text=text,
        score=1.0 / (i + 1),
        title=title,
        uri=f"file:///doc{i}.txt",
        acl_groups=["all"],
    )


HITS = [
    hit(
        0,
        "Vitamin D deficiency causes rickets in children and osteomalacia in adults.",
        "Vitamin D",
    ),
    hit(1, "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.", "Eiffel Tower"),
]


class TestLocalLLM:
    def test_answer_and_stream_from_a_real_model(self, llm_url: str) -> None:
        llm = LLMAnswerer(llm_url, MODEL_ALIAS, timeout=120, max_tokens=96)
        ans = llm.answer("What does vitamin D deficiency cause in children?", HITS)
        assert ans.mode == "llm"
        assert ans.text.strip() and ans.text != NO_ANSWER_TEXT
        assert "rickets" in ans.text.lower()
        assert ans.prompt_tokens > 50 and 0 < ans.completion_tokens <= 96
        assert all(c.chunk_id in {"c0", "c1"} for c in ans.citations)
        # greedy decoding (temperature 0): the stream spells out the same answer
        streamed = "".join(llm.stream("What does vitamin D deficiency cause in children?", HITS))
        assert "rickets" in streamed.lower()
        llm.close()

    def test_query_api_answers_with_the_llm_and_logs_tokens(self, llm_url: str) -> None:
        with fast_home() as home:
            # a 0.5B model on 2 busy cores: short answers, a generous timeout
            settings = make_settings(
                home,
                llm_base_url=llm_url,
                llm_model=MODEL_ALIAS,
                llm_timeout_seconds=300,
                llm_max_tokens=64,
            )
            store = new_store(settings)
            docs = scifact_docs(0, 30)
            publish_tenant(store, settings, "acme", "v1", docs)
            _, key = store.create_api_key("acme", ["all"])
            with TestClient(create_app(settings)) as c:
                r = c.post(
                    "/v1/query", json={"query": docs[4].title, "top_k": 3}, headers=bearer(key)
                )
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["mode"] == "llm" and body["answer"].strip()
                hit_ids = {h["chunk_id"] for h in body["hits"]}
                assert {c["chunk_id"] for c in body["citations"]} <= hit_ids
                assert c.app.state.serving.flush_query_log()  # type: ignore[attr-defined]
                row = store.get_query(body["query_id"])
                assert row is not None and row.prompt_tokens > 0 and row.completion_tokens > 0
            store.dispose()

    def test_llm_judged_metrics_are_computed(self, llm_url: str) -> None:
        golden = GoldenSet(
            name="test",
            questions=[
                GoldenQuestion(
                    qid="q1",
                    question="What does vitamin D deficiency cause in children?",
                    reference_answer="Rickets.",
                )
            ],
        )
        report = evaluate_answers(
            golden,
            retrieve=lambda q, k: HITS[:k],
            answer=LLMAnswerer(llm_url, MODEL_ALIAS, timeout=120, max_tokens=64).answer,
            llm=LLMConfig(llm_url, MODEL_ALIAS, None),
            limit=None,
            context_k=2,
        )
        assert report["llm_judged"] is True, report["notes"]
        row = report["per_question"][0]
        assert row["error"] is None, row
        for metric in ("faithfulness", "answer_relevancy"):
            assert row[metric] is not None and 0.0 <= row[metric] <= 1.0, (metric, row)
