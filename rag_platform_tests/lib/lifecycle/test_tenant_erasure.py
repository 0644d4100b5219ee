"""Erasure of a whole tenant by crypto-shredding (``TenantEraser``, ``erase tenant``) on SQLite
and PostgreSQL: a real published Qdrant Edge shard, real sealed cache and asset files, real
rows; another tenant stays whole."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rag_platform.lib.cache import StageCache
from rag_platform.lib.crypto import PURPOSE_ASSET, KeyDestroyedError
from rag_platform.lib.index.backend import open_backend
from rag_platform.lib.lifecycle.erasure import TenantEraser
from rag_platform.lib.store import MetadataStore, QueryLogEntry
from rag_platform.settings import Settings
from rag_platform_tests.conftest import scifact_tenant
from rag_platform_tests.serving.factories import (
    make_settings,
    new_store,
    publish_tenant,
    scifact_docs,
)
from rag_platform_tests.utils.services import fresh_postgres_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    home = tmp_path / "home"
    extra = {"tenants_file": home / "tenants.yaml"}
    if request.param == "sqlite":
        yield make_settings(home, **extra)
        return
    with fresh_postgres_database() as url:
        yield make_settings(home, database_url=url, **extra)


def _fill(settings: Settings, store: MetadataStore, tenant: str) -> bytes:
    """A published shard, a sealed cache value, sealed asset partitions (one tenant × day),
    a key, a query with feedback; returns the sealed bytes of the chunks asset."""
    publish_tenant(store, settings, tenant, "v1", scifact_docs(0, 4))
    cipher = store.keyring.cipher(tenant)
    cache = StageCache(settings.cache_dir / tenant / "parsed.parquet", cipher)
    cache.put("hash:cfg", {"text": f"parsed text of {tenant}"})
    cache.save()
    chunks = settings.storage_dir / "chunks" / tenant
    chunks.parent.mkdir(parents=True, exist_ok=True)
    cipher.write_file(chunks, f'{{"text": "chunks of {tenant}"}}'.encode(), PURPOSE_ASSET)
    costs = settings.storage_dir / "tenant_daily_costs" / "2026-11-30" / tenant
    costs.parent.mkdir(parents=True, exist_ok=True)
    cipher.write_file(costs, b"{}", PURPOSE_ASSET)
    info, _ = store.create_api_key(tenant, ["all"])
    entry = QueryLogEntry(tenant=tenant, key_id=info.key_id, question_masked=f"q of {tenant}")
    store.log_queries([entry])
    store.add_feedback(entry.query_id, tenant, info.key_id, 5, "answer", "fine")
    return chunks.read_bytes()


def test_erase_tenant_shreds_its_keys_and_removes_its_data(settings: Settings) -> None:
    settings.tenants_file.write_text(
        yaml.safe_dump({"tenants": [scifact_tenant("acme"), scifact_tenant("globex")]})
    )
    store = new_store(settings)
    sealed = _fill(settings, store, "acme")
    _fill(settings, store, "globex")

    receipt = TenantEraser(settings, store, open_backend(settings)).run("acme", actor="test")
    assert receipt.kind == "tenant" and receipt.verification.passed, receipt.to_dict()
    removed = {(r.where, r.path): r.items for r in receipt.removed}
    assert removed[("data_keys", "data_keys (destroyed)")] == 1
    assert removed[("asset", "storage")] == 2 and removed[("index", "index versions")] == 1
    assert removed[("rows", "query_log")] == 1 and removed[("rows", "api_keys")] == 1
    assert removed[("registry", "tenants.yaml")] == 1

    fresh = MetadataStore.from_settings(settings)  # no cached key: reads the table
    with pytest.raises(KeyDestroyedError):
        fresh.keyring.cipher("acme").open(sealed, PURPOSE_ASSET)
    assert not (settings.cache_dir / "acme").exists()
    assert not (settings.index_dir / "acme").exists()
    assert fresh.list_queries("acme") == [] and fresh.list_api_keys("acme") == []
    [audit] = fresh.list_audit("acme", "erasure.tenant")
    assert audit.details["erasure_id"] == receipt.erasure_id
    assert fresh.verify_audit().intact
    registry = yaml.safe_load(settings.tenants_file.read_text())
    assert [t["id"] for t in registry["tenants"]] == ["globex"]
    # the other tenant is whole and readable
    [q] = fresh.list_queries("globex")
    assert q.question_masked == "q of globex"
    again = StageCache(
        settings.cache_dir / "globex" / "parsed.parquet", fresh.keyring.cipher("globex")
    )
    assert again.get("hash:cfg") == {"text": "parsed text of globex"}
    assert fresh.get_published_version("globex") is not None
    # the same id used again gets a new key version
    blob = fresh.keyring.cipher("acme").seal(b"new", "cache")
    assert int.from_bytes(blob[4:8], "big") == 2
    store.dispose()
    fresh.dispose()
