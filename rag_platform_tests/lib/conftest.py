"""Fixtures of the index tests (lib/test_index.py, lib/index/test_backend.py): the first 40
SciFact abstracts and their index points with real embeddings, once per module."""

from __future__ import annotations

import pytest

from rag_platform.lib.index.edge import IndexPoint
from rag_platform_tests.lib.test_index import load_docs, make_points


@pytest.fixture(scope="module")
def docs() -> list[dict[str, str]]:
    return load_docs()


@pytest.fixture(scope="module")
def points(docs: list[dict[str, str]]) -> list[IndexPoint]:
    return make_points(docs)
