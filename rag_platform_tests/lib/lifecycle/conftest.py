"""A small tenant materialized by a real Dagster run: three Markdown files, one of them holding
a marker phrase and a person's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_platform.runner import materialize_tenant
from rag_platform.settings import Settings
from rag_platform_tests.conftest import TenantWriter, files_tenant

#: A phrase only ``secret.md`` holds.
MARKER = "quokkaberry"
TENANT = "handbook"


@pytest.fixture
def handbook(rag_home: Settings, write_tenants: TenantWriter, tmp_path: Path) -> Path:
    folder = tmp_path / "handbook"
    folder.mkdir()
    (folder / "leave.md").write_text("# Leave\n\nEmployees get 25 days of paid leave a year.\n")
    (folder / "remote.md").write_text("# Remote work\n\nStaff may work remotely three days.\n")
    (folder / "secret.md").write_text(
        f"# Bonus scheme\n\nThe {MARKER} bonus pays Jane Roe 4000 euros in March.\n"
    )
    write_tenants(files_tenant(TENANT, folder))
    summary = materialize_tenant(TENANT, rag_home)
    assert summary.success and summary.published and summary.documents == 3
    return folder
