"""The generated-answer path against a real LLM: Qwen2.5-0.5B-Instruct under llama.cpp's
OpenAI-compatible server (see ``rag_platform_tests/utils/llm.py``), through ``LLMAnswerer``, the
query API and the LLM-judged ragas metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from rag_platform.lib.answer import NO_ANSWER_TEXT, LLMAnswerer
from rag_platform.lib.evaluation.answers import LLMConfig, evaluate_answers
from rag_platform.lib.evaluation.golden import GoldenQuestion, GoldenSet
from rag_platform.lib.models import Hit
from rag_platform.lib.net import free_port
from rag_platform.lib.store import MetadataStore, QueryLogEntry
from rag_platform.settings import Settings
from rag_platform_tests.lib.test_answer import drain
from rag_platform_tests.serving.factories import (
    bearer,
    fast_home,
    make_settings,
    new_store,
    publish_tenant,
    scifact_docs,
)
from rag_platform_tests.serving.test_query import parse_sse
from rag_platform_tests.utils.llm import MODEL_ALIAS, llama_server, model_path
from serving.main import create_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm_url() -> Iterator[str]:
    with llama_server() as url:
        yield url


@pytest.fixture(scope="module")
def count_tokens() -> Callable[[str], int]:
    """The model's own tokenizer (the GGUF's vocabulary through llama.cpp) as a counter."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(model_path()), vocab_only=True, verbose=False)

    def count(text: str) -> int:
        return len(vocab.tokenize(text.encode(), add_bos=False, special=False))

    return count


def llm_settings(home: Path, llm_url: str) -> Settings:
    # a 0.5B model on 2 busy cores: short answers, a generous timeout
    return make_settings(
        home,
        llm_base_url=llm_url,
        llm_model=MODEL_ALIAS,
        llm_timeout_seconds=300,
        llm_max_tokens=64,
    )


def rows_until(
    store: MetadataStore, tenant: str, n: int, timeout: float = 60.0
) -> list[QueryLogEntry]:
    """The tenant's query-log rows once there are ``n`` (polled with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = store.list_queries(tenant)
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


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

    def test_a_stream_without_usage_counts_tokens_with_the_model_tokenizer(
        self, llm_url: str, count_tokens: Callable[[str], int]
    ) -> None:
        question = "What does vitamin D deficiency cause in children?"
        llm = LLMAnswerer(llm_url, MODEL_ALIAS, timeout=120, max_tokens=48)
        reported = llm.answer(question, HITS)  # usage as the endpoint counts it
        llm.count_tokens = count_tokens
        deltas, streamed = drain(llm.stream(question, HITS))
        llm.close()
        # llama.cpp's server sends no usage chunk: the counts come from the tokenizer
        assert streamed.completion_tokens == count_tokens("".join(deltas)) > 0
        assert abs(streamed.completion_tokens - reported.completion_tokens) <= 2
        # the prompt count covers the messages' text, not the chat template's own tokens
        assert 0.7 * reported.prompt_tokens < streamed.prompt_tokens <= reported.prompt_tokens

    def test_streamed_answers_log_their_tokens_and_cache_hits_log_none(self, llm_url: str) -> None:
        with fast_home() as home:
            settings = llm_settings(home, llm_url)
            store = new_store(settings)
            docs = scifact_docs(0, 30)
            publish_tenant(store, settings, "acme", "v1", docs)
            _, key = store.create_api_key("acme", ["all"])
            question = {"query": docs[4].title, "top_k": 3}
            with TestClient(create_app(settings)) as c:
                r = c.post("/v1/query", json={**question, "stream": True}, headers=bearer(key))
                assert r.status_code == 200, r.text
                done = parse_sse(r.text)[-1]
                assert done[0] == "done" and done[1]["mode"] == "llm"
                usage = done[1]["usage"]
                assert usage["prompt_tokens"] > 50 and usage["completion_tokens"] > 0  # type: ignore[index]
                again = c.post("/v1/query", json=question, headers=bearer(key)).json()
                assert again["cached"] is True and again["answer"] == done[1]["answer"]
                assert again["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
                assert c.app.state.serving.flush_query_log()  # type: ignore[attr-defined]
            streamed = store.get_query(str(done[1]["query_id"]))
            hit_row = store.get_query(again["query_id"])
            assert streamed is not None and hit_row is not None
            assert (streamed.prompt_tokens, streamed.completion_tokens) == (
                usage["prompt_tokens"],  # type: ignore[index]
                usage["completion_tokens"],  # type: ignore[index]
            )
            assert streamed.cache_hit is False and streamed.status_code == 200
            assert (hit_row.prompt_tokens, hit_row.completion_tokens) == (0, 0)
            assert hit_row.cache_hit is True
            store.dispose()

    def test_a_client_leaving_mid_stream_still_gets_its_query_logged(self, llm_url: str) -> None:
        with fast_home() as home:
            settings = llm_settings(home, llm_url)
            store = new_store(settings)
            docs = scifact_docs(0, 30)
            publish_tenant(store, settings, "acme", "v1", docs)
            _, key = store.create_api_key("acme", ["all"])
            port = free_port()
            server = uvicorn.Server(
                uvicorn.Config(
                    create_app(settings), host="127.0.0.1", port=port, log_level="warning"
                )
            )
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            deadline = time.monotonic() + 120
            while not server.started:
                assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
                time.sleep(0.1)
            try:
                body = {"query": docs[7].title, "top_k": 3, "stream": True}
                with (
                    httpx.Client(timeout=120) as client,
                    client.stream(
                        "POST", f"http://127.0.0.1:{port}/v1/query", json=body, headers=bearer(key)
                    ) as r,
                ):
                    query_id = r.headers["X-Query-Id"]
                    events = []
                    for line in r.iter_lines():
                        if line.startswith("event: "):
                            events.append(line[7:])
                        if "delta" in events:
                            break  # the first piece of the answer: hang up
                assert events == ["hits", "delta"]
                rows = rows_until(store, "acme", 1)
                assert [(row.query_id, row.status_code) for row in rows] == [(query_id, 499)]
                assert len(rows[0].hit_chunk_ids) == 3  # the hits were logged
            finally:
                server.should_exit = True
                thread.join(timeout=60)
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
