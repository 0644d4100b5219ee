"""Stage caches: what is reused, what is pruned, and what forces recomputation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rag_platform.lib.embedding import get_embedder
from rag_platform.lib.stages import EmbeddingSet, StageCache, embed_stage, index_fingerprint


class _CountingEmbedder:
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return get_embedder().embed_documents(texts)


def _chunks(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "content_hash": [f"h{abs(hash(t))}" for t in texts],
        "embedding_text": texts,
        "token_count": [len(t.split()) for t in texts],
    })


class TestStageCache:
    def test_reuse_and_prune(self, tmp_path) -> None:
        path = tmp_path / "c.parquet"
        cache = StageCache(path)
        cache.put("a", {"x": 1})
        cache.put("b", {"x": 2})
        cache.save()
        again = StageCache(path)
        assert again.get("a") == {"x": 1}
        again.save()  # only "a" was used in this run
        assert StageCache(path).get("b") is None

    def test_corrupt_file_is_rebuilt_not_fatal(self, tmp_path) -> None:
        path = tmp_path / "c.parquet"
        path.write_bytes(b"not parquet")
        cache = StageCache(path)
        assert cache.get("a") is None
        cache.put("a", [1])
        cache.save()
        assert StageCache(path).get("a") == [1]


class TestEmbedStage:
    def test_embeds_only_new_content_and_prunes(self, tmp_path) -> None:
        path = tmp_path / "emb.npz"
        embedder = _CountingEmbedder()
        first, stats = embed_stage(_chunks(["alpha beta", "gamma delta"]), path, "m",
                                   lambda: embedder)
        assert stats.extra["embedded"] == 2 and embedder.calls == [2]
        second, stats = embed_stage(_chunks(["alpha beta", "epsilon"]), path, "m",
                                    lambda: embedder)
        assert stats.extra["embedded"] == 1 and stats.reused == 1 and embedder.calls == [2, 1]
        np.testing.assert_allclose(second.vectors[0], first.vectors[0])
        assert len(EmbeddingSet.load(path).hashes) == 2  # "gamma delta" pruned

    def test_other_model_never_reuses(self, tmp_path) -> None:
        path = tmp_path / "emb.npz"
        embedder = _CountingEmbedder()
        embed_stage(_chunks(["alpha"]), path, "model-a", lambda: embedder)
        _, stats = embed_stage(_chunks(["alpha"]), path, "model-b", lambda: embedder)
        assert stats.extra["embedded"] == 1


class TestIndexFingerprint:
    def test_acl_change_changes_fingerprint_order_does_not(self) -> None:
        base = pd.DataFrame({
            "chunk_id": ["1", "2"], "content_hash": ["a", "b"], "acl_groups": [["all"], ["hr"]],
            "uri": ["u1", "u2"], "title": ["t", "t"], "updated_at": ["", ""],
            "source_id": ["s", "s"], "page": [None, None],
        })
        fp = index_fingerprint(base, "m")
        assert index_fingerprint(base.iloc[::-1], "m") == fp
        changed = base.copy()
        changed.at[1, "acl_groups"] = ["all"]
        assert index_fingerprint(changed, "m") != fp
        assert index_fingerprint(base, "other-model") != fp


class TestEmbedCheckpoints:
    def test_interrupted_run_resumes_from_checkpoint(self, tmp_path) -> None:
        path = tmp_path / "emb.npz"
        texts = [f"sentence number {i} about topic {i % 3}" for i in range(5)]

        class _FailsOnThirdSlice(_CountingEmbedder):
            def embed_documents(self, batch: list[str]) -> np.ndarray:
                if len(self.calls) == 2:
                    raise RuntimeError("killed")
                return super().embed_documents(batch)

        failing = _FailsOnThirdSlice()
        with pytest.raises(RuntimeError, match="killed"):
            embed_stage(_chunks(texts), path, "m", lambda: failing, checkpoint_every=2)
        assert len(EmbeddingSet.load(path).hashes) == 4  # two slices were checkpointed
        embedder = _CountingEmbedder()
        result, stats = embed_stage(_chunks(texts), path, "m", lambda: embedder)
        assert stats.extra["embedded"] == 1 and embedder.calls == [1]
        assert result.vectors.shape == (5, 384)
