"""Redis killed (SIGKILL) while the API is under load.

Required: no 5xx; the cache turns off (answers are never served from it) and comes back by itself
when Redis does; rate limits keep being enforced, in process.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from rag_platform_tests.utils.load import SearchLoad, wrong_tenant_hits
from rag_platform_tests.utils.stack import (
    RATE_LIMIT_PER_KEY,
    FaultStack,
    load_queries,
    tenant_doc_ids,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def search(client: httpx.Client, url: str, key: str, query: str) -> httpx.Response:
    return client.post(
        f"{url}/v1/search",
        json={"query": query, "top_k": 3},
        headers={"Authorization": f"Bearer {key}"},
    )


def test_redis_killed_under_load(stack: FaultStack) -> None:
    url = stack.api.url
    key = stack.new_key("beta", "redis-probe")
    queries = load_queries()
    with httpx.Client(timeout=15) as client:
        # Redis is in use: a repeated query comes from its cache, limits count in it
        assert search(client, url, key, "redis cache probe").json()["cached"] is False
        assert search(client, url, key, "redis cache probe").json()["cached"] is True
        direct = redis.Redis(host="127.0.0.1", port=stack.redis.port)
        try:
            assert direct.keys("rag:q:*") and direct.keys("rag-limits*")
        finally:
            direct.close()

        with SearchLoad(url, stack.keys, queries, max_seconds=240) as load:
            load.wait_for(lambda r: r.status == 200, count=20, timeout=60)
            killed_at = time.monotonic()
            stack.redis.kill()
            try:
                load.wait_for(lambda r: r.sent > killed_at, count=40, timeout=60)
                # cache off: the same query twice, neither from a cache
                first = search(client, url, key, "cache off probe")
                second = search(client, url, key, "cache off probe")
                assert (first.status_code, second.status_code) == (200, 200)
                assert second.json()["cached"] is False
                # limits in process: a fresh key is refused after its per-key budget; the
                # probes go out together, so all of them fall in one window even when the load
                # threads slow every request down
                fresh = stack.new_key("beta", "limit-probe")
                with ThreadPoolExecutor(max_workers=8) as probes:
                    statuses = list(
                        probes.map(
                            lambda i: search(client, url, fresh, queries[i % len(queries)]),
                            range(RATE_LIMIT_PER_KEY + 1),
                        )
                    )
                ready = client.get(f"{url}/health/ready").json()
            finally:
                restarted_at = time.monotonic()
                stack.redis.start()
            # the cache comes back by itself once Redis does (after the breaker's cool-down)
            deadline = time.monotonic() + 60
            cached_again = False
            while not cached_again and time.monotonic() < deadline:
                cached_again = search(client, url, key, "cache back probe").json()["cached"]
                if not cached_again:
                    time.sleep(0.5)
    replies = load.replies

    assert not [r for r in replies if r.status == -1], "a request got no HTTP response"
    assert not [r.status for r in replies if r.status >= 500]
    assert {r.status for r in replies} == {200}
    # nothing came from the cache while Redis was dead (requests in flight at the kill aside)
    assert not [
        r for r in replies if killed_at + 0.5 < r.sent and r.done < restarted_at and r.cached
    ]
    assert wrong_tenant_hits(replies, {t: tenant_doc_ids(t) for t in stack.keys}) == 0
    codes = sorted(r.status_code for r in statuses)
    assert codes == [200] * RATE_LIMIT_PER_KEY + [429], codes
    [refused] = [r for r in statuses if r.status_code == 429]
    assert int(refused.headers["retry-after"]) >= 1
    assert ready["checks"]["redis"]["status"] == "down"
    assert ready["checks"]["database"]["status"] == "ok"
    assert cached_again, "the cache did not come back after Redis restarted"
