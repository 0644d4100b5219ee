"""The dense embedder (real all-MiniLM-L6-v2) and the BM25 sparse encoder."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from rag_platform.lib.embedding import (
    BatchingQueryEmbedder,
    Embedder,
    SparseEncoder,
    SparseVector,
    get_embedder,
    get_sparse_encoder,
)
from rag_platform.lib.embedding.dense import Lazy
from rag_platform.settings import get_settings


def scifact_texts(n: int) -> list[str]:
    out = []
    with open(get_settings().data_dir / "scifact" / "corpus.jsonl") as f:
        for line in f:
            row = json.loads(line)
            out.append(f"{row['title']}. {row['text']}")
            if len(out) == n:
                break
    return out


class TestEmbedder:
    def test_documents_are_normalised_float32_rows(self) -> None:
        e = get_embedder()
        texts = scifact_texts(5)
        m = e.embed_documents(texts)
        assert m.shape == (5, 384) and m.dtype == np.float32
        assert np.allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-5)
        assert e.dimension == 384 and e.max_seq_length == 256
        assert e.model_name == "sentence-transformers/all-MiniLM-L6-v2"
        assert e.embed_documents([]).shape == (0, 384)

    def test_query_matches_document_encoding_and_ranks_by_meaning(self) -> None:
        e = get_embedder()
        q = e.embed_query("How does vitamin D affect bone health?")
        assert q.shape == (384,) and q.dtype == np.float32
        same = e.embed_documents(["How does vitamin D affect bone health?"])[0]
        assert np.allclose(q, same, atol=1e-5)
        docs = e.embed_documents(
            [
                "Calcitriol deficiency lowers bone mineral density in adults.",
                "The stock market closed higher on Friday.",
            ]
        )
        sims = docs @ q
        assert sims[0] > sims[1] + 0.2

    def test_bad_input(self) -> None:
        e = get_embedder()
        with pytest.raises(ValueError):
            e.embed_query("   ")
        with pytest.raises(TypeError, match=r"texts\[1\]"):
            e.embed_documents(["ok", None])  # type: ignore[list-item]
        with pytest.raises(ValueError):
            Embedder(batch_size=0)

    def test_lazy_thread_safe_load_and_process_wide_instance(self) -> None:
        e = Embedder(batch_size=8)
        assert not e._model.loaded  # nothing loaded before first use
        models: list[object] = []
        threads = [threading.Thread(target=lambda: models.append(e.model)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(models) == 4 and all(m is models[0] for m in models)
        assert get_embedder() is get_embedder()


class GatedEmbedder(Embedder):
    """The real model, whose first forward pass waits for ``gate`` (to line up a batch)."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        super().__init__()
        shared = get_embedder().model  # loaded now, shared with the process-wide embedder
        self._model = Lazy(lambda: shared)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[int] = []
        self.fail_with = fail_with

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        if len(self.calls) == 1:
            self.entered.set()
            self.gate.wait(10)
        if self.fail_with is not None:
            raise self.fail_with
        return super().embed_queries(texts)


QUERIES = [
    "Does aspirin reduce colorectal cancer risk?",
    "vitamin D and bone density",
    "CRISPR off-target effects in human cells",
    "statins",
    "Is obesity associated with a higher risk of type 2 diabetes in adolescents?",
    "microbiome and depression",
    "malaria vaccine efficacy in children under five",
    "smoking cessation",
    "gene expression in T cells",
]


def run_concurrently(batcher: BatchingQueryEmbedder, queries: list[str]) -> dict[str, object]:
    """Embeds ``queries[0]`` first (held at the gate), then the rest while it waits."""
    out: dict[str, object] = {}

    def call(q: str) -> None:
        try:
            out[q] = batcher.embed_query(q)
        except Exception as exc:
            out[q] = exc

    first = threading.Thread(target=call, args=(queries[0],))
    first.start()
    gated = batcher.embedder
    assert isinstance(gated, GatedEmbedder) and gated.entered.wait(10)
    rest = [threading.Thread(target=call, args=(q,)) for q in queries[1:]]
    for t in rest:
        t.start()
    deadline = time.monotonic() + 10
    while batcher._queue.qsize() < len(rest) and time.monotonic() < deadline:
        time.sleep(0.01)
    gated.gate.set()
    for t in [first, *rest]:
        t.join(30)
    return out


class TestBatchingQueryEmbedder:
    def test_concurrent_queries_share_a_forward_pass_and_match_single_embeddings(self) -> None:
        gated = GatedEmbedder()
        batcher = BatchingQueryEmbedder(gated, max_batch_size=16)
        out = run_concurrently(batcher, QUERIES)
        assert gated.calls == [1, len(QUERIES) - 1]  # the eight waiting queries: one pass
        assert batcher.batches == 2 and batcher.queries == len(QUERIES)
        single = get_embedder()
        for q in QUERIES:
            v = out[q]
            assert isinstance(v, np.ndarray) and v.shape == (384,) and v.dtype == np.float32
            assert float(v @ single.embed_query(q)) > 0.9999  # padding changes nothing
        batcher.close()

    def test_batch_size_is_capped(self) -> None:
        gated = GatedEmbedder()
        batcher = BatchingQueryEmbedder(gated, max_batch_size=3)
        run_concurrently(batcher, QUERIES)
        assert gated.calls[0] == 1 and max(gated.calls) == 3 and sum(gated.calls) == 9
        batcher.close()

    def test_a_model_error_reaches_every_caller_of_the_batch(self) -> None:
        gated = GatedEmbedder(fail_with=RuntimeError("out of memory"))
        batcher = BatchingQueryEmbedder(gated)
        out = run_concurrently(batcher, QUERIES[:4])
        assert all(isinstance(v, RuntimeError) for v in out.values())
        gated.fail_with = None
        assert batcher.embed_query("still serving").shape == (384,)  # the worker survived
        batcher.close()

    def test_bad_query_is_refused_in_the_caller_and_close_falls_back(self) -> None:
        batcher = BatchingQueryEmbedder(get_embedder())
        with pytest.raises(ValueError):
            batcher.embed_query("  ")
        with pytest.raises(ValueError):
            BatchingQueryEmbedder(get_embedder(), max_batch_size=0)
        batcher.close()
        assert not batcher._thread.is_alive()
        assert batcher.embed_query("after close").shape == (384,)


class TestSparseEncoder:
    def test_bm25_vectors_share_stemmed_terms(self) -> None:
        enc = get_sparse_encoder()
        doc, other = enc.encode_documents(
            ["Running mice were running faster after training.", "Plants need sunlight."]
        )
        query = enc.encode_query("the mouse runs")
        assert len(doc.indices) == len(doc.values) > 0
        assert set(query.indices) & set(doc.indices)  # "running"/"runs" stem to one term
        assert not set(query.indices) & set(other.indices)
        assert all(v == 1.0 for v in query.values)
        # term frequency raises the document weight of a repeated term
        run_idx = (set(query.indices) & set(doc.indices)).pop()
        single = enc.encode_documents(["Running mice were faster after training."])[0]
        assert doc.values[doc.indices.index(run_idx)] > single.values[single.indices.index(run_idx)]

    def test_stopwords_only_and_empty(self) -> None:
        enc = SparseEncoder()
        assert len(enc.encode_query("the of and")) == 0
        assert len(enc.encode_documents([""])[0]) == 0
        with pytest.raises(ValueError):
            SparseEncoder(language="klingon")

    def test_sparse_vector_checks_lengths(self) -> None:
        with pytest.raises(ValueError, match="indices"):
            SparseVector([1, 2], [0.5])
