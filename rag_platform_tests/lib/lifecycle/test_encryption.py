"""Encryption at rest on a tenant materialized by a real Dagster run (real caches, sync state,
Parquet assets, Qdrant Edge shards) on SQLite and PostgreSQL: no plaintext of a known sentence
on disk or in the text columns, master-key rotation through the CLI that leaves every sealed
byte as it was, and crypto-shredding by ``erase tenant``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from rag_platform.cli import app
from rag_platform.lib.crypto import MAGIC, KeyDestroyedError, TenantCipher, is_sealed
from rag_platform.lib.ingestion.sync import SourceSync
from rag_platform.lib.store import MetadataStore, QueryLogEntry
from rag_platform.lib.store.schema import data_keys_table, feedback_table, query_log_table
from rag_platform.lib.tenants import TenantConfig, load_registry
from rag_platform.runner import materialize_tenant
from rag_platform.settings import Settings, get_settings
from rag_platform_tests.lib.lifecycle.conftest import MARKER, TENANT
from rag_platform_tests.utils.sealed import file_text, files_mentioning

runner = CliRunner()
QUESTION = f"Who gets the {MARKER} bonus?"


def _last_json(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.strip()][-1])


def _digests(*roots: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _tenant_config() -> TenantConfig:
    settings = get_settings()
    return load_registry(settings.tenants_file, settings.data_dir).get(TENANT)


def _store() -> MetadataStore:
    store = MetadataStore.from_settings(get_settings())
    store.migrate()
    return store


@pytest.mark.slow
@pytest.mark.parametrize(
    "home", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)], indirect=True
)
def test_sealed_at_rest_rotated_and_crypto_shredded(home: Settings, handbook: Path) -> None:
    cache, storage = home.cache_dir / TENANT, home.storage_dir
    store = _store()
    cipher = store.keyring.cipher(TENANT)

    # 1. on disk: the sentence is nowhere in plaintext, and every copy opens through the cipher
    assert files_mentioning(cache, MARKER) == []
    assert files_mentioning(storage, MARKER) == []
    readable = files_mentioning(cache, MARKER, cipher)
    assert {"parsed.parquet", "masked.parquet", "chunks.parquet"} <= set(readable)
    assert any(p.startswith("sync/") and p.endswith(".parquet") for p in readable)
    assert {"chunks/handbook", "source_documents/handbook", "parsed_documents/handbook"} <= set(
        files_mentioning(storage, MARKER, cipher)
    )
    for asset in ("source_documents", "parsed_documents", "masked_documents", "chunks"):
        assert (storage / asset / TENANT).read_bytes()[:4] == MAGIC
    [state] = list((cache / "sync").glob("*/state.json"))
    assert is_sealed(state.read_bytes()) and "cursor" in file_text(state, cipher)
    # the pipeline's own readers: the sync frame opens the sealed rows
    frame = SourceSync(cache, cipher=cipher).run(_tenant_config()).frame
    holding = [
        row.doc_id
        for row in frame.itertuples()
        if MARKER in (row.text or "") or MARKER.encode() in (row.content or b"")
    ]
    assert len(frame) == 3 and len(holding) == 1

    # 2. the metadata store: question and comment sealed in their columns
    entry = QueryLogEntry(tenant=TENANT, key_id="k1", question_masked=QUESTION)
    store.log_queries([entry])
    store.add_feedback(entry.query_id, TENANT, "k1", 5, "answer", f"the {MARKER} answer")
    with store.engine.connect() as conn:
        raw = [
            *conn.execute(select(query_log_table.c.question_masked)).scalars(),
            *conn.execute(select(feedback_table.c.comment)).scalars(),
        ]
        wrapped_before = conn.execute(select(data_keys_table.c.wrapped)).scalars().all()
    assert raw and all(MARKER not in r and r.startswith("rgs1:") for r in raw)
    assert store.get_query(entry.query_id).question_masked == QUESTION  # type: ignore[union-attr]
    sealed_copy = (storage / "chunks" / TENANT).read_bytes()

    # 3. rotate-master: only the wrapped keys change; everything still reads
    before = _digests(cache, storage)
    result = runner.invoke(app, ["keys", "rotate-master"])
    assert result.exit_code == 0, result.output
    rotation = _last_json(result.stdout)
    assert rotation["rotated"] is True and rotation["rewrapped"] == 1
    assert rotation["from"] != [rotation["to"]]
    assert _digests(cache, storage) == before
    fresh = _store()
    with fresh.engine.connect() as conn:
        assert conn.execute(select(data_keys_table.c.wrapped)).scalars().all() != wrapped_before
    assert fresh.get_query(entry.query_id).question_masked == QUESTION  # type: ignore[union-attr]
    assert {"chunks.parquet"} <= set(files_mentioning(cache, MARKER, fresh.keyring.cipher(TENANT)))
    summary = materialize_tenant(TENANT, get_settings())  # the pipeline reads through it too
    assert summary.success and summary.documents == 3
    [audit] = fresh.list_audit(None, "keys.rotate_master")
    assert audit.details["rewrapped"] == 1

    # 4. erase tenant: keys destroyed first, then caches, assets, shards, rows, registry
    result = runner.invoke(app, ["erase", "tenant", "--tenant", TENANT])
    assert result.exit_code == 0, result.output
    receipt = _last_json(result.stdout)
    assert receipt["kind"] == "tenant" and receipt["verification"]["passed"] is True
    places = {r["where"] for r in receipt["removed"]}
    assert {"data_keys", "cache", "asset", "index", "rows", "registry"} <= places
    assert not cache.exists() and not (home.index_dir / TENANT).exists()
    after = _store()
    with pytest.raises(KeyDestroyedError):  # a copy taken before the erasure is shredded
        TenantCipher(TENANT, after.keyring).open(sealed_copy, "asset")
    assert after.list_queries(TENANT) == [] and after.list_feedback(TENANT) == []
    [audit] = after.list_audit(TENANT, "erasure.tenant")
    assert audit.details["erasure_id"] == receipt["erasure_id"]
    assert after.verify_audit().intact
    for s in (store, fresh, after):
        s.dispose()
