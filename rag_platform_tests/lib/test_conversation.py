"""Follow-up rewriting: the deterministic rule, and the LLM rewriter against a real llama.cpp
server (Qwen2.5-0.5B, ``rag_platform_tests/utils/llm.py``) and against a dead endpoint."""

from __future__ import annotations

import pytest

from rag_platform.lib.conversation import (
    MAX_STANDALONE_CHARS,
    LLMRewriter,
    RuleRewriter,
    Turn,
    needs_context,
)
from rag_platform.lib.net import free_port
from rag_platform.lib.rag import build_rewriter
from rag_platform_tests.serving.factories import make_settings

HISTORY = [
    Turn(
        "user",
        "Does vitamin D reduce the risk of hip fractures?",
        "Does vitamin D reduce the risk of hip fractures?",
    ),
    Turn("assistant", "Vitamin D with calcium reduced hip fractures in older women [1]."),
]


class TestRule:
    @pytest.mark.parametrize(
        "question",
        ["What about in men?", "And in children?", "Is it safe?", "Why?", "How much of that?"],
    )
    def test_follow_ups_are_anchored_to_the_previous_question(self, question: str) -> None:
        got = RuleRewriter().rewrite(HISTORY, question)
        assert got.kind == "rule"
        assert got.question == f'Regarding "{HISTORY[0].standalone}": {question}'

    @pytest.mark.parametrize(
        "question",
        [
            "Which genes regulate insulin secretion in pancreatic beta cells?",
            "Statins and muscle pain",
        ],
    )
    def test_self_contained_questions_are_kept(self, question: str) -> None:
        assert not needs_context(question)
        got = RuleRewriter().rewrite(HISTORY, question)
        assert (got.question, got.kind) == (question, "none")

    def test_first_question_is_kept_even_if_short(self) -> None:
        assert RuleRewriter().rewrite([], " Why? ").question == "Why?"

    def test_a_chain_keeps_the_topic_and_the_last_follow_ups(self) -> None:
        rule, history = RuleRewriter(), list(HISTORY)
        for follow_up in ("And in men?", "Is it dose dependent?", "Any side effects?"):
            got = rule.rewrite(history, follow_up)
            history += [Turn("user", follow_up, got.question), Turn("assistant", "…")]
        topic = HISTORY[0].content
        assert got.question == f'Regarding "{topic}": Is it dose dependent? Any side effects?'

    def test_never_longer_than_the_query_limit(self) -> None:
        long = [Turn("user", "x" * 2000, "x" * 2000)]
        got = RuleRewriter().rewrite(long, "And " + "why " * 400)
        assert got.kind == "rule" and len(got.question) <= MAX_STANDALONE_CHARS


class TestLLMRewriter:
    def test_dead_endpoint_falls_back_to_the_rule(self) -> None:
        rewriter = LLMRewriter(f"http://127.0.0.1:{free_port()}/v1", "m", timeout=2)
        try:
            got = rewriter.rewrite(HISTORY, "What about in men?")
        finally:
            rewriter.close()
        assert got.kind == "rule" and HISTORY[0].content in got.question

    def test_build_rewriter_picks_by_settings(self, tmp_path) -> None:  # type: ignore[no-untyped-def]
        assert isinstance(build_rewriter(make_settings(tmp_path)), RuleRewriter)
        llm = build_rewriter(make_settings(tmp_path, llm_base_url="http://x/v1", llm_model="m"))
        assert isinstance(llm, LLMRewriter) and llm.url == "http://x/v1/chat/completions"
        llm.close()

    @pytest.mark.slow
    def test_real_model_makes_a_standalone_question(self) -> None:
        from rag_platform_tests.utils.llm import MODEL_ALIAS, llama_server

        with llama_server() as url:
            rewriter = LLMRewriter(url, MODEL_ALIAS, timeout=300)
            try:
                got = rewriter.rewrite(HISTORY, "What about in men?")
            finally:
                rewriter.close()
        assert got.kind == "llm", got
        text = got.question.lower()
        # the model resolved the reference: the topic is in the question, and it asks about men
        assert "vitamin d" in text and "men" in text
        assert not text.startswith("regarding")
