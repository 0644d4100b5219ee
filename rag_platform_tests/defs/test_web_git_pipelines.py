"""Edits and deletions on a web site (python3-doc served by ``python -m http.server``) and in a
git repository reach the next published index version: the real tenant pipeline materialized
in-process, twice, with the real model and Qdrant Edge shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rag_platform.lib.index.edge import EdgeIndexReader
from rag_platform.lib.models import make_doc_id
from rag_platform.lib.store import MetadataStore
from rag_platform.runner import materialize_tenant
from rag_platform.settings import Settings
from rag_platform_tests.lib.connectors.test_git import Repo
from rag_platform_tests.utils.web_site import python_docs_site

pytestmark = pytest.mark.integration  # each under 30 s (28 s and 14 s on a loaded 2-core box)


def _published(settings: Settings, tenant: str) -> tuple[str, list[dict[str, Any]]]:
    store = MetadataStore.from_settings(settings)
    try:
        published = store.get_published_version(tenant)
    finally:
        store.dispose()
    assert published is not None
    with EdgeIndexReader(Path(published.path)) as reader:
        return published.version, [p for _, p in reader.scroll()]


def _tenant(tenant_id: str, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": tenant_id,
        "sources": [source],
        "pii": {"ner": False},
        "chunking": {"max_tokens": 200, "overlap_tokens": 32},
    }


def test_web_edits_and_deletions_reach_the_published_index(
    rag_home: Settings, write_tenants: Any, tmp_path: Path
) -> None:
    pages = ("json.html", "email.iterators.html", "marshal.html")
    with python_docs_site(tmp_path, pages) as site:
        source = {
            "id": "pydocs",
            "type": "web",
            "start_urls": [site.url("library/json.html")],
            "allowed_prefixes": [site.url("library/")],
            "delay_seconds": 0,
            "max_depth": 1,
            "acl_groups": ["eng"],
        }
        write_tenants(_tenant("webdocs", source))
        first = materialize_tenant("webdocs", rag_home)
        assert first.success and first.published, first.failed_checks
        assert first.documents == 3
        v1, payloads = _published(rag_home, "webdocs")
        doc = {p: make_doc_id("webdocs", "pydocs", site.url(f"library/{p}")) for p in pages}
        assert set(doc.values()) == {p["doc_id"] for p in payloads}
        assert all(p["acl_groups"] == ["eng"] for p in payloads)

        before = len(site.requests())
        page = site.root / "library/email.iterators.html"
        page.write_text(page.read_text().replace(
            "Iterating over a message object tree",
            "Iterating over a message object tree is done with the walk generator of zebra",
        ))  # fmt: skip
        site.touch("library/email.iterators.html")
        (site.root / "library/marshal.html").unlink()
        second = materialize_tenant("webdocs", rag_home)
        assert second.success and second.published, second.failed_checks
        meta = second.metadata["source_documents"]
        assert meta["changed"] == 1 and meta["deleted"] == 1 and meta["unchanged"] == 1
        # json.html answered 304: the unchanged page was not downloaded again.
        assert (
            "/library/json.html",
            304,
        ) in site.requests()[before:]
        assert 0 < second.embedded < first.embedded
        v2, payloads2 = _published(rag_home, "webdocs")
        assert v2 != v1
        ids = {p["doc_id"] for p in payloads2}
        assert doc["marshal.html"] not in ids and doc["json.html"] in ids
        edited = [p for p in payloads2 if p["doc_id"] == doc["email.iterators.html"]]
        assert any("zebra" in p["text"] for p in edited)


def test_git_edits_deletions_and_renames_reach_the_published_index(
    rag_home: Settings, write_tenants: Any, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "handbook")
    repo.write("backup.md", "# Backups\n\nBackups are kept for 30 days in the vault.\n")
    repo.write("travel.md", "# Travel\n\nTrains are preferred for trips under 500 km.\n")
    repo.write("cafe.txt", "The cafeteria closes at 3 pm on Fridays.\n")
    repo.write("notes/old-name.md", "# Parking\n\nThe garage opens at 6 am.\n")
    repo.commit("handbook", author="Ann Author")
    source = {"id": "handbook", "type": "git", "repo": str(repo.path), "branch": "main"}
    write_tenants(_tenant("gitkb", source))
    first = materialize_tenant("gitkb", rag_home)
    assert first.success and first.published, first.failed_checks
    v1, payloads = _published(rag_home, "gitkb")

    def doc(path: str) -> str:
        return make_doc_id("gitkb", "handbook", path)

    assert {doc("travel.md"), doc("cafe.txt"), doc("notes/old-name.md")} <= {
        p["doc_id"] for p in payloads
    }
    repo.write("travel.md", "# Travel\n\nFlights need approval by a director.\n")
    repo.git("rm", "-q", "cafe.txt")
    repo.git("mv", "notes/old-name.md", "notes/parking.md")
    head = repo.commit("edits", author="Bob Builder")
    second = materialize_tenant("gitkb", rag_home)
    assert second.success and second.published, second.failed_checks
    meta = second.metadata["source_documents"]
    assert meta["sources"]["handbook"]["full"] is False  # the cursor..HEAD diff
    assert meta["sources"]["handbook"]["cursor"] == head
    assert meta["changed"] == 1 and meta["deleted"] == 2  # cafe.txt and the rename's old path
    v2, payloads2 = _published(rag_home, "gitkb")
    assert v2 != v1
    ids = {p["doc_id"] for p in payloads2}
    assert doc("cafe.txt") not in ids and doc("notes/old-name.md") not in ids
    assert doc("notes/parking.md") in ids and doc("backup.md") in ids
    edited = [p for p in payloads2 if p["doc_id"] == doc("travel.md")]
    assert edited and all("approval" in p["text"] for p in edited)
