"""The dense embedder (real all-MiniLM-L6-v2) and the BM25 sparse encoder."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from rag_platform.lib.embedding import (
    Embedder,
    SparseEncoder,
    SparseVector,
    get_embedder,
    get_sparse_encoder,
)
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
            ["Calcitriol deficiency lowers bone mineral density in adults.",
             "The stock market closed higher on Friday."]
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
        assert e._model is None  # nothing loaded before first use
        models: list[object] = []
        threads = [threading.Thread(target=lambda: models.append(e.model)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(models) == 4 and all(m is models[0] for m in models)
        assert get_embedder() is get_embedder()


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
        assert (doc.values[doc.indices.index(run_idx)]
                > single.values[single.indices.index(run_idx)])

    def test_stopwords_only_and_empty(self) -> None:
        enc = SparseEncoder()
        assert len(enc.encode_query("the of and")) == 0
        assert len(enc.encode_documents([""])[0]) == 0
        with pytest.raises(ValueError):
            SparseEncoder(language="klingon")

    def test_sparse_vector_checks_lengths(self) -> None:
        with pytest.raises(ValueError, match="indices"):
            SparseVector([1, 2], [0.5])
