"""Model routing and streaming against real models: two llama.cpp servers (Qwen2.5 0.5B, see
``rag_platform_tests/utils/llm.py``) behind one tenant's model list.

- A client that hangs up mid-stream: the API closes its upstream request while the model is
  still generating (seen through a TCP proxy between the API and llama.cpp), the row is logged
  with status 499 and the tokens spent until then, and llama.cpp is free for the next request.
- The primary is killed mid-test: the secondary answers (JSON and streams), the primary's
  circuit opens; then the secondary is killed too and the extractive answer is served, flagged,
  with status 200.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
import yaml
from fastapi.testclient import TestClient

from rag_platform.lib.net import free_port
from rag_platform_tests.lib.test_llm_local import rows_until
from rag_platform_tests.serving.factories import (
    TcpProxy,
    bearer,
    fast_home,
    make_settings,
    new_store,
    publish_tenant,
    scifact_docs,
)
from rag_platform_tests.serving.test_query import parse_sse
from rag_platform_tests.utils.llm import MODEL_ALIAS, llama_server
from serving.main import create_app

pytestmark = pytest.mark.slow


@dataclass
class Llamas:
    """Two running llama.cpp servers; ``kill(i)`` terminates one."""

    urls: list[str]
    stacks: list[ExitStack]

    def kill(self, i: int) -> None:
        self.stacks[i].close()


@pytest.fixture(scope="module")
def llamas() -> Iterator[Llamas]:
    stacks = [ExitStack(), ExitStack()]
    try:
        urls = [stack.enter_context(llama_server()) for stack in stacks]
        yield Llamas(urls, stacks)
    finally:
        for stack in stacks:
            stack.close()


def route(name: str, url: str) -> dict[str, Any]:
    return {
        "name": name,
        "base_url": url,
        "model": MODEL_ALIAS,
        "timeout_seconds": 300,
        "max_retries": 0,
    }


def write_registry(path: Path, models: list[dict[str, Any]]) -> None:
    generation = {"models": models, "breaker": {"fail_max": 2, "reset_timeout_seconds": 600}}
    path.write_text(yaml.safe_dump({"tenants": [{"id": "acme", "generation": generation}]}))


def test_a_client_leaving_mid_stream_stops_the_generation(llamas: Llamas) -> None:
    upstream = urlsplit(llamas.urls[1])
    proxy = TcpProxy(upstream.hostname or "127.0.0.1", upstream.port or 80)
    max_tokens = 400
    with fast_home() as home:
        registry = home / "tenants.yaml"
        write_registry(registry, [route("proxied", f"http://127.0.0.1:{proxy.port}/v1")])
        settings = make_settings(home, tenants_file=registry, llm_max_tokens=max_tokens)
        store = new_store(settings)
        docs = scifact_docs(0, 30)
        publish_tenant(store, settings, "acme", "v1", docs)
        _, key = store.create_api_key("acme", ["all"])
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.1)
        try:
            body = {
                "query": "Explain in detail, step by step, everything these passages say about "
                + docs[7].title,
                "top_k": 3,
                "stream": True,
            }
            started = time.monotonic()
            with (
                httpx.Client(timeout=300) as client,
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
            left = time.monotonic()
            print(f"\nFIGURE first delta after {left - started:.1f} s")
            assert events == ["hits", "delta"]
            rows = rows_until(store, "acme", 1)
            assert [(row.query_id, row.status_code) for row in rows] == [(query_id, 499)]
            row = rows[0]
            # the tokens spent until the stop are logged: the prompt and a few completion tokens
            assert row.prompt_tokens > 100
            assert 0 < row.completion_tokens < max_tokens // 4, row.completion_tokens
            # the API closed its llama.cpp request before the answer's end ([DONE] never came)
            deadline = time.monotonic() + 30
            while not proxy.ended and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proxy.ended == ["client"], proxy.ended
            assert b"[DONE]" not in proxy.upstream_data
            streamed = proxy.upstream_data.count(b"data: ")
            assert streamed < max_tokens // 4, streamed
            # llama.cpp serves one request at a time: it answers at once, so it stopped
            t0 = time.monotonic()
            direct = httpx.post(
                f"{llamas.urls[1]}/chat/completions",
                json={
                    "model": MODEL_ALIAS,
                    "messages": [{"role": "user", "content": "Say yes."}],
                    "max_tokens": 1,
                },
                timeout=300,
            )
            assert direct.status_code == 200
            print(
                f"\nFIGURE disconnect: {streamed} SSE chunks relayed of max_tokens={max_tokens}; "
                f"logged completion_tokens={row.completion_tokens}; a 1-token request to "
                f"llama.cpp {time.monotonic() - left:.2f} s after the hang-up answered in "
                f"{time.monotonic() - t0:.2f} s"
            )
        finally:
            server.should_exit = True
            thread.join(timeout=60)
            proxy.stop()
        store.dispose()


def test_a_killed_primary_falls_over_to_the_secondary_then_to_extractive(
    llamas: Llamas,
) -> None:
    with fast_home() as home:
        registry = home / "tenants.yaml"
        write_registry(
            registry, [route("primary", llamas.urls[0]), route("secondary", llamas.urls[1])]
        )
        settings = make_settings(home, tenants_file=registry, llm_max_tokens=32)
        store = new_store(settings)
        docs = scifact_docs(0, 30)
        publish_tenant(store, settings, "acme", "v1", docs)
        _, key = store.create_api_key("acme", ["all"])

        def ask(i: int, **extra: Any) -> tuple[Any, float]:
            t0 = time.monotonic()
            r = c.post(
                "/v1/query",
                json={"query": docs[i].title, "top_k": 3, **extra},
                headers=bearer(key),
            )
            assert r.status_code == 200, r.text
            took = time.monotonic() - t0
            return (parse_sse(r.text)[-1][1] if extra.get("stream") else r.json()), took

        with TestClient(create_app(settings)) as c:
            before, took_before = ask(1)
            assert (before["model"], before["fallback"], before["mode"]) == (
                "primary",
                None,
                "llm",
            )
            llamas.kill(0)
            killed = time.monotonic()
            after, took_after = ask(2)
            fell_over = time.monotonic() - killed
            assert (after["model"], after["fallback"], after["mode"]) == (
                "secondary",
                "next_model",
                "llm",
            )
            assert after["fallback_reason"] == "primary: connection"
            assert after["usage"]["completion_tokens"] > 0
            # a stream whose first model is dead falls over before its first token
            streamed, _ = ask(3, stream=True)
            assert (streamed["model"], streamed["fallback"]) == ("secondary", "next_model")
            assert streamed["answer"].strip() and streamed["usage"]["completion_tokens"] > 0
            # two failures opened the primary's circuit: no more calls to it
            skipped, took_skipped = ask(4)
            assert skipped["model"] == "secondary"
            assert skipped["fallback_reason"] == "primary: circuit open"
            llamas.kill(1)
            last, took_last = ask(5)
            assert (last["model"], last["fallback"], last["mode"]) == (
                "extractive",
                "extractive",
                "extractive",
            )
            assert last["fallback_reason"] == (
                "all models failed (primary: circuit open; secondary: connection)"
            )
            assert last["answer"] and last["citations"]
            metrics = c.get("/metrics").text
            assert c.app.state.serving.flush_query_log()  # type: ignore[attr-defined]
        rows = store.list_queries("acme")
        assert len(rows) == 5 and {row.status_code for row in rows} == {200}
        print(
            f"\nFIGURE failover: first answer after killing the primary {fell_over:.2f} s "
            f"(a healthy answer took {took_before:.2f} s); with its circuit open "
            f"{took_skipped:.2f} s; extractive after both killed {took_last:.2f} s"
        )
        assert 'rag_llm_fallbacks_total{fallback="extractive",reason="circuit_open"' in metrics
        store.dispose()
