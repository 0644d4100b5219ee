"""``POST /v1/search`` against real shards of two tenants."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from rag_platform_tests.serving.conftest import TENANT_A, TENANT_B, World
from rag_platform_tests.serving.factories import (
    bearer,
    chunk_ids,
    make_settings,
    new_store,
    publish_tenant,
    scifact_docs,
)
from serving.main import create_app
from serving.querylog import QueryRecord
from serving.state import ServingState


class TestSearch:
    def test_returns_ranked_hits_of_own_tenant(self, client: TestClient, world: World) -> None:
        doc = world.docs[TENANT_A][5]
        r = client.post(
            "/v1/search",
            json={"query": doc.title, "top_k": 5},
            headers=bearer(world.keys["a_reader"]),
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["index_version"] == "v1"
        assert r.headers["X-Query-Id"] == body["query_id"]
        assert len(body["hits"]) == 5
        scores = [h["score"] for h in body["hits"]]
        assert scores == sorted(scores, reverse=True)
        # searching a document's own title finds it first
        assert body["hits"][0]["chunk_id"] == chunk_ids(TENANT_A, doc)[1]
        assert body["hits"][0]["title"] == doc.title
        assert {h["chunk_id"] for h in body["hits"]} <= world.chunk_ids_of(TENANT_A)
        for key in ("doc_id", "uri", "text", "heading_path", "page", "source_id"):
            assert key in body["hits"][0]
        assert body["timings"]["embed_ms"] > 0 and body["timings"]["search_ms"] > 0

    def test_acl_hides_document_and_still_returns_top_k(
        self, client: TestClient, world: World
    ) -> None:
        hidden = world.hidden_doc
        r = client.post(
            "/v1/search",
            json={"query": hidden.title, "top_k": 10},
            headers=bearer(world.keys["a_reader"]),
        )
        assert r.status_code == 200
        ids = [h["chunk_id"] for h in r.json()["hits"]]
        assert world.hidden_chunk_id not in ids
        assert len(ids) == 10  # filtered inside the index, so top_k visible hits come back
        r2 = client.post(
            "/v1/search",
            json={"query": hidden.title, "top_k": 10},
            headers=bearer(world.keys["a_secret"]),
        )
        assert r2.json()["hits"][0]["chunk_id"] == world.hidden_chunk_id

    def test_user_filters_restrict_hits(self, client: TestClient, world: World) -> None:
        wanted = [chunk_ids(TENANT_A, d) for d in world.docs[TENANT_A][3:6]]
        r = client.post(
            "/v1/search",
            json={
                "query": "cells",
                "top_k": 10,
                "filters": {"doc_ids": [doc_id for doc_id, _ in wanted]},
            },
            headers=bearer(world.keys["a_reader"]),
        )
        assert r.status_code == 200, r.text
        assert {h["chunk_id"] for h in r.json()["hits"]} == {c for _, c in wanted}

    def test_other_tenant_sees_only_its_documents(self, client: TestClient, world: World) -> None:
        doc = world.docs[TENANT_A][7]
        r = client.post(
            "/v1/search",
            json={"query": doc.title, "top_k": 20},
            headers=bearer(world.keys["b_reader"]),
        )
        assert r.status_code == 200
        ids = {h["chunk_id"] for h in r.json()["hits"]}
        assert ids and ids <= world.chunk_ids_of(TENANT_B)

    def test_query_is_logged_with_masked_question_and_hits(
        self, client: TestClient, world: World
    ) -> None:
        r = client.post(
            "/v1/search",
            json={"query": "vitamin D and bones, mail me at jane.doe@example.com"},
            headers=bearer(world.keys["a_reader"]),
        )
        assert r.status_code == 200
        body = r.json()
        assert client.app.state.serving.flush_query_log()  # type: ignore[attr-defined]
        row = world.store.get_query(body["query_id"])
        assert row is not None
        assert row.tenant == TENANT_A and row.key_id == world.key_ids["a_reader"]
        assert row.question_masked == "vitamin D and bones, mail me at <EMAIL_ADDRESS>"
        assert row.hit_chunk_ids == [h["chunk_id"] for h in body["hits"]]
        assert row.index_version == "v1" and row.status_code == 200 and row.top_k == 10
        assert row.filters["acl_groups"] == ["all"]
        assert row.latency_ms > 0 and row.search_ms > 0


class TestVersionSwitch:
    def test_publish_serves_new_version_without_restart_and_invalidates_cache(
        self, client: TestClient, world: World
    ) -> None:
        key = bearer(world.keys["b_reader"])
        query = {"query": "tumor suppressor genes", "top_k": 3}
        first = client.post("/v1/search", json=query, headers=key).json()
        again = client.post("/v1/search", json=query, headers=key).json()
        assert first["cached"] is False and again["cached"] is True
        assert again["hits"] == first["hits"]
        new_docs = scifact_docs(60, 30)
        publish_tenant(world.store, world.settings, TENANT_B, "v2", new_docs)
        time.sleep(1.1)  # the published-version look-up is reused for up to 1 s
        after = client.post("/v1/search", json=query, headers=key).json()
        assert after["index_version"] == "v2"
        assert after["cached"] is False
        v2_ids = {chunk_ids(TENANT_B, d)[1] for d in new_docs}
        assert {h["chunk_id"] for h in after["hits"]} <= v2_ids
        # the other tenant is untouched
        a = client.post("/v1/search", json=query, headers=bearer(world.keys["a_reader"])).json()
        assert a["index_version"] == "v1"
        world.docs[TENANT_B] = new_docs


class TestQueryLogSpool:
    def test_rows_survive_a_database_outage(self, fast_tmp: Path) -> None:
        down = make_settings(
            fast_tmp, database_url="postgresql+psycopg://postgres@127.0.0.1:1/test"
        )
        state = ServingState(down)
        record = QueryRecord(
            query_id=str(uuid.uuid4()),
            tenant=TENANT_A,
            key_id="k",
            question="call 212-555-0199 about aspirin",
            top_k=3,
            filters={},
        )
        state.log_query(record)  # connection refused: kept for retry, not raised
        assert state.flush_query_log(timeout=10) is False
        assert state.query_log.pending == 1
        # the database comes back (here: a working store) and the backlog is written
        up = make_settings(fast_tmp / "up")
        state.store = new_store(up)
        assert state.flush_query_log() is True and state.query_log.pending == 0
        row = state.store.get_query(record.query_id)
        assert row is not None and "212-555-0199" not in row.question_masked
        state.close()
        assert not (fast_tmp / "spool" / "query_log.jsonl").exists()
        state.store.dispose()

    def test_spool_is_written_to_disk_at_shutdown_if_still_down(self, fast_tmp: Path) -> None:
        down = make_settings(
            fast_tmp, database_url="postgresql+psycopg://postgres@127.0.0.1:1/test"
        )
        state = ServingState(down)
        state.log_query(
            QueryRecord(
                query_id=str(uuid.uuid4()),
                tenant=TENANT_A,
                key_id="k",
                question="q",
                top_k=1,
                filters={},
            )
        )
        state.close()
        lines = (fast_tmp / "spool" / "query_log.jsonl").read_text().splitlines()
        assert len(lines) == 1 and '"tenant": "acme"' in lines[0]


class TestShardOnlyOnCacheMiss:
    def test_cache_hit_needs_no_shard_and_a_miss_without_one_is_a_logged_503(
        self, fast_tmp: Path
    ) -> None:
        settings = make_settings(fast_tmp)
        store = new_store(settings)
        docs = scifact_docs(0, 20)
        publish_tenant(store, settings, TENANT_A, "v1", docs)
        _, key = store.create_api_key(TENANT_A, ["all"])
        with TestClient(create_app(settings)) as c:
            query = {"query": docs[0].title, "top_k": 3}
            first = c.post("/v1/search", json=query, headers=bearer(key)).json()
            state = c.app.state.serving  # type: ignore[attr-defined]
            state.backend.release_tenant(TENANT_A)  # close the idle shard...
            version = store.get_published_version(TENANT_A)
            assert version is not None
            shutil.rmtree(version.path)  # ...and delete it
            again = c.post("/v1/search", json=query, headers=bearer(key))
            assert again.status_code == 200 and again.json()["cached"] is True
            assert again.json()["hits"] == first["hits"]
            miss = c.post("/v1/search", json={"query": docs[1].title}, headers=bearer(key))
            assert miss.status_code == 503
            assert miss.json()["error"]["code"] == "index_unavailable"
            assert state.flush_query_log()
        statuses = sorted(row.status_code for row in store.list_queries(TENANT_A))
        assert statuses == [200, 200, 503]
        store.dispose()


class TestRegistryReload:
    def test_changed_tenants_file_applies_without_restart(self, fast_tmp: Path) -> None:
        registry = fast_tmp / "tenants.yaml"

        def write(fusion: str, entities: str) -> None:
            registry.write_text(
                f"tenants:\n  - id: {TENANT_A}\n    retrieval: {{fusion: {fusion}}}\n"
                f"    pii: {{entities: [{entities}]}}\n"
            )

        write("dense", "EMAIL_ADDRESS")
        settings = make_settings(fast_tmp, tenants_file=registry)
        store = new_store(settings)
        docs = scifact_docs(0, 20)
        publish_tenant(store, settings, TENANT_A, "v1", docs)
        _, key = store.create_api_key(TENANT_A, ["all"])
        question = f"{docs[3].title}, call 212-555-0199"

        def search() -> dict[str, Any]:
            r = c.post("/v1/search", json={"query": question, "top_k": 5}, headers=bearer(key))
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            assert state.flush_query_log()
            row = store.get_query(body["query_id"])
            assert row is not None
            body["logged_question"] = row.question_masked
            return body

        with TestClient(create_app(settings)) as c:
            state = c.app.state.serving  # type: ignore[attr-defined]
            dense = search()
            assert max(h["score"] for h in dense["hits"]) <= 1.0  # cosine similarities
            assert "212-555-0199" in dense["logged_question"]  # phone numbers not masked yet
            time.sleep(1.1)
            write("sparse", "PHONE_NUMBER")
            time.sleep(1.1)  # the file is checked at most once a second
            sparse = search()
            assert max(h["score"] for h in sparse["hits"]) > 1.0  # BM25 scores now
            assert "212-555-0199" not in sparse["logged_question"]
            registry.write_text("tenants: [{id: 'Not Valid!'}]\n")  # a broken edit...
            time.sleep(1.1)
            kept = search()  # ...keeps the previous registry serving
            assert kept["hits"] == sparse["hits"] and kept["cached"] is True
            assert "212-555-0199" not in kept["logged_question"]
        store.dispose()
