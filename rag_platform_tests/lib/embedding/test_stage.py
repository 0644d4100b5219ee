"""The embedding stage's cache: only new content is embedded, other models never reuse it, and an
interrupted run resumes from its checkpoint. Real model (all-MiniLM-L6-v2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rag_platform.lib.embedding import get_embedder
from rag_platform.lib.embedding.stage import ChunkEmbedder, EmbeddingSet


class _CountingEmbedder:
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self) -> None:
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


def _stage(
    state: Path, embedder: _CountingEmbedder, model: str = "m", **kwargs: int
) -> ChunkEmbedder:
    return ChunkEmbedder(state, model_name=model, embedder_factory=lambda: embedder, **kwargs)


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
        embedder = _CountingEmbedder()
        _stage(tmp_path, embedder, "model-a").run(_chunks(["alpha"]))
        result = _stage(tmp_path, embedder, "model-b").run(_chunks(["alpha"]))
        assert result.stats.extra["embedded"] == 1

    def test_embedder_is_not_built_when_everything_is_cached(self, tmp_path: Path) -> None:
        _stage(tmp_path, _CountingEmbedder()).run(_chunks(["alpha"]))

        def no_embedder() -> _CountingEmbedder:
            raise AssertionError("the embedder must not be built")

        again = ChunkEmbedder(tmp_path, model_name="m", embedder_factory=no_embedder)
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
