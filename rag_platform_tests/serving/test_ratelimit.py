"""Rate limits per key and per tenant: in process, on real Redis, and with Redis failing."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from rag_platform_tests.serving.conftest import TENANT_A, build_world
from rag_platform_tests.serving.factories import TcpProxy, bearer
from rag_platform_tests.serving.test_auth import assert_error
from rag_platform_tests.utils.services import (
    REDIS_HOST,
    REDIS_PORT,
    REDIS_TEST_DB,
    require_redis,
)
from serving.main import create_app
from serving.ratelimit import RateLimiter, StreamLease, StreamSlots

CLOSED_REDIS = "redis://127.0.0.1:1/0"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class TestRateLimiter:
    def test_per_key_limit(self) -> None:
        limiter = RateLimiter("3/minute", "100/minute")
        decisions = [limiter.check("t", "k1") for _ in range(4)]
        assert [d.allowed for d in decisions] == [True, True, True, False]
        assert decisions[-1].scope == "key" and 1 <= decisions[-1].retry_after <= 60
        assert limiter.check("t", "k2").allowed  # another key has its own budget

    def test_per_tenant_limit_spans_keys(self) -> None:
        limiter = RateLimiter("100/minute", "3/minute")
        allowed = [limiter.check("t", f"k{i}").allowed for i in range(4)]
        assert allowed == [True, True, True, False]
        assert limiter.check("t", "k9").scope == "tenant"
        assert limiter.check("other", "k9").allowed

    def test_bad_rate_string_is_refused(self) -> None:
        with pytest.raises(ValueError):
            RateLimiter("lots", "10/minute")

    @pytest.mark.integration
    def test_redis_storage_is_shared_between_limiters(self) -> None:
        url = require_redis()
        tenant, k = unique("t"), unique("k")
        a = RateLimiter("3/minute", "100/minute", redis_url=url)
        b = RateLimiter("3/minute", "100/minute", redis_url=url)  # another "process"
        assert a.backend == "redis"
        assert [
            a.check(tenant, k).allowed,
            b.check(tenant, k).allowed,
            a.check(tenant, k).allowed,
        ] == [True, True, True]
        refused = b.check(tenant, k)
        assert not refused.allowed and refused.backend == "redis"
        assert redis.Redis.from_url(url).keys("rag-limits*")

    def test_redis_down_falls_back_to_in_process_limits(self) -> None:
        limiter = RateLimiter("2/minute", "100/minute", redis_url=CLOSED_REDIS, cooldown_seconds=30)
        decisions = [limiter.check("t", "k") for _ in range(3)]
        assert [d.allowed for d in decisions] == [True, True, False]
        assert {d.backend for d in decisions} == {"memory-fallback"}
        assert limiter.backend == "memory-fallback"


class TestRateLimitsInTheApp:
    def test_429_shape_retry_after_and_metric(self, fast_tmp: Path) -> None:
        w = build_world(fast_tmp, rate_limit_per_key="2/minute")
        with TestClient(create_app(w.settings)) as c:
            key = bearer(w.keys["a_reader"])
            codes = [
                c.post("/v1/search", json={"query": "q"}, headers=key).status_code for _ in range(3)
            ]
            assert codes == [200, 200, 429]
            r = c.post("/v1/search", json={"query": "q"}, headers=key)
            err = assert_error(r, 429, "rate_limited")
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            assert err["details"][0]["scope"] == "key"  # type: ignore[index]
            # another key of the same tenant still has budget
            assert (
                c.post(
                    "/v1/search", json={"query": "q"}, headers=bearer(w.keys["a_secret"])
                ).status_code
                == 200
            )
            metrics = c.get("/metrics").text
            assert f'rag_rate_limited_total{{scope="key",tenant="{TENANT_A}"}} 2.0' in metrics
        w.store.dispose()

    @pytest.mark.integration
    def test_redis_limits_then_redis_dies_limits_still_hold(self, fast_tmp: Path) -> None:
        require_redis()
        proxy = TcpProxy(REDIS_HOST, REDIS_PORT)
        url = f"redis://127.0.0.1:{proxy.port}/{REDIS_TEST_DB}"
        w = build_world(fast_tmp, redis_url=url, rate_limit_per_key="3/minute")
        try:
            with TestClient(create_app(w.settings)) as c:
                state = c.app.state.serving  # type: ignore[attr-defined]
                key = bearer(w.keys["a_reader"])
                assert c.post("/v1/search", json={"query": "q"}, headers=key).status_code == 200
                assert state.limiter.backend == "redis"
                proxy.stop()  # Redis is gone for this app: resets, then refused connections
                codes = [
                    c.post("/v1/search", json={"query": "q"}, headers=key).status_code
                    for _ in range(4)
                ]
                assert 500 not in codes and 503 not in codes
                # the in-process window starts afresh and still enforces 3/minute
                assert codes == [200, 200, 200, 429]
                assert state.limiter.backend == "memory-fallback"
                ready = c.get("/health/ready")
                assert ready.status_code == 503
                assert ready.json()["checks"]["redis"]["status"] == "down"
        finally:
            proxy.stop()
            w.store.dispose()


class TestStreamSlots:
    def test_in_process_slots_per_key_and_per_tenant(self) -> None:
        slots = StreamSlots(per_key=2, per_tenant=3)
        a1, a2, a3 = (slots.acquire("t", "a") for _ in range(3))
        assert isinstance(a1, StreamLease) and isinstance(a2, StreamLease)
        assert not isinstance(a3, StreamLease) and a3.scope == "streams_per_key"
        b1, b2 = slots.acquire("t", "b"), slots.acquire("t", "b")
        assert isinstance(b1, StreamLease)
        assert not isinstance(b2, StreamLease) and b2.scope == "streams_per_tenant"
        assert isinstance(slots.acquire("other", "c"), StreamLease)  # another tenant
        a1.release()
        a1.release()  # idempotent: frees one slot only
        assert slots.active("t", "a") == (1, 2)
        assert isinstance(slots.acquire("t", "b"), StreamLease)

    @pytest.mark.integration
    def test_redis_slots_are_shared_between_processes_and_expire(self) -> None:
        url = require_redis()
        prefix = unique("rag-streams-test")
        a = StreamSlots(1, 10, url, lease_seconds=0.5, key_prefix=prefix)
        b = StreamSlots(1, 10, url, lease_seconds=0.5, key_prefix=prefix)  # another process
        held = a.acquire("t", "k")
        assert isinstance(held, StreamLease) and held.backend == "redis"
        refused = b.acquire("t", "k")
        assert not isinstance(refused, StreamLease) and refused.backend == "redis"
        held.release()
        again = b.acquire("t", "k")
        assert isinstance(again, StreamLease)
        # a process that dies holding a slot: its lease runs out unrenewed
        time.sleep(0.6)
        assert b.active("t", "k") == (0, 0)
        assert isinstance(a.acquire("t", "k"), StreamLease)
        client = redis.Redis.from_url(url)
        client.delete(f"{prefix}:key:k", f"{prefix}:tenant:t")
        client.close()
        a.close()
        b.close()

    def test_redis_down_counts_in_process(self) -> None:
        slots = StreamSlots(1, 10, CLOSED_REDIS)
        held = slots.acquire("t", "k")
        assert isinstance(held, StreamLease) and held.backend == "memory"
        refused = slots.acquire("t", "k")
        assert not isinstance(refused, StreamLease) and refused.scope == "streams_per_key"
        held.release()
        assert isinstance(slots.acquire("t", "k"), StreamLease)
