"""Erasure of a document through the CLI and the admin API, on a tenant materialized by real
Dagster runs (real caches, Parquet assets and Qdrant Edge shards), and of a principal on SQLite
and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from rag_platform.cli import app
from rag_platform.lib.index.backend import open_backend
from rag_platform.lib.lifecycle.erasure import PrincipalEraser, verify_document_erasure
from rag_platform.lib.models import make_doc_id
from rag_platform.lib.store import MetadataStore, QueryLogEntry
from rag_platform.lib.store.conversations import ConversationMessage
from rag_platform.lib.store.golden_candidates import GoldenCandidate
from rag_platform.runner import materialize_tenant
from rag_platform.settings import Settings, get_settings
from rag_platform_tests.lib.lifecycle.conftest import MARKER, TENANT
from rag_platform_tests.utils.sealed import files_mentioning
from rag_platform_tests.utils.services import fresh_postgres_database
from serving.main import create_app

runner = CliRunner()


def _last_json(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.strip()][-1])


def _files_mentioning(root: Path, needle: str) -> list[str]:
    """Every file under ``root`` whose content, read through the tenant's cipher (Parquet
    frames and cache values opened, other files as bytes), holds ``needle``."""
    store = MetadataStore.from_settings(get_settings())
    try:
        return files_mentioning(root, needle, store.keyring.cipher(TENANT))
    finally:
        store.dispose()


@pytest.mark.slow
class TestDocumentErasure:
    def test_cli_erasure_is_verified_survives_resync_and_is_released(
        self, home: Settings, handbook: Path
    ) -> None:
        doc_id = make_doc_id(TENANT, "files", "secret.md")
        assert _files_mentioning(home.cache_dir / TENANT, MARKER)
        assert _files_mentioning(home.storage_dir, MARKER)

        result = runner.invoke(app, ["erase", "document", "--tenant", TENANT, "--doc-id", doc_id])
        assert result.exit_code == 0, result.output
        receipt = _last_json(result.stdout)
        assert receipt["subject"] == doc_id and receipt["verification"]["passed"] is True
        places = {r["path"] for r in receipt["removed"]}
        assert {"cache/handbook/sync", "cache/handbook/chunks.parquet"} <= places
        assert "storage/chunks/handbook" in places and "storage/source_documents/handbook" in places
        # the published version still holds it: excluded from search, pending the next version
        assert receipt["pending"] and "still holds" in receipt["pending"][0]
        checks = {c["name"]: c for c in receipt["verification"]["checks"]}
        assert checks["search"]["passed"] and checks["search"]["detail"].startswith("no chunk")
        # nothing of its text is left in the caches or the stored assets
        assert _files_mentioning(home.cache_dir / TENANT, MARKER) == []
        assert _files_mentioning(home.storage_dir, MARKER) == []

        store = MetadataStore.from_settings(home)
        [audit] = store.list_audit(TENANT, "erasure.document")
        assert audit.details["erasure_id"] == receipt["erasure_id"] and audit.actor == "cli"

        # a re-sync of the source (the file is still there) does not bring it back
        summary = materialize_tenant(TENANT, home)
        assert summary.success and summary.published and summary.documents == 2
        backend = open_backend(home)
        published = store.get_published_version(TENANT)
        assert published is not None and published.version == summary.index_version
        reader = backend.open_reader(TENANT, published.version, published.path)
        try:
            assert {p["doc_id"] for _, p in reader.payloads()} == {
                make_doc_id(TENANT, "files", "leave.md"),
                make_doc_id(TENANT, "files", "remote.md"),
            }
        finally:
            reader.close()
        result = runner.invoke(app, ["erase", "verify", "--tenant", TENANT, "--doc-id", doc_id])
        assert result.exit_code == 0, result.output
        verified = _last_json(result.stdout)
        names = {c["name"] for c in verified["checks"]}
        assert verified["passed"] and {"caches", "assets", "new_versions", "search"} <= names
        assert _files_mentioning(home.cache_dir / TENANT, MARKER) == []
        assert _files_mentioning(home.storage_dir, MARKER) == []

        result = runner.invoke(app, ["erase", "release", "--tenant", TENANT, "--doc-id", doc_id])
        assert result.exit_code == 0, result.output
        assert materialize_tenant(TENANT, home).documents == 3
        result = runner.invoke(app, ["erase", "verify", "--tenant", TENANT, "--doc-id", doc_id])
        assert result.exit_code == 1  # released and re-ingested: the verification sees it all
        failed = {c["name"] for c in _last_json(result.stdout)["checks"] if not c["passed"]}
        assert {"suppressed", "caches", "assets", "new_versions"} <= failed

        # erased again with --rebuild: the published version no longer holds it, nothing pending
        result = runner.invoke(
            app, ["erase", "document", "--tenant", TENANT, "--doc-id", doc_id, "--rebuild"]
        )
        assert result.exit_code == 0, result.output
        receipt = _last_json(result.stdout)
        assert receipt["rebuild"]["published"] and receipt["rebuild"]["documents"] == 2
        assert receipt["verification"]["passed"] and receipt["pending"] == []
        assert store.list_audit(TENANT, "erasure.verify")
        store.dispose()

    @pytest.mark.parametrize(
        "home", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)], indirect=True
    )
    def test_admin_api_erasure_takes_effect_in_search_at_once(
        self, home: Settings, handbook: Path
    ) -> None:
        doc_id = make_doc_id(TENANT, "files", "secret.md")
        store = MetadataStore.from_settings(home)
        _, admin = store.create_api_key(TENANT, ["all"], role="admin", actor="test")
        _, reader_key = store.create_api_key(TENANT, ["all"], actor="test")
        query = {"query": f"{MARKER} bonus Jane Roe", "top_k": 5}
        with TestClient(create_app(home)) as client:

            def hits() -> set[str]:
                r = client.post(
                    "/v1/search", json=query, headers={"Authorization": f"Bearer {reader_key}"}
                )
                assert r.status_code == 200, r.text
                return {h["doc_id"] for h in r.json()["hits"]}

            assert doc_id in hits()
            url = f"/v1/admin/documents/{doc_id}"
            r = client.delete(url, headers={"Authorization": f"Bearer {reader_key}"})
            assert r.status_code == 403
            r = client.delete(
                "/v1/admin/documents/..%2F..%2Fetc", headers={"Authorization": f"Bearer {admin}"}
            )
            assert r.status_code in (404, 422) and "error" in r.json()
            r = client.delete(url, headers={"Authorization": f"Bearer {admin}"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["verification"]["passed"] and body["actor"].startswith("key:")
            assert doc_id not in hits()  # the same question no longer finds it (no cached hit)
            listed = client.get(
                "/v1/admin/documents", headers={"Authorization": f"Bearer {admin}"}
            ).json()
            assert doc_id not in {d["doc_id"] for d in listed["documents"]}
        store.dispose()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def test_principal_erasure(rag_home: Settings, backend: str, tmp_path: Path) -> None:
    def run(url: str) -> None:
        settings = rag_home.model_copy(update={"database_url": url})
        store = MetadataStore.from_settings(settings)
        store.migrate()
        store.upsert_tenant(TENANT)
        mine = QueryLogEntry(tenant=TENANT, key_id="aaaaaaaaaaaa", question_masked="my q")
        other = QueryLogEntry(tenant=TENANT, key_id="bbbbbbbbbbbb", question_masked="their q")
        store.log_queries([mine, other])
        store.add_feedback(other.query_id, TENANT, "aaaaaaaaaaaa", 1, "answer", "mine")
        convs = store.conversations
        gone = convs.create(TENANT, "aaaaaaaaaaaa", "mine")
        convs.append(
            TENANT,
            "aaaaaaaaaaaa",
            gone.conversation_id,
            [ConversationMessage(0, "user", "q"), ConversationMessage(0, "assistant", "a")],
        )
        kept = convs.create(TENANT, "bbbbbbbbbbbb", "theirs")
        store.golden_candidates.add(
            [
                GoldenCandidate(
                    tenant=TENANT, query_id=mine.query_id, key_id="aaaaaaaaaaaa", rating=1
                ),
                GoldenCandidate(
                    tenant=TENANT, query_id=other.query_id, key_id="bbbbbbbbbbbb", rating=2
                ),
            ]
        )
        spool = settings.home / "spool" / "query_log.jsonl"
        spool.parent.mkdir(parents=True, exist_ok=True)
        spool.write_text(
            json.dumps({"tenant": TENANT, "key_id": "aaaaaaaaaaaa", "question": "spooled"})
            + "\n"
            + json.dumps({"tenant": TENANT, "key_id": "bbbbbbbbbbbb", "question": "kept"})
            + "\n"
        )
        receipt = PrincipalEraser(settings, store).run(TENANT, "aaaaaaaaaaaa", actor="test")
        assert receipt.verification.passed
        assert {(r.where, r.items) for r in receipt.removed} == {
            ("query_log", 1),
            ("feedback", 1),
            ("conversations", 1),
            ("conversations", 2),  # its messages
            ("golden_candidates", 1),
            ("spool", 1),
        }
        assert {c.name for c in receipt.verification.checks} >= {
            "conversations",
            "golden_candidates",
        }
        assert [c.conversation_id for c in convs.find(TENANT)] == [kept.conversation_id]
        assert [c.key_id for c in store.golden_candidates.find(TENANT)] == ["bbbbbbbbbbbb"]
        assert receipt.pending == []
        assert [q.query_id for q in store.list_queries(TENANT)] == [other.query_id]
        assert store.list_feedback(TENANT) == []
        assert "spooled" not in spool.read_text() and "kept" in spool.read_text()
        [audit] = store.list_audit(TENANT, "erasure.principal")
        assert audit.details["subject"] == "aaaaaaaaaaaa"
        store.dispose()

    if backend == "sqlite":
        run(f"sqlite:///{tmp_path / 'meta.db'}")
    else:
        with fresh_postgres_database() as url:
            run(url)


def test_erasure_refuses_what_is_not_a_document_id(rag_home: Settings) -> None:
    from rag_platform.lib.lifecycle.erasure import DocumentEraser

    store = MetadataStore.from_settings(rag_home)
    store.migrate()
    eraser = DocumentEraser(rag_home, store, open_backend(rag_home))
    for bad in ["../../etc/passwd", "*", "", "x" * 10_000]:
        with pytest.raises(ValueError):
            eraser.run(TENANT, bad)
    with pytest.raises(ValueError):
        verify_document_erasure(rag_home, store, open_backend(rag_home), TENANT, "not-a-uuid")
    assert store.list_audit(TENANT) == []
    store.dispose()
