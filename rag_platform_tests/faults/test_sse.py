"""Clients that disconnect in the middle of a streamed (Server-Sent Events) answer.

The answers come from a real local LLM token by token (see ``faults/conftest.py``), so the
clients leave while the stream is still being generated. Required: the server answers the next
requests normally, records no 5xx and logs no unhandled exception, and the disconnected
queries are still in the query log.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from rag_platform_tests.utils.stack import FaultStack

pytestmark = [pytest.mark.slow, pytest.mark.integration]

QUESTION = "What is the role of microRNAs in cancer?"


def test_sse_clients_that_disconnect_mid_stream(stack: FaultStack) -> None:
    url = stack.api.url
    headers = {"Authorization": f"Bearer {stack.new_key('alpha', 'sse')}"}
    body = {"query": QUESTION, "top_k": 3, "stream": True}
    left: list[str] = []
    with httpx.Client(timeout=60) as client:
        for _ in range(3):
            with client.stream("POST", f"{url}/v1/query", json=body, headers=headers) as r:
                assert r.status_code == 200
                left.append(r.headers["x-query-id"])
                events = []
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        events.append(line.removeprefix("event: "))
                    if "delta" in events:
                        break  # leave mid-answer: the connection closes with the block
            assert events[0] == "hits" and "done" not in events
        # a client that leaves before reading anything
        with client.stream("POST", f"{url}/v1/query", json=body, headers=headers) as r:
            assert r.status_code == 200
            left.append(r.headers["x-query-id"])

        # the next stream is complete
        with client.stream("POST", f"{url}/v1/query", json=body, headers=headers) as r:
            events = [ln.removeprefix("event: ") for ln in r.iter_lines() if ln.startswith("event")]
        assert events[0] == "hits" and events[-1] == "done" and "error" not in events
        search = client.post(f"{url}/v1/search", json={"query": QUESTION}, headers=headers)
        assert search.status_code == 200
        metrics = client.get(f"{url}/metrics").text

    # (other tests of the package share the server: only this test's routes count)
    assert not re.search(r'route="/v1/(query|search)",status="5\d\d",tenant="alpha"', metrics)
    log = stack.api.log_tail(200_000)
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    deadline = time.monotonic() + 60
    missing = set(left)
    while missing and time.monotonic() < deadline:
        missing = {q for q in missing if stack.store.get_query(q) is None}
        if missing:
            time.sleep(0.5)
    assert not missing, f"{len(missing)} of {len(left)} disconnected queries not in the query log"
