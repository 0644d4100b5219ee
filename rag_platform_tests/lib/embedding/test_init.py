"""The backend choice (``rag_platform.lib.embedding``): ``auto`` resolution, the embedding
identity, and the process-wide embedders of ``load_embedder`` (real models, loaded lazily)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rag_platform.lib.embedding import (
    DEFAULT_MODEL_NAME,
    Embedder,
    OnnxInt8Embedder,
    embedding_identity,
    get_embedder,
    load_embedder,
    parse_embedding_identity,
    resolve_backend,
)


def test_auto_is_torch_on_a_gpu_and_onnx_int8_otherwise() -> None:
    assert resolve_backend("auto") == ("torch" if torch.cuda.is_available() else "onnx-int8")
    assert resolve_backend("torch") == "torch"
    assert resolve_backend("onnx-int8") == "onnx-int8"
    with pytest.raises(ValueError, match="unknown embedding backend"):
        resolve_backend("tensorrt")  # type: ignore[arg-type]


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or Path("/proc/driver/nvidia").exists(),
    reason="needs Linux without an NVIDIA driver",
)
def test_auto_without_a_gpu_driver_does_not_import_torch() -> None:
    # the API and the pipeline's ONNX steps then never pay torch's import (about 2 s, 300 MB)
    code = (
        "import sys\n"
        "from rag_platform.lib.embedding import resolve_backend\n"
        "assert resolve_backend('auto') == 'onnx-int8'\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"


def test_identity_keeps_the_plain_name_for_torch_and_round_trips() -> None:
    assert embedding_identity(DEFAULT_MODEL_NAME, "torch") == DEFAULT_MODEL_NAME
    onnx = embedding_identity(DEFAULT_MODEL_NAME, "onnx-int8")
    assert onnx == "sentence-transformers/all-MiniLM-L6-v2@onnx-int8"
    assert parse_embedding_identity(onnx) == (DEFAULT_MODEL_NAME, "onnx-int8")
    assert parse_embedding_identity(DEFAULT_MODEL_NAME) == (DEFAULT_MODEL_NAME, "torch")
    # an "@" that names no backend belongs to the model name
    assert parse_embedding_identity("org/model@v2") == ("org/model@v2", "torch")


def test_one_embedder_per_backend_and_arguments(models_dir: Path) -> None:
    torch_embedder = load_embedder("torch", DEFAULT_MODEL_NAME, 64, models_dir)
    assert isinstance(torch_embedder, Embedder) and torch_embedder.backend == "torch"
    assert torch_embedder is get_embedder(DEFAULT_MODEL_NAME, 64)  # shares the loaded model
    onnx = load_embedder("onnx-int8", DEFAULT_MODEL_NAME, 32, models_dir)
    assert isinstance(onnx, OnnxInt8Embedder) and onnx.backend == "onnx-int8"
    assert (onnx.batch_size, onnx.models_dir, onnx.model_name) == (
        32,
        models_dir,
        DEFAULT_MODEL_NAME,
    )
    assert load_embedder("onnx-int8", DEFAULT_MODEL_NAME, 32, models_dir) is onnx
    assert load_embedder("auto", DEFAULT_MODEL_NAME, 32, models_dir) is load_embedder(
        resolve_backend("auto"), DEFAULT_MODEL_NAME, 32, models_dir
    )
    assert load_embedder("onnx-int8", DEFAULT_MODEL_NAME, 16, models_dir) is not onnx
    with pytest.raises(ValueError, match="batch_size"):
        load_embedder("onnx-int8", DEFAULT_MODEL_NAME, 0, models_dir)
    with pytest.raises(ValueError, match="threads"):
        load_embedder("onnx-int8", DEFAULT_MODEL_NAME, 32, models_dir, threads=0)


def test_intra_op_threads_are_set_explicitly(models_dir: Path) -> None:
    """RAG_EMBEDDING_THREADS reaches both runtimes: onnxruntime's session options and
    PyTorch's process-wide intra-op pool (set when the model loads)."""
    onnx = load_embedder("onnx-int8", DEFAULT_MODEL_NAME, 32, models_dir, threads=1)
    assert isinstance(onnx, OnnxInt8Embedder) and onnx.intra_op_num_threads == 1
    assert load_embedder("onnx-int8", DEFAULT_MODEL_NAME, 32, models_dir) is not onnx
    before = torch.get_num_threads()
    try:
        embedder = Embedder(threads=1)
        embedder.embed_query("bone density")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
