"""One fault stack for the package: its own PostgreSQL and Redis, two materialized tenants, the
query API under uvicorn, and a real local LLM for streamed answers (see ``utils/stack.py``)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag_platform_tests.utils.llm import MODEL_ALIAS, llama_server
from rag_platform_tests.utils.stack import FaultStack, fault_stack


@pytest.fixture(scope="package")
def stack() -> Iterator[FaultStack]:
    with tempfile.TemporaryDirectory(prefix="rag-faults-") as root, llama_server() as llm_url:
        extra = {
            "RAG_LLM_BASE_URL": llm_url,
            "RAG_LLM_MODEL": MODEL_ALIAS,
            "RAG_LLM_MAX_TOKENS": "48",
        }
        with fault_stack(root=Path(root), extra_env=extra) as s:
            yield s
