"""Model routing: retries, circuit breakers and fallback down the model list, then to the
extractive answer.

The endpoints are the scripted OpenAI-compatible server of ``test_answer.py`` (real HTTP on
loopback: 503, 429, 404, a reply slower than the timeout) and a closed port (connection
refused); ``serving/test_routing_llm.py`` runs the same routing against two real llama.cpp
servers, one killed mid-test.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from rag_platform.lib.answer import ExtractiveAnswerer
from rag_platform.lib.embedding import get_embedder
from rag_platform.lib.routing import RoutedAnswerer, build_routes, describe_failures
from rag_platform.lib.tenants import BreakerConfig, GenerationConfig, ModelRoute
from rag_platform_tests.lib.test_answer import HITS, _FakeChat, drain, llm_url  # noqa: F401

#: Nothing listens here: connection refused at once.
CLOSED = "http://127.0.0.1:9"
QUESTION = "What does vitamin D deficiency cause?"


class Recorder:
    """A ``RoutingObserver`` that keeps what it is told."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, str]] = []
        self.fallbacks: list[tuple[str, str]] = []

    def attempt(self, route: str, outcome: str, seconds: float) -> None:
        assert seconds >= 0
        self.attempts.append((route, outcome))

    def fallback(self, code: str, reason: str) -> None:
        self.fallbacks.append((code, reason))


def routed(
    routes: list[dict[str, Any]],
    breaker: BreakerConfig | None = None,
    observe: Recorder | None = None,
) -> RoutedAnswerer:
    models = [
        ModelRoute(**{"timeout_seconds": 5, "max_retries": 0, "retry_backoff_seconds": 0, **r})
        for r in routes
    ]
    return RoutedAnswerer(
        build_routes(models, breaker or BreakerConfig(), max_tokens=64),
        ExtractiveAnswerer(get_embedder()),
        observe,
    )


def calls(model: str) -> int:
    return sum(1 for r in _FakeChat.requests if r["body"]["model"] == model)


class TestRouting:
    def test_the_first_route_answers_without_fallback(self, llm_url: str) -> None:  # noqa: F811
        answerer = routed([{"name": "primary", "base_url": llm_url, "model": "m"}])
        ans = answerer.answer(QUESTION, HITS)
        assert (ans.mode, ans.model, ans.fallback, ans.fallback_reason) == (
            "llm",
            "primary",
            None,
            None,
        )
        assert [c.chunk_id for c in ans.citations] == ["c0", "c1"]

    def test_a_5xx_is_retried_then_the_next_route_answers(self, llm_url: str) -> None:  # noqa: F811
        _FakeChat.requests.clear()
        seen = Recorder()
        answerer = routed(
            [
                {"name": "primary", "base_url": llm_url, "model": "broken", "max_retries": 2},
                {"name": "secondary", "base_url": llm_url, "model": "m"},
            ],
            observe=seen,
        )
        ans = answerer.answer(QUESTION, HITS)
        assert calls("broken") == 3  # one call and two retries
        assert (ans.mode, ans.model, ans.fallback) == ("llm", "secondary", "next_model")
        assert ans.fallback_reason == "primary: http 503"
        assert ans.prompt_tokens == 123  # the secondary's usage
        assert seen.attempts == [("primary", "http_503")] * 3 + [("secondary", "ok")]
        assert seen.fallbacks == [("next_model", "http_503")]

    def test_a_429_is_retried_but_a_404_is_not(self, llm_url: str) -> None:  # noqa: F811
        _FakeChat.requests.clear()
        answerer = routed(
            [
                {"name": "busy", "base_url": llm_url, "model": "busy", "max_retries": 1},
                {"name": "unknown", "base_url": llm_url, "model": "unknown", "max_retries": 3},
                {"name": "ok", "base_url": llm_url, "model": "m"},
            ]
        )
        ans = answerer.answer(QUESTION, HITS)
        assert (calls("busy"), calls("unknown")) == (2, 1)
        assert ans.model == "ok" and ans.fallback_reason == "busy: http 429; unknown: http 404"

    def test_every_route_failing_gives_the_extractive_answer(self, llm_url: str) -> None:  # noqa: F811
        seen = Recorder()
        answerer = routed(
            [
                {"name": "primary", "base_url": llm_url, "model": "slow", "timeout_seconds": 0.5},
                {"name": "secondary", "base_url": CLOSED, "model": "m"},
                {"name": "tertiary", "base_url": llm_url, "model": "broken"},
            ],
            observe=seen,
        )
        ans = answerer.answer(QUESTION, HITS)
        assert (ans.mode, ans.model, ans.fallback) == ("extractive", "extractive", "extractive")
        assert ans.fallback_reason == (
            "all models failed (primary: timeout; secondary: connection; tertiary: http 503)"
        )
        assert "rickets" in ans.text.lower() and ans.citations  # a real extractive answer
        assert (ans.prompt_tokens, ans.completion_tokens) == (0, 0)
        assert seen.fallbacks == [("extractive", "timeout")]

    def test_an_open_circuit_skips_the_route_until_its_reset_timeout(self, llm_url: str) -> None:  # noqa: F811
        _FakeChat.requests.clear()
        answerer = routed(
            [
                {"name": "primary", "base_url": llm_url, "model": "broken"},
                {"name": "secondary", "base_url": llm_url, "model": "m"},
            ],
            breaker=BreakerConfig(fail_max=2, reset_timeout_seconds=0.5),
        )
        reasons = [answerer.answer(QUESTION, HITS).fallback_reason for _ in range(4)]
        assert reasons == ["primary: http 503"] * 2 + ["primary: circuit open"] * 2
        assert calls("broken") == 2  # the open circuit made no call
        time.sleep(0.6)  # at least the reset timeout: one trial call (half-open), which fails
        assert answerer.answer(QUESTION, HITS).fallback_reason == "primary: http 503"
        assert calls("broken") == 3
        assert answerer.answer(QUESTION, HITS).fallback_reason == "primary: circuit open"

    def test_a_stream_falls_over_before_its_first_token(self, llm_url: str) -> None:  # noqa: F811
        answerer = routed(
            [
                {"name": "primary", "base_url": CLOSED, "model": "m"},
                {"name": "secondary", "base_url": llm_url, "model": "broken"},
                {"name": "tertiary", "base_url": llm_url, "model": "m"},
            ]
        )
        deltas, ans = drain(answerer.stream(QUESTION, HITS))
        assert deltas == ["Rickets", " [1]", "."]
        assert (ans.model, ans.fallback, ans.text) == ("tertiary", "next_model", "Rickets [1].")
        assert ans.fallback_reason == "primary: connection; secondary: http 503"
        assert (ans.prompt_tokens, ans.completion_tokens) == (40, 3)

    def test_a_stream_of_failed_routes_is_the_extractive_answer(self, llm_url: str) -> None:  # noqa: F811
        answerer = routed([{"name": "only", "base_url": CLOSED, "model": "m"}])
        deltas, ans = drain(answerer.stream(QUESTION, HITS))
        assert "".join(deltas).strip() == ans.text and "rickets" in ans.text.lower()
        assert (ans.mode, ans.fallback) == ("extractive", "extractive")
        assert ans.fallback_reason == "all models failed (only: connection)"

    def test_describe_failures(self) -> None:
        assert describe_failures([("a", "timeout"), ("b", "circuit_open")]) == (
            "a: timeout; b: circuit open"
        )


class TestGenerationConfig:
    def test_route_names_are_unique_and_keys_come_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        route = {"name": "a", "base_url": "http://x:1/v1", "model": "m"}
        with pytest.raises(ValueError, match="duplicate model route names"):
            GenerationConfig.model_validate({"models": [route, route]})
        with pytest.raises(ValueError):
            ModelRoute.model_validate({**route, "base_url": "ftp://x"})
        keyed = ModelRoute.model_validate({**route, "api_key_env": "RAG_TEST_ROUTE_KEY"})
        with pytest.raises(KeyError, match="RAG_TEST_ROUTE_KEY is not set"):
            build_routes([keyed], BreakerConfig(), max_tokens=8)
        monkeypatch.setenv("RAG_TEST_ROUTE_KEY", "sk-route")
        (built,) = build_routes([keyed], BreakerConfig(), max_tokens=8)
        assert built.answerer.api_key == "sk-route" and built.breaker.fail_max == 3
