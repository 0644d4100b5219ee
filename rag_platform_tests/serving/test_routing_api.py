"""``/v1/query`` with a tenant's model routes: ``model`` / ``fallback`` in the JSON answer and
the SSE ``done`` event, the fallback metrics, monthly token budgets (429 ``budget_exhausted``),
concurrent-stream limits (429 ``too_many_streams``) and heartbeats.

Endpoints are the scripted OpenAI-compatible server of ``lib/test_answer.py`` and a closed port;
``test_routing_llm.py`` does the same against real llama.cpp servers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from rag_platform.lib.store import QueryLogEntry
from rag_platform_tests.lib.test_answer import llm_url  # noqa: F401
from rag_platform_tests.serving.conftest import TENANT_A, TENANT_B, World, build_world
from rag_platform_tests.serving.factories import bearer, fast_home
from rag_platform_tests.serving.test_query import parse_sse
from serving.budgets import month_bounds
from serving.main import create_app
from serving.ratelimit import StreamLease

CLOSED = "http://127.0.0.1:9"


def write_registry(path: Path, generation: dict[str, dict[str, Any]]) -> None:
    tenants = [{"id": t, "generation": g} for t, g in generation.items()]
    path.write_text(yaml.safe_dump({"tenants": tenants}))


@pytest.fixture(scope="module")
def routed_world(llm_url: str) -> Iterator[World]:  # noqa: F811
    """acme: a dead primary, then the scripted model; globex: only dead routes, a budget."""
    with fast_home() as home:
        registry = home / "tenants.yaml"
        write_registry(
            registry,
            {
                TENANT_A: {
                    "models": [
                        {"name": "primary", "base_url": CLOSED, "model": "m", "max_retries": 0},
                        {"name": "secondary", "base_url": llm_url, "model": "m"},
                        {"name": "slow", "base_url": llm_url, "model": "slow-stream"},
                    ],
                    "breaker": {"fail_max": 2, "reset_timeout_seconds": 600},
                },
                TENANT_B: {
                    "models": [
                        {"name": "down", "base_url": CLOSED, "model": "m"},
                        {"name": "broken", "base_url": llm_url, "model": "broken"},
                    ],
                    "monthly_token_budget": 1000,
                },
            },
        )
        w = build_world(
            home, tenants_file=registry, max_streams_per_key=1, stream_heartbeat_seconds=0.2
        )
        yield w
        w.store.dispose()


@pytest.fixture(scope="module")
def client(routed_world: World) -> Iterator[TestClient]:
    with TestClient(create_app(routed_world.settings)) as c:
        yield c


def ask(client: TestClient, key: str, query: str, **extra: Any) -> Any:
    return client.post("/v1/query", json={"query": query, "top_k": 3, **extra}, headers=bearer(key))


class TestRoutedQuery:
    def test_a_dead_primary_falls_over_to_the_next_model(
        self, client: TestClient, routed_world: World
    ) -> None:
        doc = routed_world.docs[TENANT_A][4]
        r = ask(client, routed_world.keys["a_reader"], doc.title)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["mode"], body["model"], body["fallback"]) == ("llm", "secondary", "next_model")
        assert body["fallback_reason"] == "primary: connection"
        assert body["usage"] == {"prompt_tokens": 123, "completion_tokens": 17}
        # the breaker opens after 2 failures; then the primary is skipped without a call
        for i in range(2):  # (new questions: a cached answer would not ask the models)
            body = ask(client, routed_world.keys["a_reader"], f"{doc.title} {i}").json()
        assert body["fallback_reason"] == "primary: circuit open"
        metrics = client.get("/metrics").text
        assert re.search(
            r'rag_llm_fallbacks_total\{fallback="next_model",reason="connection",'
            r'tenant="acme"\} 2\.0',
            metrics,
        ), metrics
        assert 'rag_llm_request_seconds_count{model="secondary",outcome="ok"}' in metrics
        assert re.search(
            r'rag_llm_tokens_total\{kind="prompt",model="secondary",tenant="acme"\} \d', metrics
        )

    def test_the_stream_done_event_names_the_model(
        self, client: TestClient, routed_world: World
    ) -> None:
        doc = routed_world.docs[TENANT_A][5]
        r = ask(client, routed_world.keys["a_reader"], doc.title, stream=True)
        assert r.status_code == 200, r.text
        events = parse_sse(r.text)
        assert [e for e, _ in events] == ["hits", "delta", "delta", "delta", "citations", "done"]
        done = events[-1][1]
        assert (done["model"], done["fallback"], done["answer"]) == (
            "secondary",
            "next_model",
            "Rickets [1].",
        )
        assert done["usage"] == {"prompt_tokens": 40, "completion_tokens": 3}

    def test_every_model_failing_is_an_extractive_answer_not_an_error(
        self, client: TestClient, routed_world: World
    ) -> None:
        doc = routed_world.docs[TENANT_B][3]
        reasons = [
            "down: connection; broken: http 503",
            # each route failed its call and its retry, then the third failure opened it
            "down: circuit open; broken: circuit open",
        ]
        for reason in reasons:  # not cached: the second request tries the models again
            r = ask(client, routed_world.keys["b_reader"], doc.title)
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["mode"], body["model"], body["fallback"]) == (
                "extractive",
                "extractive",
                "extractive",
            )
            assert body["cached"] is False
            assert body["fallback_reason"] == f"all models failed ({reason})"
            assert body["answer"] and body["citations"]
        r = ask(client, routed_world.keys["b_reader"], doc.title, stream=True)
        done = parse_sse(r.text)[-1]
        assert done[0] == "done" and done[1]["fallback"] == "extractive"
        assert client.app.state.serving.flush_query_log()  # type: ignore[attr-defined]
        rows = routed_world.store.list_queries(TENANT_B)
        assert rows and {row.status_code for row in rows} == {200}


class TestBudgets:
    def test_month_bounds(self) -> None:
        assert month_bounds(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == (
            datetime(2026, 12, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
        )

    def test_an_exhausted_budget_is_a_429_until_the_month_ends(
        self, client: TestClient, routed_world: World
    ) -> None:
        w = routed_world  # globex: monthly_token_budget 1000 (acme: none)
        start, resets_at = month_bounds(datetime.now(UTC))
        # last month's spend does not count; this month's 600 + 300 + 200 does (log + event)
        w.store.log_queries(
            [
                QueryLogEntry(
                    tenant=TENANT_B, prompt_tokens=5000, created_at=start - timedelta(seconds=1)
                ),
                QueryLogEntry(tenant=TENANT_B, prompt_tokens=600, completion_tokens=300),
            ]
        )
        assert w.store.llm_tokens(TENANT_B, start) == 900
        budgets = client.app.state.serving.budgets  # type: ignore[attr-defined]
        budgets._memo.clear()
        doc = w.docs[TENANT_B][4]
        assert ask(client, w.keys["b_reader"], doc.title).status_code == 200  # 900 < 1000
        w.store.record_usage(TENANT_B, "llm_completion_tokens", 200)
        assert w.store.llm_tokens(TENANT_B, start) == 1100
        budgets._memo.clear()  # (the spend is re-read every 5 s)
        for stream in (False, True):
            r = ask(client, w.keys["b_reader"], doc.title + " later", stream=stream)
            assert r.status_code == 429, r.text
            err = r.json()["error"]
            assert err["code"] == "budget_exhausted"
            assert err["details"] == [
                {"budget": 1000, "used": 1100, "resets_at": resets_at.isoformat()}
            ]
            wait = (resets_at - datetime.now(UTC)).total_seconds()
            assert abs(int(r.headers["Retry-After"]) - wait) < 60
        # another tenant's budget is its own (acme has none)
        assert ask(client, w.keys["a_reader"], "vitamin budget").status_code == 200


class TestStreams:
    def test_a_key_over_its_concurrent_streams_gets_a_429(
        self, client: TestClient, routed_world: World
    ) -> None:
        state = client.app.state.serving  # type: ignore[attr-defined]
        held = state.streams.acquire(TENANT_A, routed_world.key_ids["a_reader"])
        assert isinstance(held, StreamLease)  # the key's one stream (max_streams_per_key=1)
        try:
            r = ask(client, routed_world.keys["a_reader"], "vitamin", stream=True)
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "too_many_streams"
            assert r.headers["Retry-After"] == "1"
            # JSON answers and other keys are not limited by it
            assert ask(client, routed_world.keys["a_reader"], "vitamin").status_code == 200
            other = ask(client, routed_world.keys["a_secret"], "vitamin", stream=True)
            assert other.status_code == 200
        finally:
            held.release()
        again = ask(client, routed_world.keys["a_reader"], "vitamin d", stream=True)
        assert again.status_code == 200
        assert state.streams.active(TENANT_A, routed_world.key_ids["a_reader"]) == (0, 0)

    def test_a_slow_first_token_gets_heartbeats(
        self, client: TestClient, routed_world: World
    ) -> None:
        from rag_platform_tests.lib.test_answer import _FakeChat

        state = client.app.state.serving  # type: ignore[attr-defined]
        # a tenant whose only route sends its first token after 1 s (heartbeats every 0.2 s)
        answerer = state.models.answerer_for(TENANT_A, state.tenants.generation(TENANT_A))
        routes = answerer.routes
        answerer.routes = [r for r in routes if r.name == "slow"]
        _FakeChat.slow_seconds = 1.0
        try:
            r = ask(client, routed_world.keys["a_admin"], "vitamin d deficiency", stream=True)
        finally:
            answerer.routes = routes
            _FakeChat.slow_seconds = 3.0
        assert r.status_code == 200
        blocks = r.text.strip().split("\n\n")
        assert blocks[0].startswith("event: hits")
        heartbeats = [b for b in blocks if b == ": heartbeat"]
        assert heartbeats, r.text[:500]
        assert parse_sse(r.text)[-1][1]["model"] == "slow"
