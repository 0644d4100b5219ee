"""``POST /v1/query`` (JSON and Server-Sent Events) and ``POST /v1/feedback``."""

from __future__ import annotations

import json
import re

from fastapi.testclient import TestClient

from rag_platform_tests.serving.conftest import TENANT_A, World
from rag_platform_tests.serving.factories import bearer
from rag_platform_tests.serving.test_auth import assert_error


def parse_sse(text: str) -> list[tuple[str, dict[str, object]]]:
    events = []
    for block in text.strip().split("\n\n"):
        if block.startswith(":"):
            continue  # an SSE comment: a heartbeat
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((lines["event"], json.loads(lines["data"])))
    return events


class TestQuery:
    def test_answer_cites_visible_hits(self, client: TestClient, world: World) -> None:
        doc = world.docs[TENANT_A][4]
        r = client.post(
            "/v1/query",
            json={"query": doc.title, "top_k": 5},
            headers=bearer(world.keys["a_reader"]),
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["mode"] == "extractive" and body["answer"]
        hit_ids = {h["chunk_id"] for h in body["hits"]}
        assert body["citations"], "an answer from a matching abstract cites it"
        markers = {int(n) for n in re.findall(r"\[(\d+)\]", body["answer"])}
        assert markers == {c["index"] for c in body["citations"]}
        for c in body["citations"]:
            assert c["chunk_id"] in hit_ids
            assert {"doc_id", "title", "uri", "text", "page"} <= set(c)
        assert r.headers["X-Query-Id"] == body["query_id"]
        assert client.app.state.serving.flush_query_log()  # type: ignore[attr-defined]
        row = world.store.get_query(body["query_id"])
        assert row is not None
        assert row.cited_chunk_ids == list(dict.fromkeys(c["chunk_id"] for c in body["citations"]))
        assert row.hit_chunk_ids == [h["chunk_id"] for h in body["hits"]]

    def test_stream_sends_hits_deltas_citations_done(
        self, client: TestClient, world: World
    ) -> None:
        doc = world.docs[TENANT_A][9]
        r = client.post(
            "/v1/query",
            json={"query": doc.title, "top_k": 4, "stream": True},
            headers=bearer(world.keys["a_reader"]),
        )
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(r.text)
        names = [e for e, _ in events]
        assert names[0] == "hits" and names[-2:] == ["citations", "done"]
        assert "delta" in names
        deltas = "".join(str(d["text"]) for e, d in events if e == "delta")
        done = events[-1][1]
        assert deltas.strip() == str(done["answer"]).strip()
        assert done["query_id"] == r.headers["X-Query-Id"]
        hits = events[0][1]["hits"]
        assert len(hits) == 4  # type: ignore[arg-type]
        cited = {c["chunk_id"] for c in events[-2][1]["citations"]}  # type: ignore[union-attr]
        assert cited <= {h["chunk_id"] for h in hits}  # type: ignore[union-attr]
        assert client.app.state.serving.flush_query_log()  # type: ignore[attr-defined]
        row = world.store.get_query(str(done["query_id"]))
        assert row is not None and sorted(row.cited_chunk_ids) == sorted(cited)

    def test_accept_header_selects_the_stream(self, client: TestClient, world: World) -> None:
        r = client.post(
            "/v1/query",
            json={"query": "cancer risk"},
            headers={**bearer(world.keys["a_reader"]), "Accept": "text/event-stream"},
        )
        assert r.headers["content-type"].startswith("text/event-stream")
        assert parse_sse(r.text)[-1][0] == "done"

    def test_second_identical_query_is_served_from_cache(
        self, client: TestClient, world: World
    ) -> None:
        q = {"query": "  Insulin   RESISTANCE in obesity ", "top_k": 3}
        first = client.post("/v1/query", json=q, headers=bearer(world.keys["a_reader"])).json()
        q2 = {"query": "insulin resistance in obesity", "top_k": 3}
        second = client.post("/v1/query", json=q2, headers=bearer(world.keys["a_reader"])).json()
        assert first["cached"] is False and second["cached"] is True
        assert second["answer"] == first["answer"]
        assert second["query_id"] != first["query_id"]
        assert client.app.state.serving.flush_query_log()  # type: ignore[attr-defined]
        assert world.store.get_query(second["query_id"]).cache_hit is True  # type: ignore[union-attr]


class TestFeedback:
    def _query_id(self, client: TestClient, key: str) -> str:
        r = client.post("/v1/search", json={"query": "stem cells"}, headers=bearer(key))
        return str(r.json()["query_id"])

    def test_feedback_is_stored(self, client: TestClient, world: World) -> None:
        qid = self._query_id(client, world.keys["a_reader"])
        r = client.post(
            "/v1/feedback",
            json={"query_id": qid, "rating": 4, "type": "relevance", "comment": "good"},
            headers=bearer(world.keys["a_reader"]),
        )
        assert r.status_code == 201, r.text
        rows = world.store.list_feedback(TENANT_A, qid)
        assert [(f.feedback_id, f.rating, f.type) for f in rows] == [
            (r.json()["feedback_id"], 4, "relevance")
        ]

    def test_other_tenants_or_unknown_query_is_404(self, client: TestClient, world: World) -> None:
        qid = self._query_id(client, world.keys["b_reader"])
        body = {"query_id": qid, "rating": 1, "type": "other"}
        assert_error(
            client.post("/v1/feedback", json=body, headers=bearer(world.keys["a_reader"])),
            404,
            "query_not_found",
        )
        unknown = {**body, "query_id": "00000000-0000-0000-0000-000000000000"}
        assert_error(
            client.post("/v1/feedback", json=unknown, headers=bearer(world.keys["a_reader"])),
            404,
            "query_not_found",
        )

    def test_bad_rating_or_long_comment_is_422(self, client: TestClient, world: World) -> None:
        qid = self._query_id(client, world.keys["a_reader"])
        for body in (
            {"query_id": qid, "rating": 6},
            {"query_id": qid, "rating": 0},
            {"query_id": qid, "rating": 3, "comment": "c" * 2001},
            {"query_id": qid, "rating": 3, "type": "mood"},
        ):
            assert_error(
                client.post("/v1/feedback", json=body, headers=bearer(world.keys["a_reader"])),
                422,
                "validation_error",
            )
