"""The ingestion assets under a tenant's time budgets, in a real in-process Dagster run: a
document over parse_seconds or mask_seconds is quarantined, the run succeeds and publishes the
others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag_platform.lib.index.edge import EdgeIndexReader
from rag_platform.lib.models import make_doc_id
from rag_platform.lib.store import MetadataStore
from rag_platform.runner import materialize_tenant
from rag_platform.settings import Settings
from rag_platform_tests.conftest import TenantWriter, files_tenant
from rag_platform_tests.utils.pdfs import write_all_filings_pdf

#: Every 10-Q in one PDF: seconds of CPU to parse, tens of seconds to mask, over 1 s anywhere.
SLOW = "all-filings.pdf"


def _published_doc_ids(settings: Settings, tenant: str) -> set[str]:
    store = MetadataStore.from_settings(settings)
    try:
        published = store.get_published_version(tenant)
    finally:
        store.dispose()
    assert published is not None
    with EdgeIndexReader(Path(published.path)) as reader:
        return {p["doc_id"] for _, p in reader.scroll()}


@pytest.mark.parametrize(
    ("budget", "asset", "reason"),
    [
        ("parse_seconds", "parsed_documents", "parse over parse_seconds (1 s)"),
        ("mask_seconds", "masked_documents", "mask over mask_seconds (1 s)"),
    ],
)
def test_a_document_over_a_time_budget_is_quarantined_and_the_run_publishes_the_rest(
    rag_home: Settings,
    write_tenants: TenantWriter,
    tmp_path: Path,
    budget: str,
    asset: str,
    reason: str,
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    write_all_filings_pdf(folder, SLOW)
    (folder / "backups.txt").write_text("Backups are kept for 30 days in two regions.\n")
    (folder / "travel.txt").write_text("Trains are preferred for trips under 500 km.\n")
    write_tenants(files_tenant("budget", folder, budgets={budget: 1.0}))

    summary = materialize_tenant("budget", rag_home)

    assert summary.success and summary.published, summary.failed_checks
    assert summary.quarantined == 1
    metadata = summary.metadata[asset]
    assert metadata["quarantined"] == 1 and SLOW in metadata["quarantine"]
    assert reason in metadata["quarantine"]
    stage = "parse" if asset == "parsed_documents" else "mask"
    state = rag_home.cache_dir / "budget"
    records = json.loads((state / f"quarantine_{stage}.json").read_text())
    assert [(Path(r["uri"]).name, r["reason"]) for r in records] == [(SLOW, reason)]
    published = _published_doc_ids(rag_home, "budget")
    assert published == {
        make_doc_id("budget", "files", "backups.txt"),
        make_doc_id("budget", "files", "travel.txt"),
    }
