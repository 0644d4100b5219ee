"""The embedding stage's cache: only new content is embedded, other models never reuse it, and an
interrupted or killed run resumes from its checkpoint segments, written append-only. Real model
(all-MiniLM-L6-v2)."""

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
        assert not failing.cache_path.exists()  # checkpoints are segments, not the cache file
        segments = [EmbeddingSet.load(p) for p in failing.segment_paths()]
        assert [len(s.hashes) for s in segments] == [2, 2]  # one segment per checkpoint
        embedder = _CountingEmbedder()
        result = _stage(tmp_path, embedder).run(_chunks(texts))
        assert result.stats.extra["embedded"] == 1 and embedder.calls == [1]
        assert result.stats.extra["resumed"] == 4
        assert result.embeddings.vectors.shape == (5, 384)
        assert failing.segment_paths() == [] and not failing.segments_dir.exists()  # merged
        merged = EmbeddingSet.load(failing.cache_path)
        assert sorted(merged.hashes) == sorted(_chunks(texts)["content_hash"])

    def test_segments_are_appended_not_rewritten(self, tmp_path: Path) -> None:
        """Checkpoint bytes grow linearly with the texts embedded: twice the texts, about twice
        the bytes (rewriting the whole set at every checkpoint would be about four times)."""
        written = {}
        for n in (32, 64):
            texts = [f"note {i} on subject {i % 7} at run {n}" for i in range(n)]
            stage = _stage(tmp_path / str(n), _CountingEmbedder(), checkpoint_every=4)
            progress: list[tuple[int, int]] = []
            result = stage.run(_chunks(texts), progress=lambda d, t, p=progress: p.append((d, t)))
            extra = result.stats.extra
            assert extra["checkpoint_segments"] == n // 4 - 1  # all but the last slice
            written[n] = int(extra["checkpoint_bytes"] or 0)
            final = stage.cache_path.stat().st_size
            assert written[n] < 2 * final  # every vector written once (+ per-file overhead)
            assert progress[0] == (0, n) and progress[-1] == (n, n)
            assert [d for d, _ in progress] == sorted(d for d, _ in progress)
        assert 1.7 < written[64] / written[32] < 2.4

    def test_unreadable_segment_is_reembedded(self, tmp_path: Path) -> None:
        texts = [f"fact {i}" for i in range(4)]

        class _FailsOnSecondSlice(_CountingEmbedder):
            def embed_documents(self, batch: list[str]) -> np.ndarray:
                if len(self.calls) == 1:
                    raise KeyboardInterrupt
                return super().embed_documents(batch)

        failing = _stage(tmp_path, _FailsOnSecondSlice(), checkpoint_every=2)
        with pytest.raises(KeyboardInterrupt):
            failing.run(_chunks(texts))
        (segment,) = failing.segment_paths()
        segment.write_bytes(segment.read_bytes()[:50])  # damaged on disk
        embedder = _CountingEmbedder()
        result = _stage(tmp_path, embedder).run(_chunks(texts))
        assert result.stats.extra["embedded"] == 4 and result.stats.extra["resumed"] == 0


_KILLED_SCRIPT = """
import sys, time
from pathlib import Path
import numpy as np
import pandas as pd
from rag_platform.settings import configure_runtime_env
configure_runtime_env()
from rag_platform.lib.embedding import get_embedder
from rag_platform.lib.embedding.stage import ChunkEmbedder

class Slow:
    model_name = "m"
    backend = "torch"
    def embed_documents(self, texts):
        time.sleep(0.3)  # a window for the kill between checkpoints
        return get_embedder().embed_documents(texts)

texts = [f"sentence {i} of the killed run" for i in range(40)]
frame = pd.DataFrame({"content_hash": [f"k{i}" for i in range(40)], "embedding_text": texts,
                      "token_count": [5] * 40})
ChunkEmbedder(Path(sys.argv[1]), Slow(), checkpoint_every=4, progress_every=4).run(frame)
"""


class TestKilledEmbedding:
    def test_sigkilled_run_resumes_from_its_segments(self, tmp_path: Path) -> None:
        import os
        import signal
        import subprocess
        import sys
        import time

        state = tmp_path / "state"
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILLED_SCRIPT, str(state)],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
        )
        probe = ChunkEmbedder(state, _CountingEmbedder())
        deadline = time.monotonic() + 180
        try:
            while len(probe.segment_paths()) < 2:
                assert proc.poll() is None, "the run ended before it could be killed"
                assert time.monotonic() < deadline, "no checkpoint segment within 180 s"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        checkpointed = {h for p in probe.segment_paths() for h in EmbeddingSet.load(p).hashes}
        assert 8 <= len(checkpointed) < 40 and not probe.cache_path.exists()
        embedder = _CountingEmbedder()
        texts = [f"sentence {i} of the killed run" for i in range(40)]
        frame = pd.DataFrame(
            {
                "content_hash": [f"k{i}" for i in range(40)],
                "embedding_text": texts,
                "token_count": [5] * 40,
            }
        )
        result = ChunkEmbedder(state, embedder).run(frame)
        assert result.stats.extra["resumed"] == len(checkpointed)
        assert sum(embedder.calls) == 40 - len(checkpointed)  # finished segments not re-embedded
        fresh = get_embedder().embed_documents(texts)
        np.testing.assert_allclose(result.embeddings.vectors, fresh, atol=1e-5)
