"""The tenant pipeline and the API on the Qdrant server backend: a real Dagster run with
``RAG_QDRANT_URL`` set builds a collection per version, publishes by switching the tenant's
alias and garbage-collects old collections; the API answers through the alias with ACL
filtering. The server is qdrant-client local mode on a folder (no Qdrant server binary installs
here); the Dagster steps and the API of this one process share its client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rag_platform.lib.index.backend import open_backend
from rag_platform.lib.index.server import ServerBackend, alias_name
from rag_platform.lib.models import make_doc_id
from rag_platform.lib.store import MetadataStore
from rag_platform.runner import materialize_tenant
from rag_platform.settings import Settings, get_settings
from rag_platform_tests.conftest import SCIFACT, scifact_tenant
from serving.main import create_app

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TENANT = "qs"
N_DOCS = 60


def _write_corpus(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _scifact_rows(n: int) -> list[dict]:
    """The first ``n`` SciFact abstracts; every 4th visible only to ``secret``."""
    rows = []
    with open(SCIFACT / "corpus.jsonl") as f:
        for i, line in enumerate(f):
            if i == n:
                break
            row = json.loads(line)
            rows.append(
                {
                    "_id": row["_id"],
                    "title": row["title"],
                    "text": row["text"],
                    "groups": ["secret"] if i % 4 == 0 else ["all"],
                }
            )
    return rows


@pytest.fixture
def server_home(rag_home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("RAG_QDRANT_URL", str(tmp_path / "qdrant"))
    monkeypatch.setenv("RAG_VERSIONS_KEPT", "1")
    get_settings.cache_clear()
    settings = get_settings()
    settings.ensure_dirs()
    return settings


def test_pipeline_and_api_on_the_server_backend(
    server_home: Settings, write_tenants, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = _scifact_rows(N_DOCS)
    _write_corpus(corpus, rows)
    tenant = scifact_tenant(
        TENANT,
        limit=N_DOCS,
        golden_set={"path": str(SCIFACT), "format": "beir", "split": "train"},
    )
    tenant["sources"][0].update(path=str(corpus), acl_column="groups")
    write_tenants(tenant)

    first = materialize_tenant(TENANT, server_home)
    assert first.success and first.published, first.failed_checks
    assert first.documents == N_DOCS
    backend = open_backend(server_home)
    assert isinstance(backend, ServerBackend)
    v1 = first.index_version
    assert v1 is not None
    store = MetadataStore.from_settings(server_home)
    published = store.get_published_version(TENANT)
    assert published is not None and published.version == v1
    assert published.path == f"kb_{TENANT}_{v1}"  # the location is the collection
    assert backend.alias_target(TENANT) == published.path  # published by the alias
    receipt = store.get_receipt(TENANT, v1)
    assert receipt is not None and receipt.passed
    assert first.metadata["index_evaluation"]["questions"] > 0  # evaluated on the collection
    assert not (server_home.index_dir / TENANT).exists()  # no Edge shard was written

    secret = rows[0]
    secret_doc = make_doc_id(TENANT, "corpus", secret["_id"])
    _, reader_key = store.create_api_key(TENANT, ["all"])
    _, insider_key = store.create_api_key(TENANT, ["all", "secret"])
    _, admin_key = store.create_api_key(TENANT, ["all", "secret"], role="admin")
    query = {"query": secret["title"], "top_k": 5}
    with TestClient(create_app(server_home)) as client:
        assert client.get("/health/ready").status_code == 200
        state = client.app.state.serving  # type: ignore[attr-defined]
        assert state.backend.kind == "server"
        r = client.post(
            "/v1/search", json=query, headers={"Authorization": f"Bearer {insider_key}"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["index_version"] == v1
        assert r.json()["hits"][0]["doc_id"] == secret_doc
        r = client.post("/v1/search", json=query, headers={"Authorization": f"Bearer {reader_key}"})
        assert r.status_code == 200
        hits = r.json()["hits"]
        assert len(hits) == 5 and secret_doc not in {h["doc_id"] for h in hits}
        docs = client.get(
            "/v1/admin/documents", headers={"Authorization": f"Bearer {admin_key}"}
        ).json()
        assert docs["index_version"] == v1 and docs["count"] == N_DOCS

        # a source change: one document deleted, one edited → a new collection, alias switched
        gone = rows.pop(1)
        rows[2]["text"] = "Flights need approval by a director."
        _write_corpus(corpus, rows)
        second = materialize_tenant(TENANT, server_home)
        assert second.success and second.published, second.failed_checks
        v2 = second.index_version
        assert v2 is not None and v2 != v1
        assert backend.alias_target(TENANT) == f"kb_{TENANT}_{v2}"
        # RAG_VERSIONS_KEPT=1: the first collection was dropped, its row marked deleted
        assert not backend.exists(f"kb_{TENANT}_{v1}")
        assert store.get_version(TENANT, v1).status == "deleted"
        assert second.metadata["published_index"]["garbage_collected"] == 1
        state.versions.invalidate(TENANT)
        r = client.post(
            "/v1/search", json=query, headers={"Authorization": f"Bearer {insider_key}"}
        )
        assert r.status_code == 200 and r.json()["index_version"] == v2
        assert r.json()["hits"][0]["doc_id"] == secret_doc
        gone_doc = make_doc_id(TENANT, "corpus", gone["_id"])
        r = client.post(
            "/v1/search",
            json={"query": gone["title"], "top_k": 10},
            headers={"Authorization": f"Bearer {insider_key}"},
        )
        assert gone_doc not in {h["doc_id"] for h in r.json()["hits"]}
        with backend.acquire(TENANT, v2, f"kb_{TENANT}_{v2}") as reader:
            assert reader.collection == alias_name(TENANT)  # the API reads through the alias
    store.dispose()
