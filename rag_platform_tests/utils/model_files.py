"""The test session's folder of built model artefacts (``RAG_MODELS_DIR``)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def session_models_dir() -> Path:
    """One ``RAG_MODELS_DIR`` for every test home of this process (the ``models_dir`` fixture
    and the serving factories' ``make_settings``): the ONNX int8 embedding model is built once
    per test session, not once per home (about 10 s each). Removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="rag-test-models-"))
    atexit.register(shutil.rmtree, path, True)
    return path
