"""Liveness, readiness (database, Redis, index) and the Prometheus endpoint."""

from __future__ import annotations

import gc
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rag_platform_tests.serving.conftest import TENANT_A, World
from rag_platform_tests.serving.factories import bearer, make_settings
from rag_platform_tests.serving.test_auth import assert_error
from serving.main import create_app

#: A port nothing listens on (TCP port 1 is reserved, connection refused at once).
CLOSED_PORT = 1


class TestHealth:
    def test_live(self, client: TestClient) -> None:
        r = client.get("/health/live")
        assert r.status_code == 200 and r.json() == {"status": "ok"}

    def test_ready_when_everything_is_up(self, client: TestClient) -> None:
        r = client.get("/health/ready")
        assert r.status_code == 200, r.text
        checks = r.json()["checks"]
        assert checks["database"]["status"] == "ok"
        assert checks["redis"]["status"] == "not_configured"
        assert checks["index"]["status"] == "ok"

    def test_metrics_count_requests_by_route_and_tenant(
        self, client: TestClient, world: World
    ) -> None:
        client.post("/v1/search", json={"query": "aspirin"}, headers=bearer(world.keys["a_reader"]))
        client.post("/v1/search", json={"query": "aspirin"}, headers=bearer(world.keys["a_reader"]))
        client.get("/v1/does-not-exist")
        text = client.get("/metrics").text
        assert (
            'rag_http_requests_total{method="POST",route="/v1/search",status="200",'
            f'tenant="{TENANT_A}"}}'
        ) in text
        assert 'route="<unmatched>"' in text  # unknown paths never become label values
        assert "/v1/does-not-exist" not in text
        assert 'rag_cache_requests_total{endpoint="search",result="hit"}' in text
        assert "rag_retrieval_search_seconds_bucket" in text
        assert "rag_query_embedding_seconds_bucket" in text

    def test_startup_objects_are_frozen_out_of_the_collector(self, client: TestClient) -> None:
        # a full collection over the loaded models would stall requests for ~300 ms
        assert gc.get_freeze_count() > 100_000

    def test_metrics_expose_query_log_backlog(self, client: TestClient) -> None:
        text = client.get("/metrics").text
        assert re.search(r"^rag_query_log_pending \d+\.\d+$", text, re.MULTILINE)

    def test_each_app_has_its_own_registry(self, client: TestClient, world: World) -> None:
        other = create_app(world.settings)
        assert other.state.metrics.registry is not client.app.state.metrics.registry  # type: ignore[attr-defined]


class TestReadinessFailures:
    def test_database_down_is_503_and_requests_get_503_not_500(self, fast_tmp: Path) -> None:
        settings = make_settings(
            fast_tmp, database_url=f"postgresql+psycopg://postgres@127.0.0.1:{CLOSED_PORT}/test"
        )
        with TestClient(create_app(settings)) as c:
            r = c.get("/health/ready")
            assert r.status_code == 503
            assert r.json()["status"] == "unavailable"
            assert r.json()["checks"]["database"]["status"] == "down"
            key = "rag_0123456789ab_" + "A" * 43
            assert_error(
                c.post("/v1/search", json={"query": "x"}, headers=bearer(key)),
                503,
                "database_unavailable",
            )
            assert c.get("/health/live").status_code == 200

    def test_redis_down_is_reported(self, fast_tmp: Path) -> None:
        settings = make_settings(fast_tmp, redis_url=f"redis://127.0.0.1:{CLOSED_PORT}/0")
        with TestClient(create_app(settings)) as c:
            r = c.get("/health/ready")
            assert r.status_code == 503
            assert r.json()["checks"]["redis"]["status"] == "down"
            assert r.json()["checks"]["database"]["status"] == "ok"

    def test_missing_published_shard_is_reported(self, fast_tmp: Path) -> None:
        registry = fast_tmp / "tenants.yaml"
        registry.write_text("tenants:\n  - id: initech\n")
        settings = make_settings(fast_tmp, tenants_file=registry)
        from rag_platform_tests.serving.factories import new_store

        store = new_store(settings)
        store.register_version("initech", "v1", str(fast_tmp / "gone"), 1, 1, "x")
        store.mark_version_built("initech", "v1")
        store.publish_version("initech", "v1")
        with TestClient(create_app(settings)) as c:
            r = c.get("/health/ready")
            assert r.status_code == 503
            assert r.json()["checks"]["index"]["status"] == "down"
            assert "initech" not in r.text  # unauthenticated: no tenant names
            _, key = store.create_api_key("initech", ["all"])
            assert_error(
                c.post("/v1/search", json={"query": "x"}, headers=bearer(key)),
                503,
                "index_unavailable",
            )
        store.dispose()


@pytest.mark.integration
class TestPostgresStore:
    def test_search_and_feedback_on_postgresql(self, fast_tmp: Path) -> None:
        from rag_platform_tests.serving.conftest import build_world
        from rag_platform_tests.utils.services import fresh_postgres_database, require_postgres

        require_postgres()
        with fresh_postgres_database() as url:
            w = build_world(fast_tmp, database_url=url)
            with TestClient(create_app(w.settings)) as c:
                assert c.get("/health/ready").status_code == 200
                r = c.post(
                    "/v1/search",
                    json={"query": w.hidden_doc.title},
                    headers=bearer(w.keys["a_reader"]),
                )
                assert r.status_code == 200
                assert w.hidden_chunk_id not in {h["chunk_id"] for h in r.json()["hits"]}
                fb = c.post(
                    "/v1/feedback",
                    json={"query_id": r.json()["query_id"], "rating": 5},
                    headers=bearer(w.keys["a_reader"]),
                )
                assert fb.status_code == 201
            w.store.dispose()
