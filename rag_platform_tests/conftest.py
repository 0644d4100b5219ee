"""Shared fixtures: a temporary RAG_HOME with its own tenant registry over small subsets of the
real data sets in ../shared/data."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from rag_platform.settings import PROJECT_ROOT, Settings, configure_runtime_env, get_settings
from rag_platform_tests.utils.model_files import session_models_dir

# The test session is an entry point: offline models, and SIGINT/SIGTERM not left ignored by a
# shell that started the suite in the background (servers the tests start must stop on kill).
configure_runtime_env()

DATA_DIR = Path(os.environ.get("RAG_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))
SCIFACT = DATA_DIR / "scifact"
SEC_DOCS = DATA_DIR / "sec10q" / "docs"
#: The two smallest 10-Q filings (about 260 KB each).
SMALL_PDFS = ("2023 Q3 AAPL.pdf", "2022 Q3 AAPL.pdf")


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """One RAG_MODELS_DIR for the whole session: the ONNX int8 embedding model is built once
    (shared with the serving factories' settings, ``session_models_dir``)."""
    return session_models_dir()


@pytest.fixture
def rag_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models_dir: Path
) -> Iterator[Settings]:
    """A fresh RAG_HOME (with the session's RAG_MODELS_DIR) and empty tenant registry; settings
    cache cleared around the test."""
    home = tmp_path / "rag_home"
    monkeypatch.setenv("RAG_HOME", str(home))
    monkeypatch.setenv("RAG_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("RAG_TENANTS_FILE", str(tmp_path / "tenants.yaml"))
    monkeypatch.setenv("RAG_DATA_DIR", str(DATA_DIR))
    monkeypatch.delenv("RAG_DATABASE_URL", raising=False)
    monkeypatch.delenv("RAG_REDIS_URL", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    settings.ensure_dirs()
    yield settings
    get_settings.cache_clear()


TenantWriter = Callable[..., Path]


@pytest.fixture
def write_tenants(rag_home: Settings) -> TenantWriter:
    """Writes the registry: ``write_tenants(tenant_dict, ...)`` → the registry path."""

    def write(*tenants: dict) -> Path:
        rag_home.tenants_file.write_text(yaml.safe_dump({"tenants": list(tenants)}))
        return rag_home.tenants_file

    return write


def scifact_tenant(tenant_id: str = "sci", limit: int = 30, **extra: object) -> dict:
    """A tenant over the first ``limit`` SciFact abstracts (dataset connector)."""
    return {
        "id": tenant_id,
        "sources": [
            {
                "id": "corpus",
                "type": "dataset",
                "path": str(SCIFACT / "corpus.jsonl"),
                "id_column": "_id",
                "title_column": "title",
                "text_column": "text",
                "limit": limit,
            }
        ],
        "pii": {"ner": False},
        "chunking": {"max_tokens": 200, "overlap_tokens": 32},
        **extra,
    }


def files_tenant(tenant_id: str, folder: Path, **extra: object) -> dict:
    """A tenant over a folder of files (filesystem connector)."""
    return {
        "id": tenant_id,
        "sources": [{"id": "files", "type": "filesystem", "path": str(folder)}],
        "pii": {"ner": False},
        "chunking": {"max_tokens": 200, "overlap_tokens": 32},
        **extra,
    }


@pytest.fixture
def pdf_folder(tmp_path: Path) -> Path:
    """A folder with two real 10-Q PDFs, a corrupt PDF and an empty one."""
    folder = tmp_path / "filings"
    folder.mkdir()
    for name in SMALL_PDFS[:1]:
        shutil.copy(SEC_DOCS / name, folder / name)
    real = (SEC_DOCS / SMALL_PDFS[1]).read_bytes()
    (folder / "corrupt.pdf").write_bytes(real[: len(real) // 3])
    (folder / "empty.pdf").write_bytes(b"")
    return folder
