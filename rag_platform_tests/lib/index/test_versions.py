"""Index versions: the fingerprint, build-or-reuse on real Qdrant Edge shards, publish, and
garbage collection that keeps rollback targets and never deletes a shard a reader holds."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from rag_platform.lib.embedding import get_embedder
from rag_platform.lib.embedding.stage import EmbeddingSet
from rag_platform.lib.index.backend import EdgeBackend
from rag_platform.lib.index.edge import EdgeIndexReader, shard_lock_path
from rag_platform.lib.index.pool import ShardPool
from rag_platform.lib.index.versions import (
    IndexVersions,
    gc_versions,
    index_fingerprint,
    versions_to_keep,
)
from rag_platform.lib.models import CHUNK_COLUMNS, make_chunk_id, make_doc_id, sha256_hex
from rag_platform.lib.store import MetadataStore

TENANT = "acme"
TEXTS = [
    "Backups are kept for 30 days.",
    "Trains are preferred under 500 km.",
    "The cafeteria closes at 3 pm on Fridays.",
    "Band 3 starts at 70k.",
]


def _chunks(texts: list[str], acl: list[str] | None = None) -> pd.DataFrame:
    rows = []
    for i, text in enumerate(texts):
        doc_id = make_doc_id(TENANT, "s", f"doc{i}")
        content_hash = sha256_hex(text)
        rows.append(
            {
                "chunk_id": make_chunk_id(doc_id, 0, content_hash),
                "doc_id": doc_id,
                "tenant": TENANT,
                "ordinal": 0,
                "text": text,
                "embedding_text": text,
                "token_count": len(text.split()),
                "content_hash": content_hash,
                "heading_path": [],
                "page": None,
                "title": f"doc {i}",
                "uri": f"file:///doc{i}.md",
                "source_id": "s",
                "mime_type": "text/markdown",
                "acl_groups": acl or ["all"],
                "updated_at": "",
            }
        )
    return pd.DataFrame(rows, columns=CHUNK_COLUMNS)


def _embeddings(chunks: pd.DataFrame) -> EmbeddingSet:
    vectors = get_embedder().embed_documents(chunks["embedding_text"].tolist())
    return EmbeddingSet("m", chunks["content_hash"].tolist(), vectors)


@pytest.fixture()
def store(tmp_path: Path) -> MetadataStore:
    s = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}")
    s.migrate()
    yield s
    s.dispose()


@pytest.fixture()
def versions(tmp_path: Path, store: MetadataStore) -> IndexVersions:
    backend = EdgeBackend(tmp_path / "indexes")
    return IndexVersions(store, backend, tmp_path / "reports", versions_kept=2)


class TestIndexFingerprint:
    def test_acl_change_changes_fingerprint_order_does_not(self) -> None:
        base = pd.DataFrame(
            {
                "chunk_id": ["1", "2"],
                "content_hash": ["a", "b"],
                "acl_groups": [["all"], ["hr"]],
                "uri": ["u1", "u2"],
                "title": ["t", "t"],
                "updated_at": ["", ""],
                "source_id": ["s", "s"],
                "page": [None, None],
            }
        )
        fp = index_fingerprint(base, "m")
        assert index_fingerprint(base.iloc[::-1], "m") == fp
        changed = base.copy()
        changed.at[1, "acl_groups"] = ["all"]
        assert index_fingerprint(changed, "m") != fp
        assert index_fingerprint(base, "other-model") != fp


class TestBuildOrReuse:
    def test_build_then_reuse_the_published_version(
        self, versions: IndexVersions, store: MetadataStore
    ) -> None:
        chunks = _chunks(TEXTS)
        embeddings = _embeddings(chunks)
        first = versions.build_or_reuse(TENANT, chunks, embeddings, run_id="r1")
        assert not first.reused and first.chunks == 4 and first.documents == 4
        assert first.bytes and first.bytes > 0
        with EdgeIndexReader(Path(first.path)) as reader:
            assert sorted(reader.all_ids()) == sorted(chunks["chunk_id"])
        assert store.get_version(TENANT, first.version).status == "built"
        # an unpublished build is not reused: only the published version is
        assert not versions.build_or_reuse(TENANT, chunks, embeddings).reused
        versions.publish(TENANT, first.version)
        again = versions.build_or_reuse(TENANT, chunks.iloc[::-1], embeddings)
        assert again.reused and again.version == first.version
        # a permission change is a new version, with the same vectors
        moved = versions.build_or_reuse(TENANT, _chunks(TEXTS, acl=["hr"]), embeddings)
        assert not moved.reused and moved.previous_published == first.version

    def test_a_failed_build_leaves_no_shard_and_a_rejected_version(
        self, versions: IndexVersions, store: MetadataStore
    ) -> None:
        chunks = _chunks(TEXTS)
        partial = _embeddings(chunks.iloc[:2])  # two chunks have no vector
        with pytest.raises(KeyError):
            versions.build_or_reuse(TENANT, chunks, partial)
        tenant_dir = versions.backend.tenant_dir(TENANT)
        assert not [p for p in tenant_dir.iterdir() if p.is_dir()]
        [row] = store.list_versions(TENANT)
        assert row.status == "rejected"
        assert [c["name"] for c in row.failed_checks] == ["build"]
        assert "KeyError" in row.failed_checks[0]["reasons"][0]
        with pytest.raises(ValueError, match="rejected"):
            store.publish_version(TENANT, row.version)


class TestPublish:
    def test_publish_marks_the_report_and_is_idempotent(
        self, versions: IndexVersions, store: MetadataStore
    ) -> None:
        chunks = _chunks(TEXTS)
        build = versions.build_or_reuse(TENANT, chunks, _embeddings(chunks))
        report_dir = versions.reports_dir / TENANT / build.version
        report_dir.mkdir(parents=True)
        (report_dir / "report.json").write_text(json.dumps({"published": False}))
        result = versions.publish(TENANT, build.version, actor="test")
        assert result.published_now and result.previous is None
        assert result.kept == {build.version} and result.deleted == []
        assert json.loads((report_dir / "report.json").read_text())["published"] is True
        assert store.get_published_version(TENANT).version == build.version
        assert not versions.publish(TENANT, build.version).published_now

    def test_publish_deletes_shards_beyond_the_rollback_targets(
        self, versions: IndexVersions, store: MetadataStore
    ) -> None:
        built = []
        for n in (1, 2, 3):
            chunks = _chunks(TEXTS[:n])
            build = versions.build_or_reuse(TENANT, chunks, _embeddings(chunks))
            versions.publish(TENANT, build.version)
            built.append(build.version)
        # versions_kept=2: the published v3 and the rollback target v2 stay; v1 goes
        assert sorted(
            p.name for p in versions.backend.tenant_dir(TENANT).iterdir() if p.is_dir()
        ) == sorted(built[1:])
        assert store.get_version(TENANT, built[0]).status == "deleted"


class TestGarbageCollection:
    def test_gc_skips_a_held_version(self, versions: IndexVersions) -> None:
        names = []
        for n in (1, 2, 4):
            chunks = _chunks(TEXTS[:n])
            names.append(versions.build_or_reuse(TENANT, chunks, _embeddings(chunks)).version)
        v0, v1, v2 = names
        tenant_dir = versions.backend.tenant_dir(TENANT)
        pool = ShardPool()
        other = ShardPool()  # stands for another process holding v1 open
        with other.acquire(TENANT, v1, tenant_dir / v1):
            with pool.acquire(TENANT, v2, tenant_dir / v2):
                deleted = gc_versions(tenant_dir, keep={v2})
            assert deleted == [v0]
            assert (tenant_dir / v1).is_dir() and not (tenant_dir / v0).exists()
            assert not shard_lock_path(tenant_dir / v0).exists()
        other.close_all()
        pool.close_all()
        assert gc_versions(tenant_dir, keep={v2}) == [v1]
        assert sorted(p.name for p in tenant_dir.iterdir() if p.is_dir()) == [v2]
        with pool.acquire(TENANT, v2, tenant_dir / v2) as r:  # the kept version still serves
            assert r.count() == 4
        pool.close_all()


class TestVersionsToKeep:
    """Which shards survive a publish, from a real store's version history."""

    def history(self, store: MetadataStore, tmp_path: Path, steps: list[tuple[str, bool]]) -> None:
        for name, publish in steps:
            store.register_version(TENANT, name, str(tmp_path / name), 1, 1, "cfg")
            store.mark_version_built(TENANT, name)
            if publish:
                store.publish_version(TENANT, name)

    def test_failed_builds_do_not_push_out_rollback_targets(
        self, store: MetadataStore, tmp_path: Path
    ) -> None:
        # v1, v2 published; v3 and v4 stopped by the evaluation gate; v5 published
        self.history(
            store,
            tmp_path,
            [("v1", True), ("v2", True), ("v3", False), ("v4", False)],
        )
        for name in ("v3", "v4"):
            store.reject_version(TENANT, name, [{"name": "evaluation_gate", "reasons": ["worse"]}])
        self.history(store, tmp_path, [("v5", True)])
        keep = versions_to_keep(store.list_versions(TENANT), "v5", kept=3)
        assert keep == {"v5", "v2", "v1"}
        assert versions_to_keep(store.list_versions(TENANT), "v5", kept=2) == {"v5", "v2"}
        assert versions_to_keep(store.list_versions(TENANT), "v5", kept=1) == {"v5"}

    def test_a_newer_build_still_under_evaluation_is_kept(
        self, store: MetadataStore, tmp_path: Path
    ) -> None:
        # another run built v3 while this one published v2
        self.history(store, tmp_path, [("v1", True), ("v2", False), ("v3", False)])
        store.publish_version(TENANT, "v2")
        assert versions_to_keep(store.list_versions(TENANT), "v2", kept=2) == {"v2", "v1", "v3"}
        with pytest.raises(ValueError):
            versions_to_keep([], "v2", kept=0)


def _sources(chunks: pd.DataFrame) -> pd.DataFrame:
    """The source inventory those chunks came from (one row per document)."""
    return chunks.drop_duplicates("doc_id")[["doc_id", "acl_groups"]].reset_index(drop=True)


class TestReconcile:
    """The receipt of a real shard against the source inventory (issue 9: prove deletions and
    permission changes reached the index, every run)."""

    def test_a_complete_build_passes_and_the_receipt_is_stored(
        self, versions: IndexVersions, store: MetadataStore
    ) -> None:
        chunks = _chunks(TEXTS)
        build = versions.build_or_reuse(TENANT, chunks, _embeddings(chunks))
        receipt = versions.reconcile(TENANT, build, _sources(chunks), chunks, set())
        assert receipt.passed and (receipt.documents, receipt.chunks) == (4, 4)
        assert store.get_receipt(TENANT, build.version) == receipt
        versions.publish(TENANT, build.version)
        # the reused (published) version is reconciled against the chunks it provably holds
        again = versions.build_or_reuse(TENANT, chunks, _embeddings(chunks))
        assert again.reused
        assert versions.reconcile(TENANT, again, _sources(chunks), chunks, set()).passed

    def test_lost_orphaned_and_reacled_documents_reject_the_version(
        self, versions: IndexVersions, store: MetadataStore
    ) -> None:
        chunks = _chunks(TEXTS)
        # the shard misses doc 3 and still holds doc 0, which the source deleted; doc 1's
        # ACL changed at the source to ["hr"] after the chunks were cut
        built = chunks[chunks["doc_id"] != chunks["doc_id"][3]]
        build = versions.build_or_reuse(TENANT, built, _embeddings(built))
        sources = _sources(chunks).iloc[1:].copy()
        sources.at[1, "acl_groups"] = ["hr"]
        receipt = versions.reconcile(TENANT, build, sources, chunks, set())
        assert not receipt.passed
        assert (receipt.documents_missing, receipt.orphans, receipt.acl_mismatches) == (1, 1, 1)
        assert receipt.samples["documents_missing"] == [chunks["doc_id"][3]]
        assert receipt.samples["orphans"] == [chunks["doc_id"][0]]
        row = store.get_version(TENANT, build.version)
        assert row is not None and row.status == "rejected"
        assert [c["name"] for c in row.failed_checks] == ["reconciliation"]
        with pytest.raises(ValueError, match="rejected"):
            versions.publish(TENANT, build.version)

    def test_a_quarantined_document_is_not_missing(
        self, versions: IndexVersions, store: MetadataStore
    ) -> None:
        chunks = _chunks(TEXTS)
        quarantined = str(chunks["doc_id"][2])
        built = chunks[chunks["doc_id"] != quarantined]
        build = versions.build_or_reuse(TENANT, built, _embeddings(built))
        receipt = versions.reconcile(TENANT, build, _sources(chunks), built, {quarantined})
        assert receipt.passed and receipt.quarantined == 1 and receipt.documents == 3
