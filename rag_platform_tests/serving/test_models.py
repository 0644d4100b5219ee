"""The API's model holders: one batching query embedder per embedding identity, each embedding
with the backend the index version recorded (real PyTorch and ONNX int8 models)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from rag_platform.lib.embedding import DEFAULT_MODEL_NAME, load_embedder
from rag_platform.lib.store import IndexVersion
from rag_platform.settings import Settings
from serving.models import Models


def _version(details: dict[str, object]) -> IndexVersion:
    return IndexVersion(
        tenant="acme",
        version="v1",
        path="/nowhere",
        status="published",
        documents=1,
        chunks=1,
        config_hash="h",
        details=details,  # type: ignore[arg-type]
        created_at=datetime.now(UTC),
        published_at=None,
        first_published_at=None,
    )


def test_queries_are_embedded_by_the_backend_the_version_recorded(models_dir: Path) -> None:
    models = Models(Settings(embedding_backend="torch", models_dir=models_dir, query_batch_size=4))
    try:
        onnx = models.query_embedder_for(_version({"embedding": f"{DEFAULT_MODEL_NAME}@onnx-int8"}))
        legacy = models.query_embedder_for(_version({"run_id": "r"}))  # built before identities
        assert onnx.embedder.backend == "onnx-int8" and legacy.embedder.backend == "torch"
        assert legacy is models.query_embedder  # the settings' own batcher
        assert models.query_embedder_for(_version({"embedding": DEFAULT_MODEL_NAME})) is legacy
        assert onnx is models.query_embedder_for(
            _version({"embedding": f"{DEFAULT_MODEL_NAME}@onnx-int8"})
        )
        reference = load_embedder("onnx-int8", DEFAULT_MODEL_NAME, 64, models_dir)
        query = "vitamin D and bone density"
        np.testing.assert_allclose(onnx.embed_query(query), reference.embed_query(query), atol=1e-6)
        assert models.embedder.backend == "torch"  # the answerer's embedder follows the settings
    finally:
        models.close()
    assert onnx._closed and legacy._closed  # close() stops every batching worker
