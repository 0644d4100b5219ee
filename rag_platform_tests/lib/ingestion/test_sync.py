"""The connector sync over real folders: the change set, and a failing source that keeps its
previous documents instead of losing them."""

from __future__ import annotations

from pathlib import Path

from rag_platform.lib.ingestion.sync import SourceSync, source_fingerprint
from rag_platform.lib.models import make_doc_id
from rag_platform.lib.tenants import TenantConfig


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
