"""``/metrics``: no tenant ids unless enabled, and an optional bearer token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rag_platform.settings import Settings
from rag_platform_tests.serving.conftest import TENANT_A, World, build_world
from rag_platform_tests.serving.factories import bearer
from serving.main import create_app


@pytest.fixture(scope="module")
def private_client(world: World) -> Iterator[TestClient]:
    """The app with token ``s3cret`` required on ``/metrics`` (it never opens a shard)."""
    settings = world.settings.model_copy(update={"metrics_token": "s3cret"})
    with TestClient(create_app(settings)) as c:
        yield c


def search(client: TestClient, world: World) -> None:
    r = client.post("/v1/search", json={"query": "aspirin"}, headers=bearer(world.keys["a_reader"]))
    assert r.status_code == 200, r.text


class TestTenantLabels:
    def test_off_by_default_no_tenant_id_is_exported(self, fast_tmp: Path) -> None:
        assert Settings.model_fields["metrics_tenant_labels"].default is False
        own = build_world(fast_tmp, metrics_tenant_labels=False)
        with TestClient(create_app(own.settings)) as c:
            search(c, own)
            text = c.get("/metrics").text
        own.store.dispose()
        assert 'rag_http_requests_total{method="POST",route="/v1/search",status="200"}' in text
        assert "rag_retrieval_search_seconds_count " in text  # unlabelled series
        assert "tenant=" not in text
        assert TENANT_A not in text

    def test_on_the_requests_carry_their_tenant(self, client: TestClient, world: World) -> None:
        assert world.settings.metrics_tenant_labels
        search(client, world)
        text = client.get("/metrics").text
        assert (
            'rag_http_requests_total{method="POST",route="/v1/search",status="200",'
            f'tenant="{TENANT_A}"}}'
        ) in text
        assert f'rag_retrieval_search_seconds_count{{tenant="{TENANT_A}"}}' in text


class TestToken:
    @pytest.mark.parametrize(
        "headers",
        [{}, bearer("wrong"), {"Authorization": "Basic czNjcmV0"}, bearer("s3cret" + "x")],
        ids=["none", "wrong", "other-scheme", "longer"],
    )
    def test_missing_or_wrong_token_is_401_in_the_error_shape(
        self, private_client: TestClient, headers: dict[str, str]
    ) -> None:
        r = private_client.get("/metrics", headers=headers)
        assert r.status_code == 401
        body = r.json()
        assert body["error"]["code"] == "unauthorized"
        assert body["error"]["request_id"] == r.headers["x-request-id"]
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "rag_http_requests_total" not in r.text

    def test_the_token_opens_the_metrics(self, private_client: TestClient) -> None:
        r = private_client.get("/metrics", headers=bearer("s3cret"))
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        assert "rag_query_log_pending" in r.text

    def test_no_token_configured_means_open(self, client: TestClient) -> None:
        assert client.get("/metrics").status_code == 200
