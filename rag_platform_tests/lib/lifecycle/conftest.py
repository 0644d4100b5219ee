"""A small tenant materialized by a real Dagster run: three Markdown files, one of them holding
a marker phrase and a person's name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rag_platform.runner import materialize_tenant
from rag_platform.settings import Settings, get_settings
from rag_platform_tests.conftest import TenantWriter, files_tenant
from rag_platform_tests.utils.services import fresh_postgres_database

#: A phrase only ``secret.md`` holds.
MARKER = "quokkaberry"
TENANT = "handbook"


@pytest.fixture
def home(
    request: pytest.FixtureRequest, rag_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """``rag_home``'s settings; parametrized ``"postgresql"`` (indirectly), the same on a
    fresh PostgreSQL database (``RAG_DATABASE_URL``, seen by the Dagster runs and the CLI)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield rag_home
        return
    with fresh_postgres_database() as url:
        monkeypatch.setenv("RAG_DATABASE_URL", url)
        get_settings.cache_clear()
        settings = get_settings()
        assert settings.resolved_database_url.startswith("postgresql")
        yield settings
        get_settings.cache_clear()


@pytest.fixture
def handbook(home: Settings, write_tenants: TenantWriter, tmp_path: Path) -> Path:
    folder = tmp_path / "handbook"
    folder.mkdir()
    (folder / "leave.md").write_text("# Leave\n\nEmployees get 25 days of paid leave a year.\n")
    (folder / "remote.md").write_text("# Remote work\n\nStaff may work remotely three days.\n")
    (folder / "secret.md").write_text(
        f"# Bonus scheme\n\nThe {MARKER} bonus pays Jane Roe 4000 euros in March.\n"
    )
    write_tenants(files_tenant(TENANT, folder))
    summary = materialize_tenant(TENANT, home)
    assert summary.success and summary.published and summary.documents == 3
    return folder
