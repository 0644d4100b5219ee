"""The tenant pipeline, materialized in-process with the real Definitions, model and Qdrant Edge
shards: incremental re-sync, deletions, edits, quarantine, and blocking checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

from rag_platform.lib.index.edge import EdgeIndexReader
from rag_platform.lib.models import make_doc_id
from rag_platform.lib.store import MetadataStore
from rag_platform.runner import dagster_instance, load_definitions, materialize_tenant
from rag_platform.settings import Settings
from rag_platform_tests.conftest import SEC_DOCS, SMALL_PDFS, files_tenant, scifact_tenant


def _published_payloads(settings: Settings, tenant: str) -> tuple[str, list[dict]]:
    store = MetadataStore.from_settings(settings)
    try:
        published = store.get_published_version(tenant)
    finally:
        store.dispose()
    assert published is not None
    with EdgeIndexReader(Path(published.path)) as reader:
        return published.version, [p for _, p in reader.scroll()]


class TestIncrementalPipeline:
    def test_resync_of_unchanged_sources_embeds_nothing(self, rag_home, write_tenants) -> None:
        write_tenants(scifact_tenant("sci", limit=25))
        first = materialize_tenant("sci", rag_home)
        assert first.success, first.metadata
        assert first.published and first.documents == 25
        assert first.embedded == first.chunks > 0
        second = materialize_tenant("sci", rag_home)
        assert second.success
        assert second.embedded == 0
        assert second.metadata["parsed_documents"]["processed"] == 0
        assert second.metadata["masked_documents"]["processed"] == 0
        assert second.metadata["chunks"]["processed"] == 0
        assert second.index_version == first.index_version  # nothing changed: no new version
        assert second.metadata["search_index"]["reused"] is True
        assert second.published

    def test_edit_delete_and_bad_files(self, rag_home, write_tenants, tmp_path) -> None:
        folder = tmp_path / "docs"
        folder.mkdir()
        shutil.copy(SEC_DOCS / SMALL_PDFS[0], folder / SMALL_PDFS[0])
        (folder / "corrupt.pdf").write_bytes((SEC_DOCS / SMALL_PDFS[1]).read_bytes()[:20000])
        (folder / "empty.pdf").write_bytes(b"")
        (folder / "keep.md").write_text("# Storage policy\n\nBackups are kept for 30 days.\n")
        (folder / "edit.md").write_text("# Travel\n\nTrains are preferred under 500 km.\n")
        (folder / "gone.txt").write_text("The cafeteria closes at 3 pm on Fridays.\n")
        write_tenants(files_tenant("files", folder))

        first = materialize_tenant("files", rag_home)
        assert first.success and first.published, first.failed_checks
        assert first.quarantined == 2  # the corrupt and the empty PDF; the run went on
        assert first.documents == 6
        v1, payloads = _published_payloads(rag_home, "files")
        docs = {p["doc_id"] for p in payloads}
        gone_id = make_doc_id("files", "files", "gone.txt")
        edit_id = make_doc_id("files", "files", "edit.md")
        pdf_id = make_doc_id("files", "files", SMALL_PDFS[0])
        assert {gone_id, edit_id, pdf_id} <= docs
        old_edit_chunks = {p["chunk_id"] for p in payloads if p["doc_id"] == edit_id}

        (folder / "gone.txt").unlink()
        (folder / "edit.md").write_text("# Travel\n\nFlights need approval by a director.\n")
        second = materialize_tenant("files", rag_home)
        assert second.success and second.published
        assert second.metadata["source_documents"]["deleted"] == 1
        assert second.metadata["source_documents"]["changed"] == 1
        assert 0 < second.embedded < first.embedded  # only the edited file's chunks
        v2, payloads2 = _published_payloads(rag_home, "files")
        assert v2 != v1
        assert gone_id not in {p["doc_id"] for p in payloads2}
        edit_chunks = [p for p in payloads2 if p["doc_id"] == edit_id]
        assert edit_chunks and not ({p["chunk_id"] for p in edit_chunks} & old_edit_chunks)
        assert all("approval" in p["text"] for p in edit_chunks)
        ids = [p["chunk_id"] for p in payloads2]
        assert len(ids) == len(set(ids)) == second.chunks

    def test_acl_change_reaches_index_without_reembedding(
        self, rag_home, write_tenants, tmp_path
    ) -> None:
        folder = tmp_path / "acl"
        (folder / "hr").mkdir(parents=True)
        (folder / "hr" / "salaries.md").write_text("# Pay bands\n\nBand 3 starts at 70k.\n")
        (folder / "public.md").write_text("# Office\n\nThe office opens at 8 am.\n")
        write_tenants(files_tenant("acl", folder))
        assert materialize_tenant("acl", rag_home).published
        (folder / "hr" / ".acl").write_text("# only HR\nhr\n")
        second = materialize_tenant("acl", rag_home)
        assert second.published and second.embedded == 0
        assert second.metadata["source_documents"]["acl_changed"] == 1
        _, payloads = _published_payloads(rag_home, "acl")
        groups = {p["title"]: p["acl_groups"] for p in payloads}
        assert groups == {"salaries": ["hr"], "public": ["all"]}


class TestBlockingChecks:
    def test_failed_chunk_check_keeps_previous_version(
        self, rag_home, write_tenants, tmp_path
    ) -> None:
        folder = tmp_path / "pii"
        folder.mkdir()
        (folder / "a.md").write_text("# Notes\n\nQuarterly numbers are due on Monday.\n")
        tenant = files_tenant("pii", folder)
        write_tenants(tenant)
        first = materialize_tenant("pii", rag_home)
        assert first.published
        # Masking switched off while a document carries an e-mail address: the residual-PII
        # check must block the run before anything is embedded or published.
        (folder / "b.md").write_text("# Contact\n\nWrite to jane.doe@example.com for access.\n")
        write_tenants({**tenant, "pii": {"enabled": False}})
        second = materialize_tenant("pii", rag_home)
        assert not second.success
        assert "chunk_no_residual_pii" in second.failed_checks
        assert "published_index" not in second.metadata
        version, payloads = _published_payloads(rag_home, "pii")
        assert version == first.index_version
        assert all("jane.doe" not in p["text"] for p in payloads)


class TestFailingSource:
    def test_a_moved_folder_keeps_its_documents_in_the_next_version(
        self, rag_home, write_tenants, tmp_path
    ) -> None:
        handbook, policies = tmp_path / "handbook", tmp_path / "policies"
        handbook.mkdir()
        policies.mkdir()
        (handbook / "leave.md").write_text("# Leave\n\nEmployees get 25 days of paid leave.\n")
        (policies / "travel.md").write_text("# Travel\n\nTrains are preferred under 500 km.\n")
        tenant = files_tenant("two", handbook)
        tenant["sources"].append({"id": "policies", "type": "filesystem", "path": str(policies)})
        write_tenants(tenant)
        first = materialize_tenant("two", rag_home)
        assert first.success and first.published and first.documents == 2
        assert first.metadata["source_documents"]["failed_sources"] == {}

        policies.rename(tmp_path / "moved-away")
        (handbook / "remote.md").write_text("# Remote work\n\nTwo days a week from home.\n")
        second = materialize_tenant("two", rag_home)
        assert second.success and second.published, second.failed_checks
        assert second.failed_checks == ["sources_reachable"]  # a warning, not a blocker
        meta = second.metadata["source_documents"]
        assert set(meta["failed_sources"]) == {"policies"}
        assert "policies" in meta["problems_table"] and meta["deleted"] == 0
        version, payloads = _published_payloads(rag_home, "two")
        assert version == second.index_version != first.index_version
        travel = make_doc_id("two", "policies", "travel.md")
        assert travel in {p["doc_id"] for p in payloads}
        assert any("Trains are preferred" in p["text"] for p in payloads)

        instance = dagster_instance(rag_home)
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("source_documents"), "sources_reachable")]
        )
        evaluation = next(iter(record.values())).event.dagster_event.event_specific_data
        assert not evaluation.passed
        assert evaluation.severity == dg.AssetCheckSeverity.WARN
        failed = evaluation.metadata["failed_sources"].value
        assert set(failed) == {"policies"} and "policies" in failed["policies"]


class TestAssetStorage:
    def test_the_platform_rag_home_moves_the_asset_storage(
        self, rag_home, write_tenants, tmp_path
    ) -> None:
        folder = tmp_path / "docs"
        folder.mkdir()
        (folder / "a.md").write_text("# A\n\nfirst\n")
        write_tenants(files_tenant("docs", folder))
        other_home = tmp_path / "other_home"
        instance = dagster_instance(rag_home)
        instance.add_dynamic_partitions("tenants", ["docs"])
        job = load_definitions().resolve_job_def("tenant_pipeline")
        result = job.execute_in_process(
            partition_key="docs",
            instance=instance,
            asset_selection=[dg.AssetKey("source_documents")],
            run_config={"resources": {"platform": {"config": {"rag_home": str(other_home)}}}},
        )
        assert result.success
        assert (other_home / "storage" / "source_documents" / "docs").is_file()
        assert (other_home / "cache" / "docs" / "sync").is_dir()  # per-source sync state
        assert not (rag_home.storage_dir / "source_documents").exists()
