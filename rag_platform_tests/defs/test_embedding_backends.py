"""Switching the dense embedding backend (``RAG_EMBEDDING_BACKEND``) on a materialized tenant:
the real Definitions, the real PyTorch and ONNX int8 models, real Qdrant Edge shards and the real
query API. Nothing mixes the two kinds of vectors: a switch re-embeds every chunk into a new
index version, switching back reuses the kept PyTorch cache, and the API embeds each query with
the backend of the version it searches, whatever its own setting."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from rag_platform.lib.embedding import DEFAULT_MODEL_NAME, load_embedder
from rag_platform.lib.embedding.stage import EmbeddingSet, model_slug
from rag_platform.lib.store import IndexVersion, MetadataStore
from rag_platform.runner import PipelineSummary, materialize_tenant
from rag_platform.settings import Settings, get_settings
from rag_platform_tests.conftest import SCIFACT, TenantWriter, scifact_tenant
from rag_platform_tests.utils.sealed import stored_asset
from serving.main import create_app

TENANT = "sci"
ONNX_IDENTITY = f"{DEFAULT_MODEL_NAME}@onnx-int8"
QUERY = "Vitamin D deficiency and bone mineral density"


def _settings(monkeypatch: pytest.MonkeyPatch, backend: str) -> Settings:
    monkeypatch.setenv("RAG_EMBEDDING_BACKEND", backend)
    get_settings.cache_clear()
    return get_settings()


def _materialize(settings: Settings) -> PipelineSummary:
    summary = materialize_tenant(TENANT, settings)
    assert summary.success and summary.published, summary.failed_checks
    return summary


def _version(settings: Settings, version: str) -> IndexVersion:
    store = MetadataStore.from_settings(settings)
    try:
        record = store.get_version(TENANT, version)
    finally:
        store.dispose()
    assert record is not None
    return record


def _stored_vectors(settings: Settings, identity: str) -> dict[str, np.ndarray]:
    """Chunk id → the dense vector the pipeline indexed for it under ``identity``."""
    chunks = stored_asset(settings, "chunks", TENANT)
    cache = EmbeddingSet.load(
        settings.cache_dir / TENANT / f"embeddings-{model_slug(identity)}.npz"
    )
    rows = cache.lookup()
    return {r.chunk_id: cache.vectors[rows[r.content_hash]] for r in chunks.itertuples(index=False)}


def _top_hit(settings: Settings) -> tuple[str, float]:
    """The API's best dense-only hit for :data:`QUERY` (chunk id, cosine score)."""
    store = MetadataStore.from_settings(settings)
    try:
        _, key = store.create_api_key(TENANT, ["all"], role="reader", name="t", actor="test")
    finally:
        store.dispose()
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/search",
            json={"query": QUERY, "top_k": 3},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert response.status_code == 200, response.text
    hit = response.json()["hits"][0]
    return hit["chunk_id"], hit["score"]


def _query_cosines(settings: Settings, vector: np.ndarray) -> dict[str, float]:
    """Cosine of ``vector`` to :data:`QUERY` embedded by each backend."""
    return {
        backend: float(
            load_embedder(
                backend,  # type: ignore[arg-type]
                settings.embedding_model,
                settings.embedding_batch_size,
                settings.resolved_models_dir,
            ).embed_query(QUERY)
            @ vector
        )
        for backend in ("torch", "onnx-int8")
    }


@pytest.mark.slow
def test_switching_backends_reembeds_into_new_versions_and_the_api_follows_the_index(
    rag_home: Settings, write_tenants: TenantWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dense retrieval alone, so a hit's score is the cosine of the query vector to its vector;
    # each new version is evaluated (with its own backend's query vectors) but never gated
    write_tenants(
        scifact_tenant(
            TENANT,
            limit=12,
            retrieval={"fusion": "dense"},
            golden_set={"path": str(SCIFACT), "format": "beir", "split": "train"},
            evaluation={"max_regression": 1.0},
        )
    )
    torch_settings = _settings(monkeypatch, "torch")
    first = _materialize(torch_settings)
    assert first.embedded == first.chunks > 0
    assert first.metadata["chunk_embeddings"]["model"] == DEFAULT_MODEL_NAME
    assert _version(torch_settings, first.index_version or "").details["embedding"] == (
        DEFAULT_MODEL_NAME
    )

    onnx_settings = _settings(monkeypatch, "onnx-int8")
    second = _materialize(onnx_settings)
    assert second.embedded == second.chunks == first.chunks  # every chunk re-embedded
    assert second.metadata["chunk_embeddings"]["model"] == ONNX_IDENTITY
    assert second.metadata["search_index"]["reused"] is False
    assert second.index_version != first.index_version
    onnx_version = _version(onnx_settings, second.index_version or "")
    assert onnx_version.details["embedding"] == ONNX_IDENTITY
    assert second.metadata["index_evaluation"]["questions"] > 0
    assert not second.metadata["index_evaluation"]["reused"]
    assert (
        onnx_version.config_hash != _version(torch_settings, first.index_version or "").config_hash
    )

    # An API still configured for PyTorch serves the int8 index with int8 query vectors.
    chunk_id, score = _top_hit(torch_settings)
    cosines = _query_cosines(onnx_settings, _stored_vectors(onnx_settings, ONNX_IDENTITY)[chunk_id])
    assert score == pytest.approx(cosines["onnx-int8"], abs=2e-4)
    assert abs(score - cosines["torch"]) > 1e-3

    # Back to PyTorch: its cache was kept, so nothing is embedded, but the published int8
    # version is not reused: a new version holds the PyTorch vectors again.
    third = _materialize(_settings(monkeypatch, "torch"))
    assert third.embedded == 0 and third.metadata["chunk_embeddings"]["reused"] == third.chunks
    assert third.index_version not in (first.index_version, second.index_version)
    torch_version = _version(torch_settings, third.index_version or "")
    assert torch_version.details["embedding"] == DEFAULT_MODEL_NAME
    assert (
        torch_version.config_hash == _version(torch_settings, first.index_version or "").config_hash
    )

    # An API configured for int8 serves the PyTorch index with PyTorch query vectors.
    chunk_id, score = _top_hit(onnx_settings)
    cosines = _query_cosines(
        torch_settings, _stored_vectors(torch_settings, DEFAULT_MODEL_NAME)[chunk_id]
    )
    assert score == pytest.approx(cosines["torch"], abs=2e-4)
    assert abs(score - cosines["onnx-int8"]) > 1e-3
