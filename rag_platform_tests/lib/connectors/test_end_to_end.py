"""Issue 9 end to end: a real Dagster run over a tenant folder holding a link to /etc/passwd, a
link into another tenant's folder, a FIFO and a folder whose ``.acl`` file lists no group."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi.testclient import TestClient

from rag_platform.lib.index.edge import EdgeIndexReader
from rag_platform.lib.models import make_doc_id
from rag_platform.lib.store import MetadataStore
from rag_platform.runner import materialize_tenant
from rag_platform_tests.conftest import files_tenant
from serving.main import create_app


def test_links_out_of_the_root_never_reach_the_index_and_empty_acl_hides_a_document(
    rag_home, write_tenants, tmp_path: Path
) -> None:
    a, b = tmp_path / "tenant-a", tmp_path / "tenant-b"
    (a / "board").mkdir(parents=True)
    b.mkdir()
    (a / "office.md").write_text("# Office\n\nThe office opens at 8 am on weekdays.\n")
    (a / "board" / ".acl").write_text("# nobody may read this yet\n")
    (a / "board" / "merger.md").write_text("# Merger\n\nThe merger with Initech closes in May.\n")
    (b / "payroll.md").write_text("# Payroll\n\nTenant B payroll runs on the 25th.\n")
    (a / "passwd.txt").symlink_to("/etc/passwd")
    (a / "payroll.md").symlink_to(b / "payroll.md")
    os.mkfifo(a / "pipe.txt")
    write_tenants(files_tenant("tenant-a", a))

    summary = materialize_tenant("tenant-a", rag_home)
    assert summary.success and summary.published, summary.failed_checks
    assert summary.documents == 2
    sync = summary.metadata["source_documents"]
    assert sync["problems"] == 3
    table = str(sync["problems_table"])
    assert "passwd.txt | symlink outside the source root" in table
    assert "payroll.md | symlink outside the source root" in table
    assert "pipe.txt | not a regular file (FIFO)" in table

    store = MetadataStore.from_settings(rag_home)
    try:
        published = store.get_published_version("tenant-a")
        assert published is not None
        with EdgeIndexReader(Path(published.path)) as reader:
            payloads = [p for _, p in reader.scroll()]
        text = "\n".join(p["text"] for p in payloads)
        assert "root:" not in text and "payroll" not in text.lower()
        merger_id = make_doc_id("tenant-a", "files", "board/merger.md")
        groups = {p["doc_id"]: p["acl_groups"] for p in payloads}
        assert groups[merger_id] == []  # in the shard, visible to no reader group

        _, reader_key = store.create_api_key("tenant-a", ["all"])
        _, admin_key = store.create_api_key("tenant-a", ["all"], role="admin")
        with TestClient(create_app(rag_home)) as client:
            r = client.post(
                "/v1/search",
                headers={"Authorization": f"Bearer {reader_key}"},
                json={"query": "When does the merger with Initech close?", "top_k": 10},
            )
            assert r.status_code == 200, r.text
            hits = r.json()["hits"]
            assert hits and merger_id not in {h["doc_id"] for h in hits}
            r = client.get("/v1/admin/documents", headers={"Authorization": f"Bearer {admin_key}"})
            assert r.status_code == 200, r.text
            assert merger_id in {d["doc_id"] for d in r.json()["documents"]}
    finally:
        store.dispose()
