"""Backups that restore (rag_platform.lib.backup): a real tenant (a real shard, or a real Dagster
run), backed up to a folder or to S3 (a moto server on loopback), restored into an empty
RAG_HOME, and searched through the real API with the same hits as before."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from rag_platform.cli import app
from rag_platform.lib.backup import BackupError, TenantBackup, TenantRestore, verify_backup
from rag_platform.lib.net import free_port
from rag_platform.lib.store import MetadataStore
from rag_platform.settings import Settings, get_settings
from rag_platform_tests.conftest import SCIFACT, scifact_tenant
from rag_platform_tests.serving.factories import (
    DIM,
    index_points,
    make_settings,
    new_store,
    publish_tenant,
    scifact_docs,
)
from serving.main import create_app

runner = CliRunner()
TENANT = "acme"


def golden_questions(n: int = 8) -> list[str]:
    """The first ``n`` SciFact queries (the scifact tenant's golden questions)."""
    with (SCIFACT / "queries.jsonl").open() as f:
        return [json.loads(next(f))["text"] for _ in range(n)]


def search_hits(settings: Settings, key: str, questions: list[str]) -> list[list[str]]:
    """The chunk ids ``/v1/search`` returns for each question (top 10), through the real app."""
    with TestClient(create_app(settings)) as client:
        out = []
        for q in questions:
            r = client.post(
                "/v1/search",
                json={"query": q, "top_k": 10},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert r.status_code == 200, r.text
            out.append([h["chunk_id"] for h in r.json()["hits"]])
        return out


def home_settings(home: Path, master_key_file: Path | None = None) -> Settings:
    """Settings of a RAG_HOME; the homes of one test share one master key file (beside them)
    unless ``master_key_file`` says otherwise: a restore needs the backup's master key."""
    return make_settings(
        home,
        tenants_file=home / "tenants.yaml",
        master_key_file=master_key_file or home.parent / "master.key",
    )


@pytest.fixture
def source(tmp_path: Path) -> Iterator[tuple[Settings, MetadataStore, str]]:
    """A tenant with a published real shard (30 SciFact abstracts, one visible to `secret`
    only), a registry entry, a cache file and a reader key."""
    settings = home_settings(tmp_path / "src")
    settings.tenants_file.write_text(yaml.safe_dump({"tenants": [scifact_tenant(TENANT)]}))
    store = new_store(settings)
    docs = scifact_docs(0, 30)
    docs[0].acl_groups = ["secret"]
    publish_tenant(store, settings, TENANT, "v1", docs)
    cache = settings.cache_dir / TENANT / "parsed"
    cache.mkdir(parents=True)
    (cache / "abc.json").write_text('{"text": "cached"}')
    _, key = store.create_api_key(TENANT, ["all"], name="backup-test")
    yield settings, store, key
    store.dispose()


class TestBackupRestore:
    def test_restore_answers_like_the_original(
        self, source: tuple[Settings, MetadataStore, str], tmp_path: Path
    ) -> None:
        settings, store, key = source
        questions = golden_questions()
        before = search_hits(settings, key, questions)
        assert all(len(hits) == 10 for hits in before)
        receipt = TenantBackup(settings, store).run(TENANT, str(tmp_path / "bk"))
        assert receipt.index_version == "v1"
        assert receipt.rows["api_keys"] == 1 and receipt.rows["index_versions"] == 1
        assert receipt.rows["audit_log"] >= 3  # key.create, publish, ...

        target = home_settings(tmp_path / "dst")
        dst_store = new_store(target)
        try:
            restored = TenantRestore(target, dst_store).run(str(tmp_path / "bk"))
            assert restored.tenant == TENANT and restored.replaced is False
            # the same API key (its hash came along), the same hits, ACLs intact
            assert search_hits(target, key, questions) == before
            (published,) = [v for v in dst_store.list_versions(TENANT) if v.status == "published"]
            assert Path(published.path) == target.index_dir / TENANT / "v1"
            assert (target.cache_dir / TENANT / "parsed" / "abc.json").read_text() == (
                '{"text": "cached"}'
            )
            assert yaml.safe_load(target.tenants_file.read_text())["tenants"][0]["id"] == TENANT
            chain = dst_store.verify_audit()
            assert chain.intact, chain
            actions = [e.action for e in dst_store.list_audit(TENANT)]
            assert actions[-1] == "backup.restore" and "key.create" in actions
            # a second restore is refused, --force replaces
            with pytest.raises(BackupError, match="exists"):
                TenantRestore(target, dst_store).run(str(tmp_path / "bk"))
            again = TenantRestore(target, dst_store).run(str(tmp_path / "bk"), force=True)
            assert again.replaced is True
            assert search_hits(target, key, questions[:2]) == before[:2]
            assert len(dst_store.list_api_keys(TENANT)) == 1
            assert dst_store.verify_audit().intact
        finally:
            dst_store.dispose()

    def test_restore_needs_the_backups_master_key(
        self, source: tuple[Settings, MetadataStore, str], tmp_path: Path
    ) -> None:
        settings, store, _ = source
        sealed = store.keyring.cipher(TENANT).seal(b"cached text", "cache")
        TenantBackup(settings, store).run(TENANT, str(tmp_path / "bk"))
        other = home_settings(tmp_path / "other", master_key_file=tmp_path / "other.key")
        other_store = new_store(other)
        try:
            with pytest.raises(BackupError, match="master key"):
                TenantRestore(other, other_store).run(str(tmp_path / "bk"))
            assert not (other.index_dir / TENANT).exists()  # nothing written
        finally:
            other_store.dispose()
        target = home_settings(tmp_path / "dst")  # the same master key file
        dst_store = new_store(target)
        try:
            TenantRestore(target, dst_store).run(str(tmp_path / "bk"))
            assert dst_store.keyring.cipher(TENANT).open(sealed, "cache") == b"cached text"
        finally:
            dst_store.dispose()

    @pytest.mark.parametrize(
        "tamper",
        ["shard-byte", "cache-file", "metadata-row", "extra-file", "missing-file", "traversal"],
    )
    def test_tampered_backup_is_refused_and_nothing_written(
        self, source: tuple[Settings, MetadataStore, str], tmp_path: Path, tamper: str
    ) -> None:
        settings, store, _ = source
        folder = tmp_path / "bk"
        TenantBackup(settings, store).run(TENANT, str(folder))
        verify_backup(folder)  # intact before the tampering
        manifest = json.loads((folder / "manifest.json").read_text())
        shard_file = next(f for f in sorted(manifest["files"]) if f.startswith("index/v1/"))
        if tamper == "shard-byte":
            data = bytearray((folder / shard_file).read_bytes())
            data[len(data) // 2] ^= 0x01
            (folder / shard_file).write_bytes(bytes(data))
        elif tamper == "cache-file":
            (folder / "cache" / "parsed" / "abc.json").write_text('{"text": "evil!!"}')
        elif tamper == "metadata-row":
            path = folder / "metadata" / "api_keys.jsonl"
            row = json.loads(path.read_text())
            row["role"] = "admin"  # an escalation hidden in the backup
            path.write_text(json.dumps(row) + "\n")
        elif tamper == "extra-file":
            (folder / "cache" / "planted.json").write_text("{}")
        elif tamper == "missing-file":
            (folder / shard_file).unlink()
        else:
            manifest["files"]["../../escape"] = {"sha256": "0" * 64, "bytes": 0}
            (folder / "manifest.json").write_text(json.dumps(manifest))
        target = home_settings(tmp_path / "dst")
        dst_store = new_store(target)
        try:
            with pytest.raises(BackupError, match="checksum|not in the manifest|missing|unsafe"):
                TenantRestore(target, dst_store).run(str(folder))
            assert not dst_store.tenant_exists(TENANT)
            assert not (target.index_dir / TENANT).exists()
            assert not target.tenants_file.exists()
        finally:
            dst_store.dispose()

    def test_backup_refuses_unknown_tenant_and_non_empty_target(
        self, source: tuple[Settings, MetadataStore, str], tmp_path: Path
    ) -> None:
        settings, store, _ = source
        with pytest.raises(BackupError, match="unknown tenant"):
            TenantBackup(settings, store).run("nobody", str(tmp_path / "x"))
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "f").write_text("x")
        with pytest.raises(BackupError, match="not empty"):
            TenantBackup(settings, store).run(TENANT, str(tmp_path / "full"))


@pytest.mark.integration
class TestPostgres:
    def test_rows_of_every_table_round_trip_between_postgres_databases(
        self, tmp_path: Path
    ) -> None:
        from datetime import UTC, datetime

        from rag_platform.lib.store import QueryLogEntry
        from rag_platform_tests.utils.services import fresh_postgres_database

        with fresh_postgres_database() as src_url, fresh_postgres_database() as dst_url:
            settings = make_settings(
                tmp_path / "src",
                tenants_file=tmp_path / "src" / "tenants.yaml",
                database_url=src_url,
                master_key_file=tmp_path / "master.key",  # a restore needs the backup's key
            )
            settings.tenants_file.write_text(yaml.safe_dump({"tenants": [scifact_tenant(TENANT)]}))
            store = new_store(settings)
            publish_tenant(store, settings, TENANT, "v1", scifact_docs(0, 12))
            info, key = store.create_api_key(TENANT, ["all", "hr"], role="admin", name="ops")
            entry = QueryLogEntry(
                tenant=TENANT,
                key_id=info.key_id,
                question_masked="q <PERSON>",
                top_k=5,
                filters={"source_ids": ["corpus"]},
                hit_chunk_ids=["a", "b"],
            )
            store.log_queries([entry])
            store.add_feedback(entry.query_id, TENANT, info.key_id, 4, "helpful", "good")
            from rag_platform.lib.store.conversations import ConversationMessage

            conv = store.conversations.create(TENANT, info.key_id, "t")
            store.conversations.append(
                TENANT,
                info.key_id,
                conv.conversation_id,
                [ConversationMessage(0, "user", "q?"), ConversationMessage(0, "assistant", "a")],
            )
            store.record_usage(TENANT, "queries", 3.0, at=datetime(2026, 11, 30, 12, tzinfo=UTC))
            store.audit("tenant.sync", "other", "sensor", {})  # another tenant: not backed up
            receipt = TenantBackup(settings, store).run(TENANT, str(tmp_path / "bk"))
            assert receipt.rows["query_log"] == 1 and receipt.rows["feedback"] == 1
            assert receipt.rows["usage_events"] == 1

            target = make_settings(
                tmp_path / "dst",
                tenants_file=tmp_path / "dst" / "tenants.yaml",
                database_url=dst_url,
                master_key_file=tmp_path / "master.key",  # a restore needs the backup's key
            )
            dst = new_store(target)
            try:
                TenantRestore(target, dst).run(str(tmp_path / "bk"))
                assert dst.authenticate(key) == store.authenticate(key)
                (q,) = dst.list_queries(TENANT)
                assert (q.query_id, q.filters, q.hit_chunk_ids) == (
                    entry.query_id,
                    {"source_ids": ["corpus"]},
                    ["a", "b"],
                )
                assert [f.comment for f in dst.list_feedback(TENANT)] == ["good"]
                got = dst.conversations.get(TENANT, info.key_id, conv.conversation_id)
                assert [m.content for m in got.messages] == ["q?", "a"]
                assert dst.usage_by_day(TENANT, datetime(2026, 11, 30).date())["queries"] == 3.0
                assert dst.verify_audit().intact
                assert not dst.list_audit("other")
                restored = {
                    e.details["restored_from"]["id"]: (e.action, e.created_at)
                    for e in dst.list_audit(TENANT)
                    if "restored_from" in e.details
                }
                original = {
                    e.id: (e.action, e.created_at)
                    for e in store.list_audit(TENANT)
                    if e.action != "backup.create"  # written after the snapshot
                }
                assert restored == original and len(original) >= 3
            finally:
                dst.dispose()
                store.dispose()


@pytest.mark.slow
class TestServerBackend:
    def test_collection_is_exported_and_recreated_with_the_same_hits(self, tmp_path: Path) -> None:
        """With RAG_QDRANT_URL (qdrant-client local mode: the server API's stand-in), the
        published collection's points are exported and rebuilt under the alias."""
        from rag_platform.lib.index.backend import open_backend

        master_key = tmp_path / "master.key"  # a restore needs the backup's master key
        settings = make_settings(
            tmp_path / "src",
            tenants_file=tmp_path / "src" / "tenants.yaml",
            qdrant_url=str(tmp_path / "qdrant-src"),
            master_key_file=master_key,
        )
        settings.tenants_file.write_text(yaml.safe_dump({"tenants": [scifact_tenant(TENANT)]}))
        store = new_store(settings)
        docs = scifact_docs(0, 30)
        docs[0].acl_groups = ["secret"]
        backend = open_backend(settings)
        writer = backend.create_writer(TENANT, "v1", DIM)
        writer.upsert(index_points(TENANT, docs))
        writer.close()
        location = backend.location(TENANT, "v1")
        store.register_version(TENANT, "v1", location, 30, 30, config_hash="test")
        store.mark_version_built(TENANT, "v1")
        store.publish_version(TENANT, "v1")
        backend.publish(TENANT, "v1")
        _, key = store.create_api_key(TENANT, ["all", "secret"])
        questions = golden_questions()
        before = search_hits(settings, key, questions)
        assert all(len(h) == 10 for h in before)
        receipt = TenantBackup(settings, store).run(TENANT, str(tmp_path / "bk"))
        assert receipt.index_version == "v1"
        store.dispose()

        target = make_settings(
            tmp_path / "dst",
            tenants_file=tmp_path / "dst" / "tenants.yaml",
            qdrant_url=str(tmp_path / "qdrant-dst"),
            master_key_file=master_key,
        )
        edge_target = home_settings(tmp_path / "edge")  # the same master key file
        edge_store = new_store(edge_target)
        with pytest.raises(BackupError, match="server index"):
            TenantRestore(edge_target, edge_store).run(str(tmp_path / "bk"))
        edge_store.dispose()
        dst_store = new_store(target)
        try:
            TenantRestore(target, dst_store).run(str(tmp_path / "bk"))
            assert search_hits(target, key, questions) == before
            assert open_backend(target).alias_target(TENANT) == location  # type: ignore[attr-defined]
        finally:
            dst_store.dispose()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server on loopback with bucket ``backups``; the AWS_* environment points at
    it. Yields the endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3").create_bucket(Bucket="backups")
    yield endpoint
    server.stop()


def _cli(args: list[str]) -> tuple[int, dict[str, Any] | None, str]:
    get_settings.cache_clear()
    result = runner.invoke(app, args)
    get_settings.cache_clear()
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    try:
        last = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        last = None
    return result.exit_code, last, result.output


@pytest.mark.slow
class TestBackupAfterDagsterRun:
    def test_dagster_published_tenant_restores_from_folder_and_s3(
        self,
        rag_home: Settings,
        write_tenants: Any,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
        s3: str,
    ) -> None:
        from rag_platform.runner import materialize_tenant

        write_tenants(scifact_tenant("sci", limit=40))
        summary = materialize_tenant("sci", rag_home)
        assert summary.as_json()["published"] is True
        code, _, output = _cli(["keys", "create", "--tenant", "sci"])
        assert code == 0, output
        key = [line for line in output.splitlines() if line.startswith("rag_")][-1]
        questions = golden_questions(10)
        before = search_hits(get_settings(), key, questions)
        assert all(before)

        code, folder_receipt, output = _cli(
            ["backup", "--tenant", "sci", "--to", str(tmp_path / "bk")]
        )
        assert code == 0, output
        assert folder_receipt is not None and folder_receipt["index_version"]
        code, s3_receipt, output = _cli(
            ["backup", "--tenant", "sci", "--to", "s3://backups/nightly/sci"]
        )
        assert code == 0, output
        assert s3_receipt is not None and s3_receipt["files"] == folder_receipt["files"]

        # another RAG_HOME has another master key: the sealed backup is refused, not garbled
        home = tmp_path / "restored-other-master"
        monkeypatch.setenv("RAG_HOME", str(home))
        monkeypatch.setenv("RAG_TENANTS_FILE", str(home / "tenants.yaml"))
        code, _, output = _cli(["restore", "--from", str(tmp_path / "bk")])
        assert code == 2 and "master key" in output, output
        # the operator brings the master key along, as RAG_MASTER_KEY or its key file
        monkeypatch.setenv("RAG_MASTER_KEY_FILE", str(rag_home.resolved_master_key_file))
        for n, source in enumerate([str(tmp_path / "bk"), "s3://backups/nightly/sci"]):
            home = tmp_path / f"restored-{n}"
            monkeypatch.setenv("RAG_HOME", str(home))
            monkeypatch.setenv("RAG_TENANTS_FILE", str(home / "tenants.yaml"))
            code, receipt, output = _cli(["restore", "--from", source])
            assert code == 0, output
            assert receipt is not None and receipt["tenant"] == "sci"
            assert receipt["index_version"] == folder_receipt["index_version"]
            assert search_hits(get_settings(), key, questions) == before
            code, chain, output = _cli(["audit", "verify"])
            assert code == 0 and chain is not None and chain["intact"], output
            code, _, output = _cli(["restore", "--from", source])
            assert code == 2 and "exists" in output

        # a tampered object in S3 is refused
        import boto3

        client = boto3.client("s3")
        obj = next(
            o["Key"]
            for o in client.list_objects_v2(Bucket="backups", Prefix="nightly/sci/metadata/")[
                "Contents"
            ]
        )
        client.put_object(Bucket="backups", Key=obj, Body=b"{}\n")
        home = tmp_path / "restored-tampered"
        monkeypatch.setenv("RAG_HOME", str(home))
        monkeypatch.setenv("RAG_TENANTS_FILE", str(home / "tenants.yaml"))
        code, _, output = _cli(["restore", "--from", "s3://backups/nightly/sci"])
        assert code == 2 and "checksum mismatch" in output
        assert not (home / "indexes" / "sci").exists()
        shutil.rmtree(home, ignore_errors=True)
