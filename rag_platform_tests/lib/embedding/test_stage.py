"""The embedding stage's cache: only new content is embedded, other models never reuse it, and an
interrupted run resumes from its checkpoint. Real model (all-MiniLM-L6-v2)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pytest

from rag_platform.lib.embedding import get_embedder
from rag_platform.lib.embedding.stage import ChunkEmbedder, EmbeddingSet


class _CountingEmbedder:
    """The real embedder under another model name, counting the texts it is asked to embed."""

    backend: Literal["torch"] = "torch"

    def __init__(self, model_name: str = "m") -> None:
        self.model_name = model_name
        self.calls: list[int] = []

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return get_embedder().embed_documents(texts)


def _chunks(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "content_hash": [f"h{abs(hash(t))}" for t in texts],
            "embedding_text": texts,
            "token_count": [len(t.split()) for t in texts],
        }
    )


def _stage(state: Path, embedder: _CountingEmbedder, **kwargs: int) -> ChunkEmbedder:
    return ChunkEmbedder(state, embedder, **kwargs)


class TestEmbedStage:
    def test_embeds_only_new_content_and_prunes(self, tmp_path: Path) -> None:
        embedder = _CountingEmbedder()
        stage = _stage(tmp_path, embedder)
        first = stage.run(_chunks(["alpha beta", "gamma delta"]))
        assert first.stats.extra["embedded"] == 2 and embedder.calls == [2]
        second = stage.run(_chunks(["alpha beta", "epsilon"]))
        stats = second.stats
        assert stats.extra["embedded"] == 1 and stats.reused == 1 and embedder.calls == [2, 1]
        np.testing.assert_allclose(second.embeddings.vectors[0], first.embeddings.vectors[0])
        assert len(EmbeddingSet.load(stage.cache_path).hashes) == 2  # "gamma delta" pruned

    def test_other_model_never_reuses(self, tmp_path: Path) -> None:
        _stage(tmp_path, _CountingEmbedder("model-a")).run(_chunks(["alpha"]))
        result = _stage(tmp_path, _CountingEmbedder("model-b")).run(_chunks(["alpha"]))
        assert result.stats.extra["embedded"] == 1

    def test_other_backend_never_reuses_and_switching_back_reuses(self, tmp_path: Path) -> None:
        class _OnnxNamed(_CountingEmbedder):
            backend = "onnx-int8"  # type: ignore[assignment]

        torch_stage = _stage(tmp_path, _CountingEmbedder())
        torch_stage.run(_chunks(["alpha", "beta"]))
        onnx = _OnnxNamed()
        onnx_stage = _stage(tmp_path, onnx)
        result = onnx_stage.run(_chunks(["alpha", "beta"]))
        assert result.stats.extra["embedded"] == 2 and onnx.calls == [2]
        assert result.embeddings.model == result.stats.extra["model"] == "m@onnx-int8"
        assert onnx_stage.cache_path.name == "embeddings-m@onnx-int8.npz"
        assert torch_stage.cache_path.name == "embeddings-m.npz"
        back = _CountingEmbedder()
        again = _stage(tmp_path, back).run(_chunks(["alpha", "beta", "gamma"]))
        assert again.stats.reused == 2 and back.calls == [1]  # the torch cache was kept
        assert again.embeddings.model == "m"

    def test_embedder_is_not_called_when_everything_is_cached(self, tmp_path: Path) -> None:
        _stage(tmp_path, _CountingEmbedder()).run(_chunks(["alpha"]))

        class _NoEmbedding(_CountingEmbedder):
            def embed_documents(self, texts: list[str]) -> np.ndarray:
                raise AssertionError("nothing may be embedded")

        again = ChunkEmbedder(tmp_path, _NoEmbedding())
        assert again.run(_chunks(["alpha"])).stats.reused == 1


class TestEmbedCheckpoints:
    def test_interrupted_run_resumes_from_checkpoint(self, tmp_path: Path) -> None:
        texts = [f"sentence number {i} about topic {i % 3}" for i in range(5)]

        class _FailsOnThirdSlice(_CountingEmbedder):
            def embed_documents(self, batch: list[str]) -> np.ndarray:
                if len(self.calls) == 2:
                    raise RuntimeError("killed")
                return super().embed_documents(batch)

        failing = _stage(tmp_path, _FailsOnThirdSlice(), checkpoint_every=2)
        with pytest.raises(RuntimeError, match="killed"):
            failing.run(_chunks(texts))
        assert len(EmbeddingSet.load(failing.cache_path).hashes) == 4  # two slices checkpointed
        embedder = _CountingEmbedder()
        result = _stage(tmp_path, embedder).run(_chunks(texts))
        assert result.stats.extra["embedded"] == 1 and embedder.calls == [1]
        assert result.embeddings.vectors.shape == (5, 384)
