"""Conversations and online experiments through the real API: real Edge shards, the real
metadata store (SQLite here, PostgreSQL in ``test_conversations_on_postgresql``), real PII
masking, a tenant registry declaring a retrieval experiment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from rag_platform.lib.experiments import bucket
from rag_platform_tests.serving.conftest import TENANT_A, TENANT_B, World, build_world
from rag_platform_tests.serving.factories import bearer, fast_home
from serving.main import create_app

EXPERIMENT = {
    "id": "fusion-test",
    "variants": [
        {"name": "dense", "share": 0.5, "retrieval": {"fusion": "dense"}},
        {"name": "sparse", "share": 0.5, "retrieval": {"fusion": "sparse"}},
    ],
}
FIRST = "Does vitamin D supplementation change bone mineral density?"


def _registry(home: Path) -> Path:
    path = home / "tenants.yaml"
    path.write_text(
        yaml.safe_dump({"tenants": [{"id": TENANT_A, "experiment": EXPERIMENT}, {"id": TENANT_B}]})
    )
    return path


@pytest.fixture(scope="module")
def conv_world() -> Iterator[World]:
    with fast_home() as home:
        w = build_world(home, tenants_file=_registry(home))
        yield w
        w.store.dispose()


@pytest.fixture(scope="module")
def api(conv_world: World) -> Iterator[TestClient]:
    with TestClient(create_app(conv_world.settings)) as c:
        yield c


def _conversation(api: TestClient, key: str) -> str:
    r = api.post("/v1/conversations", json={"title": "bones"}, headers=bearer(key))
    assert r.status_code == 201, r.text
    assert r.json()["messages"] == []
    return str(r.json()["conversation_id"])


def _ask(api: TestClient, key: str, cid: str, content: str, **kw: object) -> dict:
    r = api.post(
        f"/v1/conversations/{cid}/messages", json={"content": content, **kw}, headers=bearer(key)
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


class TestConversations:
    def test_follow_up_is_rewritten_retrieved_and_answered(
        self, api: TestClient, conv_world: World
    ) -> None:
        key = conv_world.keys["a_reader"]
        cid = _conversation(api, key)
        first = _ask(api, key, cid, FIRST, top_k=5)
        assert first["rewrite"] == "none" and first["standalone_question"] == FIRST
        assert first["hits"] and first["citations"]
        assert {c["chunk_id"] for c in first["citations"]} <= {h["chunk_id"] for h in first["hits"]}
        follow = _ask(api, key, cid, "And what about in older women?", top_k=5)
        assert follow["rewrite"] == "rule"
        assert (
            FIRST in follow["standalone_question"]
            and "older women" in follow["standalone_question"]
        )
        assert follow["hits"] and follow["query_id"] != first["query_id"]
        self_contained = _ask(api, key, cid, "Which genes regulate insulin secretion in mice?")
        assert self_contained["rewrite"] == "none"

        got = api.get(f"/v1/conversations/{cid}", headers=bearer(key))
        assert got.status_code == 200
        messages = got.json()["messages"]
        assert [(m["ordinal"], m["role"]) for m in messages] == [
            (i, "user" if i % 2 == 0 else "assistant") for i in range(6)
        ]
        assert messages[2]["standalone_question"] == follow["standalone_question"]
        assert messages[3]["content"] == follow["answer"]
        assert messages[3]["citations"] == [c["chunk_id"] for c in follow["citations"]]
        # each turn is one query-log row, as /v1/query writes, marked as a conversation
        assert api.app.state.serving.flush_query_log()  # type: ignore[attr-defined]
        row = conv_world.store.get_query(follow["query_id"])
        assert row is not None and row.endpoint == "conversation"
        assert row.question_masked == follow["standalone_question"]
        assert row.cited_chunk_ids == list(dict.fromkeys(messages[3]["citations"]))

    def test_stored_text_is_pii_masked(self, api: TestClient, conv_world: World) -> None:
        key = conv_world.keys["a_reader"]
        cid = _conversation(api, key)
        _ask(api, key, cid, "I am jane.roe@example.com; does vitamin D help bones?")
        stored = conv_world.store.conversations.get(TENANT_A, conv_world.key_ids["a_reader"], cid)
        assert "jane.roe@example.com" not in stored.messages[0].content
        assert "<EMAIL_ADDRESS>" in stored.messages[0].content
        assert "jane.roe@example.com" not in stored.messages[0].standalone

    def test_another_principal_or_tenant_gets_404(self, api: TestClient, conv_world: World) -> None:
        cid = _conversation(api, conv_world.keys["a_reader"])
        _ask(api, conv_world.keys["a_reader"], cid, FIRST)
        for other in ("a_secret", "a_admin", "b_reader"):
            h = bearer(conv_world.keys[other])
            for r in (
                api.get(f"/v1/conversations/{cid}", headers=h),
                api.post(f"/v1/conversations/{cid}/messages", json={"content": "hi?"}, headers=h),
                api.delete(f"/v1/conversations/{cid}", headers=h),
            ):
                assert r.status_code == 404, (other, r.text)
                assert r.json()["error"]["code"] == "conversation_not_found"
        unknown = api.get(
            "/v1/conversations/00000000-0000-0000-0000-000000000000",
            headers=bearer(conv_world.keys["a_reader"]),
        )
        assert (
            unknown.status_code == 404
            and unknown.json()["error"]["code"] == "conversation_not_found"
        )
        # nothing was appended by the refused message
        mine = api.get(f"/v1/conversations/{cid}", headers=bearer(conv_world.keys["a_reader"]))
        assert len(mine.json()["messages"]) == 2

    def test_delete_and_auth(self, api: TestClient, conv_world: World) -> None:
        key = conv_world.keys["a_reader"]
        cid = _conversation(api, key)
        _ask(api, key, cid, FIRST)
        assert api.delete(f"/v1/conversations/{cid}", headers=bearer(key)).status_code == 204
        assert api.get(f"/v1/conversations/{cid}", headers=bearer(key)).status_code == 404
        assert conv_world.store.conversations.count(TENANT_A, conv_world.key_ids["a_reader"]) >= 0
        assert api.post("/v1/conversations", json={}).status_code == 401
        blank = api.post(
            f"/v1/conversations/{_conversation(api, key)}/messages",
            json={"content": "   "},
            headers=bearer(key),
        )
        assert blank.status_code == 422


def _variant_of(world: World, name: str) -> str:
    return "dense" if bucket(TENANT_A, "fusion-test", world.key_ids[name]) < 0.5 else "sparse"


class TestExperiments:
    def test_each_principal_searches_with_its_variant_and_the_log_says_which(
        self, api: TestClient, conv_world: World
    ) -> None:
        # keys until both variants have one (the assignment is a hash of the key id)
        names: dict[str, str] = {}
        i = 0
        while len(names) < 2:
            name = f"exp{i}"
            conv_world.add_key(name, TENANT_A, ["all"])
            names.setdefault(_variant_of(conv_world, name), name)
            i += 1
        ids = {}
        for variant, name in names.items():
            r = api.post(
                "/v1/search",
                json={"query": "vitamin D bone density", "top_k": 5},
                headers=bearer(conv_world.keys[name]),
            )
            assert r.status_code == 200
            ids[variant] = (r.json()["query_id"], r.json()["hits"])
        # dense-only fusion returns cosine similarities (<= 1), sparse-only BM25 scores (> 1)
        assert max(h["score"] for h in ids["dense"][1]) <= 1.0
        assert max(h["score"] for h in ids["sparse"][1]) > 1.0
        assert api.app.state.serving.flush_query_log()  # type: ignore[attr-defined]
        for variant, (query_id, _) in ids.items():
            row = conv_world.store.get_query(query_id)
            assert row is not None
            assert (row.experiment, row.variant, row.endpoint) == ("fusion-test", variant, "search")

    def test_tenant_without_experiment_logs_no_variant(
        self, api: TestClient, conv_world: World
    ) -> None:
        r = api.post(
            "/v1/query",
            json={"query": "cancer cells", "top_k": 3},
            headers=bearer(conv_world.keys["b_reader"]),
        )
        assert r.status_code == 200
        assert api.app.state.serving.flush_query_log()  # type: ignore[attr-defined]
        row = conv_world.store.get_query(r.json()["query_id"])
        assert row is not None and (row.experiment, row.variant, row.endpoint) == ("", "", "query")


@pytest.mark.integration
def test_conversations_on_postgresql(tmp_path: Path) -> None:
    from rag_platform_tests.utils.services import fresh_postgres_database, require_postgres

    require_postgres()
    with fast_home() as home, fresh_postgres_database() as url:
        world = build_world(home, database_url=url, tenants_file=_registry(home))
        try:
            with TestClient(create_app(world.settings)) as api:
                key = world.keys["a_reader"]
                cid = _conversation(api, key)
                _ask(api, key, cid, FIRST)
                follow = _ask(api, key, cid, "Is it also true for children?")
                assert follow["rewrite"] == "rule"
                got = api.get(f"/v1/conversations/{cid}", headers=bearer(key)).json()
                assert len(got["messages"]) == 4
                other = api.get(f"/v1/conversations/{cid}", headers=bearer(world.keys["b_reader"]))
                assert other.status_code == 404
        finally:
            world.store.dispose()


def _jsonl(text: str) -> list[dict]:
    import json

    return [json.loads(line) for line in text.splitlines() if line.strip()]


class TestLifecycleAndReview:
    def test_exports_hold_the_principals_conversations(
        self, api: TestClient, conv_world: World
    ) -> None:
        key = conv_world.keys["a_reader"]
        cid = _conversation(api, key)
        _ask(api, key, cid, FIRST)
        admin = bearer(conv_world.keys["a_admin"])
        tenant = _jsonl(api.get("/v1/admin/export", headers=admin).text)
        exported = [r for r in tenant if r["type"] == "conversation"]
        assert cid in {r["conversation_id"] for r in exported}
        [mine] = [r for r in exported if r["conversation_id"] == cid]
        assert [m["role"] for m in mine["messages"]] == ["user", "assistant"]
        reader_id, secret_id = conv_world.key_ids["a_reader"], conv_world.key_ids["a_secret"]
        own = _jsonl(api.get(f"/v1/admin/principals/{reader_id}/export", headers=admin).text)
        assert cid in {r.get("conversation_id") for r in own if r["type"] == "conversation"}
        other = _jsonl(api.get(f"/v1/admin/principals/{secret_id}/export", headers=admin).text)
        assert not [r for r in other if r["type"] == "conversation"]

    def test_admin_reviews_candidates_of_its_tenant_only(
        self, api: TestClient, conv_world: World
    ) -> None:
        from rag_platform.lib.evaluation.candidates import CandidateCollector

        reader = bearer(conv_world.keys["a_reader"])
        # words of the indexed abstracts: the reader's experiment variant may be sparse-only
        # (the assignment hashes its random key id), and BM25 finds only words it has seen
        asked = api.post("/v1/query", json={"query": "vitamin D bone density"}, headers=reader)
        assert asked.status_code == 200
        r = api.post(
            "/v1/feedback",
            json={"query_id": asked.json()["query_id"], "rating": 1, "comment": "off topic"},
            headers=reader,
        )
        assert r.status_code == 201
        state = api.app.state.serving  # type: ignore[attr-defined]
        got = CandidateCollector(conv_world.store, state.backend).run(TENANT_A)
        assert got.added == 1
        admin = bearer(conv_world.keys["a_admin"])
        listed = api.get("/v1/admin/golden-candidates?status=pending", headers=admin).json()
        [candidate] = [c for c in listed["candidates"] if c["query_id"] == asked.json()["query_id"]]
        assert (candidate["rating"], candidate["comment"]) == (1, "off topic")
        assert [c["chunk_id"] for c in candidate["retrieved"]] == [
            h["chunk_id"] for h in asked.json()["hits"]
        ]
        cid = candidate["candidate_id"]
        assert api.get("/v1/admin/golden-candidates", headers=reader).status_code == 403
        other = bearer(conv_world.keys["b_admin"])
        refused = api.post(f"/v1/admin/golden-candidates/{cid}/reject", headers=other)
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "candidate_not_found"
        empty = api.post(f"/v1/admin/golden-candidates/{cid}/accept", json={}, headers=admin)
        assert empty.status_code == 422
        doc = asked.json()["hits"][0]["doc_id"]
        ok = api.post(
            f"/v1/admin/golden-candidates/{cid}/accept",
            json={"relevant_doc_ids": [doc]},
            headers=admin,
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["status"] == "accepted" and ok.json()["relevant_doc_ids"] == [doc]
        assert ok.json()["reviewer"] == f"key:{conv_world.key_ids['a_admin']}"
