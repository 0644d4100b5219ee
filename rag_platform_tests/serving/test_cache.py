"""The query cache: keys, in-process TTL cache, real Redis, Redis down."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from rag_platform.lib.models import SearchFilters
from rag_platform.lib.tenants import RetrievalSettings
from rag_platform_tests.serving.conftest import build_world
from rag_platform_tests.serving.factories import bearer
from rag_platform_tests.utils.services import require_redis
from serving.cache import MemoryQueryCache, RedisQueryCache, cache_key, normalise_query
from serving.main import create_app

CLOSED_REDIS = "redis://127.0.0.1:1/0"


def key(**overrides: object) -> str:
    args: dict[str, object] = {
        "endpoint": "search",
        "tenant": "acme",
        "index_version": "v1",
        "query": "Vitamin D",
        "filters": SearchFilters(acl_groups=("a", "b")),
        "top_k": 10,
        "retrieval": RetrievalSettings().model_dump_json(),
    }
    args.update(overrides)
    return cache_key(**args)  # type: ignore[arg-type]


class TestCacheKey:
    def test_normalisation(self) -> None:
        assert normalise_query("  Vitamin\n\tD  ") == "vitamin d"
        assert key(query="  VITAMIN   d ") == key()

    def test_groups_order_does_not_matter_but_groups_do(self) -> None:
        assert key(filters=SearchFilters(acl_groups=("b", "a"))) == key()
        assert key(filters=SearchFilters(acl_groups=("a",))) != key()

    def test_a_comma_inside_a_group_name_is_not_a_separator(self) -> None:
        one_group = key(filters=SearchFilters(acl_groups=("a,b",)))
        assert one_group != key(filters=SearchFilters(acl_groups=("a", "b")))
        ids = SearchFilters(acl_groups=("a",), doc_ids=("d1,d2",))
        assert key(filters=ids) != key(
            filters=SearchFilters(acl_groups=("a",), doc_ids=("d1", "d2"))
        )
        # nor a separator of the filters' old string form ("|g=")
        assert key(filters=SearchFilters(acl_groups=("a|s=x",))) != key(
            filters=SearchFilters(acl_groups=("a",), source_ids=("x",))
        )

    @pytest.mark.parametrize(
        "change",
        [
            {"tenant": "globex"},
            {"index_version": "v2"},
            {"top_k": 5},
            {"endpoint": "query"},
            {"query": "vitamin E"},
            {"retrieval": RetrievalSettings(fusion="rrf").model_dump_json()},
            {"filters": SearchFilters(acl_groups=("a", "b"), doc_ids=("d1",))},
            {
                "filters": SearchFilters(
                    acl_groups=("a", "b"), updated_after=datetime(2024, 1, 1, tzinfo=UTC)
                )
            },
        ],
    )
    def test_every_input_changes_the_key(self, change: dict[str, object]) -> None:
        assert key(**change) != key()


class TestMemoryQueryCache:
    def test_set_get_and_expiry(self) -> None:
        cache = MemoryQueryCache(ttl_seconds=1)
        cache.set("k", {"hits": [1]})
        assert cache.get("k") == {"hits": [1]}
        time.sleep(1.1)
        assert cache.get("k") is None

    def test_ttl_zero_disables(self) -> None:
        cache = MemoryQueryCache(ttl_seconds=0)
        cache.set("k", {"a": 1})
        assert cache.get("k") is None


class TestRedisQueryCache:
    def test_round_trip_with_ttl(self) -> None:
        url = require_redis()
        cache = RedisQueryCache(url, ttl_seconds=30)
        k = "rag:q:test-" + str(time.time_ns())
        cache.set(k, {"hits": ["x"]})
        assert cache.get(k) == {"hits": ["x"]}
        ttl = redis.Redis.from_url(url).ttl(k)
        assert 0 < ttl <= 30
        cache.close()

    def test_redis_down_is_a_miss_with_cooldown(self) -> None:
        cache = RedisQueryCache(CLOSED_REDIS, ttl_seconds=30, cooldown_seconds=0.5)
        t0 = time.perf_counter()
        cache.set("k", {"a": 1})
        assert cache.get("k") is None
        assert not cache.available  # cooling down: Redis is not called again
        assert time.perf_counter() - t0 < 1.0
        time.sleep(0.6)
        assert cache.available
        assert not cache.ping()


class TestCacheInTheApp:
    @pytest.mark.integration
    def test_redis_cache_serves_second_request(self, fast_tmp: Path) -> None:
        url = require_redis()
        redis.Redis.from_url(url).flushdb()
        w = build_world(fast_tmp, redis_url=url)
        with TestClient(create_app(w.settings)) as c:
            assert c.app.state.serving.cache.backend == "redis"  # type: ignore[attr-defined]
            q = {"query": "obesity and diabetes", "top_k": 4}
            first = c.post("/v1/search", json=q, headers=bearer(w.keys["a_reader"])).json()
            second = c.post("/v1/search", json=q, headers=bearer(w.keys["a_reader"])).json()
            assert (first["cached"], second["cached"]) == (False, True)
            assert second["hits"] == first["hits"]
            assert any(k.startswith(b"rag:q:") for k in redis.Redis.from_url(url).keys("rag:q:*"))
            # a principal with other groups does not share the entry
            other = c.post("/v1/search", json=q, headers=bearer(w.keys["a_secret"])).json()
            assert other["cached"] is False
        w.store.dispose()

    def test_redis_down_never_fails_a_request(self, fast_tmp: Path) -> None:
        w = build_world(fast_tmp, redis_url=CLOSED_REDIS)
        with TestClient(create_app(w.settings)) as c:
            for _ in range(3):
                r = c.post(
                    "/v1/search", json={"query": "malaria"}, headers=bearer(w.keys["a_reader"])
                )
                assert r.status_code == 200
                assert r.json()["cached"] is False
            r = c.post("/v1/query", json={"query": "malaria"}, headers=bearer(w.keys["a_reader"]))
            assert r.status_code == 200
        w.store.dispose()
