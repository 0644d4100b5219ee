"""API keys, roles and the one error shape (401, 403, 400, 404, 405, 413, 422, 500)."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from rag_platform_tests.serving.conftest import TENANT_A, World
from rag_platform_tests.serving.factories import bearer
from serving.observability import json_formatter, request_id_filter


def assert_error(r: object, status: int, code: str) -> dict[str, object]:
    """Asserts the common error shape and returns the ``error`` object."""
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    body = r.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"code", "message", "request_id", "details"}
    assert err["code"] == code
    assert err["message"] and isinstance(err["details"], list)
    assert err["request_id"] == r.headers["x-request-id"]  # type: ignore[attr-defined]
    assert "Traceback" not in err["message"]
    return err  # type: ignore[no-any-return]


SEARCH = {"query": "vitamin D deficiency"}


class TestAuthentication:
    @pytest.mark.parametrize(
        ("headers", "code"),
        [
            ({}, "missing_api_key"),
            ({"Authorization": "Basic dXNlcjpwYXNz"}, "invalid_api_key"),
            ({"Authorization": "Bearer"}, "invalid_api_key"),
            ({"Authorization": "Bearer not-a-key"}, "invalid_api_key"),
            ({"Authorization": "Bearer rag_0123456789ab_" + "x" * 43}, "invalid_api_key"),
        ],
    )
    def test_missing_malformed_or_unknown_key_is_401(
        self, client: TestClient, headers: dict[str, str], code: str
    ) -> None:
        r = client.post("/v1/search", json=SEARCH, headers=headers)
        assert_error(r, 401, code)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")

    def test_wrong_secret_of_a_real_key_id_is_401(self, client: TestClient, world: World) -> None:
        key = world.keys["a_reader"]
        forged = key[: key.rindex("_") + 1] + "A" * 43
        assert_error(
            client.post("/v1/search", json=SEARCH, headers=bearer(forged)), 401, "invalid_api_key"
        )

    def test_revoked_key_is_401_on_next_request(self, client: TestClient, world: World) -> None:
        key = world.add_key("to_revoke", TENANT_A, ["all"])
        assert client.post("/v1/search", json=SEARCH, headers=bearer(key)).status_code == 200
        world.store.revoke_api_key(world.key_ids["to_revoke"], actor="test")
        assert_error(
            client.post("/v1/search", json=SEARCH, headers=bearer(key)), 401, "invalid_api_key"
        )

    def test_expired_key_is_401(self, client: TestClient, world: World) -> None:
        info, key = world.store.create_api_key(
            TENANT_A, ["all"], expires_at=datetime.now(UTC) + timedelta(seconds=1), actor="test"
        )
        assert client.post("/v1/search", json=SEARCH, headers=bearer(key)).status_code == 200
        time.sleep(1.2)
        assert_error(
            client.post("/v1/search", json=SEARCH, headers=bearer(key)), 401, "invalid_api_key"
        )

    def test_reader_on_admin_endpoint_is_403(self, client: TestClient, world: World) -> None:
        r = client.get("/v1/admin/keys", headers=bearer(world.keys["a_reader"]))
        assert_error(r, 403, "forbidden")

    def test_tenant_cannot_be_chosen_by_the_client(self, client: TestClient, world: World) -> None:
        r = client.post(
            "/v1/search",
            json={**SEARCH, "tenant": "globex"},
            headers=bearer(world.keys["a_reader"]),
        )
        assert_error(r, 422, "validation_error")
        r = client.post(
            "/v1/search",
            json=SEARCH,
            headers={**bearer(world.keys["a_reader"]), "X-Tenant": "globex"},
        )
        assert r.status_code == 200
        assert {h["chunk_id"] for h in r.json()["hits"]} <= world.chunk_ids_of(TENANT_A)


class TestErrorShape:
    @pytest.mark.parametrize(
        "body",
        [
            {"query": ""},
            {"query": "   \n\t "},
            {"query": "x" * 2001},
            {"query": "ok", "top_k": 0},
            {"query": "ok", "top_k": 101},
            {"query": "ok", "top_k": "ten"},
            {"query": "ok", "filters": {"source_ids": [""]}},
            {"query": "ok", "filters": {"unknown": 1}},
            {
                "query": "ok",
                "filters": {
                    "updated_after": "2024-02-01T00:00:00Z",
                    "updated_before": "2024-01-01T00:00:00Z",
                },
            },
            {},
            [],
        ],
    )
    def test_invalid_body_is_422(self, client: TestClient, world: World, body: object) -> None:
        r = client.post("/v1/search", json=body, headers=bearer(world.keys["a_reader"]))
        err = assert_error(r, 422, "validation_error")
        assert err["details"], "field errors are listed"
        assert all({"loc", "type", "msg"} <= set(d) for d in err["details"])  # type: ignore[union-attr]

    def test_malformed_json_is_400(self, client: TestClient, world: World) -> None:
        r = client.post(
            "/v1/search",
            content=b'{"query": "x",',
            headers={**bearer(world.keys["a_reader"]), "Content-Type": "application/json"},
        )
        assert_error(r, 400, "malformed_json")

    def test_unknown_route_is_404_and_wrong_method_405(self, client: TestClient) -> None:
        assert_error(client.get("/v1/nope"), 404, "not_found")
        assert_error(client.get("/v1/search"), 405, "method_not_allowed")

    def test_body_over_limit_is_413_before_parsing(self, client: TestClient, world: World) -> None:
        limit = world.settings.max_request_bytes
        big = json.dumps({"query": "x" * (limit + 10)}).encode()
        # no key at all: the size check runs before authentication and parsing
        assert_error(
            client.post("/v1/search", content=big, headers={"Content-Type": "application/json"}),
            413,
            "request_too_large",
        )

    def test_chunked_body_over_limit_is_413(self, client: TestClient, world: World) -> None:
        limit = world.settings.max_request_bytes

        def chunks() -> Iterator[bytes]:
            yield b'{"query": "'
            for _ in range(limit // 1000 + 2):
                yield b"y" * 1000
            yield b'"}'

        r = client.post(
            "/v1/search",
            content=chunks(),
            headers={**bearer(world.keys["a_reader"]), "Content-Type": "application/json"},
        )
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert_error(r, 413, "request_too_large")

    def test_body_under_limit_passes(self, client: TestClient, world: World) -> None:
        body = json.dumps({"query": "z" * 1999}).encode()
        r = client.post(
            "/v1/search",
            content=body,
            headers={**bearer(world.keys["a_reader"]), "Content-Type": "application/json"},
        )
        assert r.status_code == 200, r.text

    def test_request_id_is_echoed(self, client: TestClient) -> None:
        r = client.get("/health/live", headers={"X-Request-Id": "abc-123"})
        assert r.headers["X-Request-Id"] == "abc-123"
        bad = client.get("/health/live", headers={"X-Request-Id": "bad id with spaces"})
        assert bad.headers["X-Request-Id"] != "bad id with spaces"


class TestLogging:
    def test_logs_are_json_and_never_hold_the_key_or_the_question(
        self, client: TestClient, world: World
    ) -> None:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(json_formatter())
        handler.addFilter(request_id_filter())
        logger = logging.getLogger("serving")
        logger.addHandler(handler)
        try:
            question = "secret question about jane.doe@example.com"
            key = world.keys["a_reader"]
            client.post("/v1/search", json={"query": question}, headers=bearer(key))
            client.post("/v1/search", json={"query": question}, headers=bearer(key[:-3] + "zzz"))
            client.post("/v1/nope", json={"query": question}, headers=bearer(key))
        finally:
            logger.removeHandler(handler)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert any(
            rec.get("route") == "/v1/search"
            and rec.get("status") == 200
            and rec.get("tenant") == TENANT_A
            for rec in lines
        )
        assert all(rec["request_id"] not in ("", None) for rec in lines)
        text = stream.getvalue()
        assert key not in text and key[:-3] not in text
        assert "jane.doe" not in text and "secret question" not in text
