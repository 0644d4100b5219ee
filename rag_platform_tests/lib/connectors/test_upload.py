"""The managed upload source: uploads written by ``UploadStore`` are read back by the
filesystem connector's walk with their ACL groups, title and URI; deletions and hostile names."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_platform.lib.connectors import build_connector
from rag_platform.lib.connectors.upload import (
    UPLOAD_SOURCE_ID,
    UploadRejected,
    UploadStore,
    parse_acl_groups,
    safe_filename,
)
from rag_platform.lib.ingestion.sync import SourceSync
from rag_platform.lib.tenants import FilesystemSource, InputBudgets, TenantConfig, UploadPolicy


def _tenant(**extra: object) -> TenantConfig:
    return TenantConfig.model_validate({"id": "acme", "default_acl_groups": ["all"], **extra})


def _listed(store: UploadStore, tenant: TenantConfig) -> dict[str, tuple[str, str, list[str]]]:
    effective = store.with_upload_source(tenant)
    source = effective.sources[-1]
    connector = build_connector(source, tenant.default_acl_groups, tenant.budgets)
    return {d.native_id: (d.title, d.uri, d.acl_groups) for d in connector.list_documents()}


def test_uploads_are_listed_with_their_groups_title_and_uri(tmp_path: Path) -> None:
    store = UploadStore(tmp_path / "uploads")
    tenant = _tenant()
    assert store.with_upload_source(tenant).sources == []  # no folder yet: no source
    a = store.save(tenant, "report.md", b"# Q3\n\nRevenue grew.", ["finance", "board"])
    b = store.save(tenant, "note.txt", b"hello", None, title="A note", uri="https://x.test/n")
    listed = _listed(store, tenant)
    assert len(listed) == 2
    by_title = {v[0]: v for v in listed.values()}
    assert by_title["report"][2] == ["finance", "board"]
    assert by_title["A note"][1] == "https://x.test/n"
    assert by_title["A note"][2] == ["all"]  # no groups given: the tenant's default
    assert a != b
    # the sync gives the ids save() returned
    result = SourceSync(tmp_path / "state").run(store.with_upload_source(tenant))
    assert set(result.frame["doc_id"]) == {a, b}
    assert set(result.frame["source_id"]) == {UPLOAD_SOURCE_ID}


def test_delete_removes_only_that_upload_and_the_sync_reports_it(tmp_path: Path) -> None:
    store = UploadStore(tmp_path / "uploads")
    tenant = _tenant()
    keep = store.save(tenant, "keep.txt", b"keep me", None)
    gone = store.save(tenant, "gone.txt", b"delete me", None)
    sync = SourceSync(tmp_path / "state")
    sync.run(store.with_upload_source(tenant))
    assert store.delete("acme", gone)
    assert not store.delete("acme", gone)
    assert not store.delete("other", keep)  # another tenant's folder is never searched
    result = sync.run(store.with_upload_source(tenant))
    assert result.deleted == [gone]
    assert list(result.frame["doc_id"]) == [keep]


def test_policy_rejections(tmp_path: Path) -> None:
    store = UploadStore(tmp_path / "uploads")
    tenant = _tenant(
        budgets={"max_file_bytes": 100}, uploads={"allowed_mime_types": ["text/plain"]}
    )
    with pytest.raises(UploadRejected) as exc:
        store.save(tenant, "a.pdf", b"%PDF-1.4", None)
    assert (exc.value.code, exc.value.status) == ("unsupported_media_type", 415)
    with pytest.raises(UploadRejected) as exc:
        store.save(tenant, "a.txt", b"x" * 101, None)
    assert (exc.value.code, exc.value.status) == ("file_too_large", 413)
    with pytest.raises(UploadRejected) as exc:
        store.save(tenant, "a.txt", b"x" * 50, None, max_bytes=10)
    assert exc.value.code == "file_too_large"
    with pytest.raises(UploadRejected) as exc:
        store.save(tenant, "a.txt", b"  \n ", None)
    assert exc.value.code == "empty_document"
    disabled = _tenant(uploads=UploadPolicy(enabled=False).model_dump())
    with pytest.raises(UploadRejected) as exc:
        store.save(disabled, "a.txt", b"x", None)
    assert (exc.value.code, exc.value.status) == ("uploads_disabled", 403)
    assert not (tmp_path / "uploads" / "acme").exists() or not any(
        p for p in (tmp_path / "uploads" / "acme").iterdir() if not p.name.startswith(".")
    )


def test_hostile_file_names_stay_inside_the_tenant_folder(tmp_path: Path) -> None:
    store = UploadStore(tmp_path / "uploads")
    tenant = _tenant()
    store.save(tenant, "../../../etc/passwd.txt", b"root", None)
    store.save(tenant, "..\\..\\win.txt", b"win", None)
    files = [p for p in (tmp_path / "uploads").rglob("*") if p.is_file()]
    assert all((tmp_path / "uploads" / "acme") in p.parents for p in files)
    assert sorted(p.name for p in files if not p.name.startswith(".")) == ["passwd.txt", "win.txt"]
    assert safe_filename("a<b>|c.txt") == "a_b_c.txt"
    for bad in ("", "..", ".acl", "noextension", "dir/"):
        with pytest.raises(UploadRejected):
            safe_filename(bad)


def test_acl_group_parsing() -> None:
    assert parse_acl_groups(None) is None
    assert parse_acl_groups(" , ") is None
    assert parse_acl_groups("hr, finance,hr") == ["hr", "finance"]
    assert parse_acl_groups(["a", "b"]) == ["a", "b"]
    for bad in ("a b", "x,y z", ",".join(f"g{i}" for i in range(65))):
        with pytest.raises(UploadRejected) as exc:
            parse_acl_groups(bad)
        assert exc.value.code == "invalid_acl_group"


def test_the_upload_source_id_is_reserved(tmp_path: Path) -> None:
    tenant = _tenant(
        sources=[FilesystemSource(id=UPLOAD_SOURCE_ID, path=tmp_path).model_dump(mode="json")]
    )
    with pytest.raises(ValueError, match="reserved"):
        UploadStore(tmp_path / "uploads").with_upload_source(tenant)


def test_budgets_still_apply_to_files_in_the_folder(tmp_path: Path) -> None:
    """A file placed in the folder by other means is read under the same budgets."""
    store = UploadStore(tmp_path / "uploads")
    tenant = _tenant(budgets=InputBudgets(max_file_bytes=10).model_dump())
    store.save(tenant, "ok.txt", b"small", None)
    big = tmp_path / "uploads" / "acme" / "manual"
    big.mkdir()
    (big / "big.txt").write_bytes(b"x" * 100)
    effective = store.with_upload_source(tenant)
    connector = build_connector(effective.sources[-1], ["all"], tenant.budgets)
    assert [d.native_id.split("/")[-1] for d in connector.list_documents()] == ["ok.txt"]
    assert [p[0] for p in connector.problems] == ["manual/big.txt"]
