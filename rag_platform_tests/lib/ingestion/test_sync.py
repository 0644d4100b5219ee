"""The connector sync over real folders: the change set, and a failing source that keeps its
previous documents instead of losing them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rag_platform.lib.crypto import LocalMasterKey, SealedDataError, TenantCipher, is_sealed
from rag_platform.lib.ingestion import sync as sync_module
from rag_platform.lib.ingestion.sync import SourceSync, source_fingerprint
from rag_platform.lib.models import make_doc_id
from rag_platform.lib.store import MetadataStore
from rag_platform.lib.tenants import TenantConfig
from rag_platform_tests.utils.sealed import files_mentioning


def _tenant(a: Path, b: Path) -> TenantConfig:
    return TenantConfig.model_validate(
        {
            "id": "two",
            "sources": [
                {"id": "alpha", "type": "filesystem", "path": str(a)},
                {"id": "beta", "type": "filesystem", "path": str(b)},
            ],
            "pii": {"ner": False},
        }
    )


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "one.md").write_text("# One\n\nThe first document.\n")
    (a / "two.md").write_text("# Two\n\nThe second document.\n")
    (b / "three.md").write_text("# Three\n\nThe third document.\n")
    return a, b


class TestSourceSync:
    def test_change_set(self, tmp_path: Path) -> None:
        a, b = _folders(tmp_path)
        sync = SourceSync(tmp_path / "state")
        first = sync.run(_tenant(a, b))
        assert len(first.added) == 3 and not first.failed_sources
        assert set(first.frame["change"]) == {"added"}
        (a / "two.md").write_text("# Two\n\nEdited.\n")
        (b / "three.md").unlink()
        (a / ".acl").write_text("hr\n")
        second = sync.run(_tenant(a, b))
        assert second.changed == [make_doc_id("two", "alpha", "two.md")]
        assert second.deleted == [make_doc_id("two", "beta", "three.md")]
        assert second.acl_changed == [make_doc_id("two", "alpha", "one.md")]
        assert not second.added and len(second.frame) == 2

    def test_a_failed_source_keeps_its_previous_rows(self, tmp_path: Path) -> None:
        a, b = _folders(tmp_path)
        sync = SourceSync(tmp_path / "state")
        first = sync.run(_tenant(a, b))
        b.rename(tmp_path / "moved")
        second = sync.run(_tenant(a, b))
        assert set(second.failed_sources) == {"beta"}
        assert "beta" in {p.source_id for p in second.problems}
        assert not second.deleted and not second.added
        three = make_doc_id("two", "beta", "three.md")
        kept = second.frame[second.frame["doc_id"] == three]
        assert len(kept) == 1 and kept["change"].iloc[0] == "unchanged"
        before = first.frame[first.frame["doc_id"] == three].iloc[0]
        assert kept["content"].iloc[0] == before["content"]
        assert kept["content_hash"].iloc[0] == before["content_hash"]
        # still failing: still kept; back again: unchanged, nothing deleted or added
        assert three in set(sync.run(_tenant(a, b)).frame["doc_id"])
        (tmp_path / "moved").rename(b)
        back = sync.run(_tenant(a, b))
        assert not back.failed_sources and not back.deleted and not back.added
        assert set(back.frame["change"]) == {"unchanged"}


class TestSourceFingerprint:
    def test_changes_with_files_not_with_nothing(self, tmp_path: Path) -> None:
        a, b = _folders(tmp_path)
        tenant = _tenant(a, b)
        fp = source_fingerprint(tenant)
        assert source_fingerprint(tenant) == fp
        (b / "four.md").write_text("new")
        assert source_fingerprint(tenant) != fp


class TestSyncState:
    def test_unchanged_files_are_not_read_again_and_state_is_per_source(
        self, tmp_path: Path
    ) -> None:
        a, b = _folders(tmp_path)
        sync = SourceSync(tmp_path / "state")
        sync.run(_tenant(a, b))
        state = sync.read_state("alpha")
        assert state["counts"]["added"] == 2 and state["last_full_sync_at"]
        (a / "one.md").chmod(0)  # unreadable now: only a read would notice
        try:
            again = sync.run(_tenant(a, b))
        finally:
            (a / "one.md").chmod(0o644)
        assert not again.problems  # same size, mtime and ACL: never opened
        assert again.sources["alpha"].unchanged == 2 and len(again.frame) == 3

    def test_an_interrupted_sync_leaves_the_last_complete_one(self, tmp_path: Path) -> None:
        a, b = _folders(tmp_path)
        sync = SourceSync(tmp_path / "state")
        first = sync.run(_tenant(a, b))
        (a / "two.md").write_text("# Two\n\nEdited.\n")
        folder = sync.source_dir("alpha")
        # a sync killed while writing: a partial segment, never referenced by the manifest
        (folder / "seg-interrupted.parquet").write_bytes(b"PAR1 partial")
        second = sync.run(_tenant(a, b))
        assert second.changed == [make_doc_id("two", "alpha", "two.md")]
        assert not (folder / "seg-interrupted.parquet").exists()
        assert sorted(second.frame["doc_id"]) == sorted(first.frame["doc_id"])

    def test_segments_are_compacted_and_the_frame_stays_right(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(sync_module, "COMPACT_SLACK_ROWS", 0)
        a, b = _folders(tmp_path)
        for i in range(30):
            (a / f"n{i}.md").write_text(f"# N{i}\n\nNote {i}.\n")
        sync = SourceSync(tmp_path / "state")
        sync.run(_tenant(a, b))
        for i in range(1, 30):  # most rows of the first segment die
            (a / f"n{i}.md").unlink()
        (a / "n0.md").write_text("# N0\n\nEdited.\n")
        result = sync.run(_tenant(a, b))
        assert len(result.deleted) == 29 and len(result.changed) == 1
        segments = list(sync.source_dir("alpha").glob("seg-*.parquet"))
        assert len(segments) == 2  # the compacted older rows and this run's segment
        assert sum(pq.ParquetFile(p).metadata.num_rows for p in segments) == 3
        frame = result.frame.set_index("native_id")
        assert sorted(frame.index) == ["n0.md", "one.md", "three.md", "two.md"]
        assert frame.loc["n0.md", "content"] == b"# N0\n\nEdited.\n"
        assert frame.loc["n0.md", "change"] == "changed"
        assert frame.loc["one.md", "change"] == "unchanged"
        again = sync.run(_tenant(a, b))  # the compacted state syncs like any other
        assert not (again.added or again.changed or again.deleted) and len(again.frame) == 4

    def test_a_removed_source_deletes_its_documents(self, tmp_path: Path) -> None:
        a, b = _folders(tmp_path)
        sync = SourceSync(tmp_path / "state")
        sync.run(_tenant(a, b))
        only_alpha = TenantConfig.model_validate(
            {"id": "two", "sources": [{"id": "alpha", "type": "filesystem", "path": str(a)}]}
        )
        result = sync.run(only_alpha)
        assert result.deleted == [make_doc_id("two", "beta", "three.md")]
        assert not sync.source_dir("beta").exists()


class TestSealedSyncState:
    """The sync state at rest under a tenant's cipher (a real keyring over SQLite)."""

    @pytest.fixture
    def cipher(self, tmp_path: Path) -> Iterator[TenantCipher]:
        store = MetadataStore(
            f"sqlite:///{tmp_path / 'meta.db'}", master_keys=[LocalMasterKey(os.urandom(32))]
        )
        store.migrate()
        yield store.keyring.cipher("two")
        store.dispose()

    def test_rows_and_state_are_sealed_and_read_back(
        self, tmp_path: Path, cipher: TenantCipher
    ) -> None:
        a, b = _folders(tmp_path)
        state = tmp_path / "state"
        first = SourceSync(state, cipher=cipher).run(_tenant(a, b))
        assert len(first.added) == 3
        assert sorted(first.frame["content"].map(bytes.decode)) == [
            "# One\n\nThe first document.\n",
            "# Three\n\nThe third document.\n",
            "# Two\n\nThe second document.\n",
        ]
        assert files_mentioning(state, "document") == []  # nothing readable on disk
        assert files_mentioning(state, "first document", cipher) != []
        for path in state.glob("sync/*/state.json"):
            assert is_sealed(path.read_bytes())
        # an unchanged re-sync reads its sealed state and rows: nothing to process
        again = SourceSync(state, cipher=cipher).run(_tenant(a, b))
        assert not again.added and not again.changed and len(again.frame) == 3
        # the erasure helpers work on sealed rows without opening them
        doc = make_doc_id("two", "alpha", "one.md")
        assert SourceSync(state).holds(doc) == 2  # one segment row, one manifest row
        assert SourceSync(state).forget({doc}) == 1
        # another tenant's cipher, or none, never reads the sealed state as empty
        with pytest.raises(SealedDataError):
            SourceSync(state).read_state("alpha")

    def test_plain_state_of_an_earlier_version_is_read_then_sealed(
        self, tmp_path: Path, cipher: TenantCipher
    ) -> None:
        a, b = _folders(tmp_path)
        state = tmp_path / "state"
        SourceSync(state).run(_tenant(a, b))  # written before encryption
        (a / "two.md").write_text("# Two\n\nEdited.\n")
        second = SourceSync(state, cipher=cipher).run(_tenant(a, b))
        assert second.changed == [make_doc_id("two", "alpha", "two.md")]
        assert any("Edited." in c.decode() for c in second.frame["content"])
        for path in state.glob("sync/*/state.json"):
            assert is_sealed(path.read_bytes())  # rewritten sealed
