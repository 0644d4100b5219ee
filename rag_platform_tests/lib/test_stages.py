"""Stage caches: what is reused, what is pruned, and what forces recomputation."""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from rag_platform.lib.embedding import get_embedder
from rag_platform.lib.stages import (
    DOC_COLUMNS,
    EmbeddingSet,
    MaskerSpec,
    StageCache,
    embed_stage,
    index_fingerprint,
    mask_stage,
)
from rag_platform.lib.tenants import PIIPolicy
from rag_platform.settings import get_settings


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
        first, stats = embed_stage(
            _chunks(["alpha beta", "gamma delta"]), path, "m", lambda: embedder
        )
        assert stats.extra["embedded"] == 2 and embedder.calls == [2]
        second, stats = embed_stage(_chunks(["alpha beta", "epsilon"]), path, "m", lambda: embedder)
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
        base = pd.DataFrame(
            {
                "chunk_id": ["1", "2"],
                "content_hash": ["a", "b"],
                "acl_groups": [["all"], ["hr"]],
                "uri": ["u1", "u2"],
                "title": ["t", "t"],
                "updated_at": ["", ""],
                "source_id": ["s", "s"],
                "page": [None, None],
            }
        )
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


def _parsed(texts: list[list[str]]) -> pd.DataFrame:
    rows = []
    for i, sections in enumerate(texts):
        rows.append(
            {
                "doc_id": f"d{i}",
                "tenant": "acme",
                "source_id": "s",
                "uri": f"file:///d{i}.txt",
                "title": f"Doc {i}",
                "mime_type": "text/plain",
                "content_hash": f"c{i}",
                "acl_groups": ["all"],
                "updated_at": None,
                "sections": json.dumps(
                    [{"text": t, "heading_path": [], "page": None} for t in sections]
                ),
            }
        )
    return pd.DataFrame(rows, columns=DOC_COLUMNS)


DOCS = [
    ["Our CFO John Smith signed the report.", "Call him at 212-555-0199."],
    ["No personal data here."],
    [],
    ["Contact Mary Johnson, mary.johnson@example.com, about the filing."],
]


@dataclass(frozen=True)
class DiesInWorkers:
    """A masker recipe whose worker processes die at start (as if killed by the OOM killer)."""

    spec: MaskerSpec

    def __call__(self) -> Any:
        if multiprocessing.parent_process() is not None:
            os._exit(1)
        return self.spec()


class TestMaskStage:
    POLICY = PIIPolicy(entities=["PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER"], ner=True)

    @pytest.mark.slow
    def test_worker_processes_mask_exactly_like_one_process(self, tmp_path: Path) -> None:
        spec = MaskerSpec(self.POLICY, get_settings().spacy_model)
        one, counts1, stats1 = mask_stage(
            _parsed(DOCS), self.POLICY, StageCache(tmp_path / "one.parquet"), spec, workers=1
        )
        two, counts2, stats2 = mask_stage(
            _parsed(DOCS), self.POLICY, StageCache(tmp_path / "two.parquet"), spec, workers=2
        )
        assert list(two["masked_hash"]) == list(one["masked_hash"])
        assert counts2 == counts1 and counts1["PERSON"] >= 2 and counts1["PHONE_NUMBER"] == 1
        assert stats1.processed == stats2.processed == 4
        first = json.loads(two["sections"][0])
        assert "John Smith" not in first[0]["text"] and "<PERSON>" in first[0]["text"]
        assert json.loads(two["sections"][2]) == []
        # the second run reuses every document from the cache
        again, _, stats3 = mask_stage(
            _parsed(DOCS), self.POLICY, StageCache(tmp_path / "two.parquet"), spec, workers=2
        )
        assert stats3.reused == 4 and stats3.processed == 0
        assert list(again["masked_hash"]) == list(one["masked_hash"])

    @pytest.mark.slow
    def test_dead_worker_processes_fall_back_to_this_process(self, tmp_path: Path) -> None:
        spec = MaskerSpec(self.POLICY, get_settings().spacy_model)
        out, counts, stats = mask_stage(
            _parsed(DOCS),
            self.POLICY,
            StageCache(tmp_path / "m.parquet"),
            DiesInWorkers(spec),
            workers=2,
        )
        assert stats.processed == 4 and counts["PHONE_NUMBER"] == 1
        assert "212-555-0199" not in out["sections"][0]

    def test_disabled_policy_keeps_text_and_loads_no_masker(self, tmp_path: Path) -> None:
        def no_masker() -> None:
            raise AssertionError("the masker must not be built")

        policy = PIIPolicy(enabled=False)
        out, counts, stats = mask_stage(
            _parsed(DOCS), policy, StageCache(tmp_path / "m.parquet"), no_masker, workers=2
        )
        assert json.loads(out["sections"][0])[0]["text"] == DOCS[0][0]
        assert not counts and stats.processed == 4
