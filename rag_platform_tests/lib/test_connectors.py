"""Tests of the filesystem and dataset connectors (files in tmp_path, the SciFact corpus)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from rag_platform.lib.connectors import (
    Connector,
    DatasetConnector,
    FilesystemConnector,
    build_connector,
)
from rag_platform.lib.connectors.filesystem import glob_match, mime_type_for
from rag_platform.lib.tenants import AclRule, DatasetSource, FilesystemSource

SCIFACT = Path("/work/shared/data/scifact/corpus.jsonl")


def _write(path: Path, data: bytes | str, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    _write(root / "report.pdf", b"%PDF-1.4 fake", mtime=1_700_000_000)
    _write(root / "notes.md", "# Notes\n")
    _write(root / "page.HTM", "<html><body>x</body></html>")
    _write(root / "finance" / "q1.txt", "quarter one")
    _write(root / "finance" / ".acl", "# finance team\nfinance\n\nauditors  # external\n")
    _write(root / "finance" / "deep" / "q2.docx", b"PK fake docx")
    _write(root / "legal" / "contract.txt", "contract")
    _write(root / "legal" / "draft.txt", "draft")
    _write(root / ".hidden.txt", "secret")
    _write(root / ".git" / "config.txt", "ignored folder")
    _write(root / "data.csv", "a,b\n1,2\n")
    return root


class TestGlobMatch:
    def test_double_star_spans_folders_and_zero_folders(self) -> None:
        assert glob_match("a.md", "**/*.md")
        assert glob_match("x/y/a.md", "**/*.md")
        assert not glob_match("x/y/a.txt", "**/*.md")

    def test_single_star_stays_in_one_folder(self) -> None:
        assert glob_match("docs/a.md", "docs/*.md")
        assert not glob_match("docs/sub/a.md", "docs/*.md")
        assert glob_match("docs/sub/a.md", "docs/**")

    def test_pattern_without_slash_matches_the_file_name(self) -> None:
        assert glob_match("2023/q1/report.pdf", "*.pdf")
        assert not glob_match("2023/q1/report.pdfx", "*.pdf")

    def test_character_class_and_question_mark(self) -> None:
        assert glob_match("q1.txt", "q[0-9].txt")
        assert glob_match("q1.txt", "q?.txt")
        assert not glob_match("qa.txt", "q[!a].txt")


class TestFilesystemConnector:
    def test_lists_files_sorted_skipping_hidden_and_acl_files(self, tree: Path) -> None:
        conn = FilesystemConnector(FilesystemSource(id="files", path=tree), ["all"])
        ids = [d.native_id for d in conn.list_documents()]
        assert ids == sorted(ids)
        assert ids == [
            "data.csv",
            "finance/deep/q2.docx",
            "finance/q1.txt",
            "legal/contract.txt",
            "legal/draft.txt",
            "notes.md",
            "page.HTM",
            "report.pdf",
        ]
        assert conn.problems == []

    def test_document_fields(self, tree: Path) -> None:
        conn = FilesystemConnector(FilesystemSource(id="files", path=tree), ["all"])
        docs = {d.native_id: d for d in conn.list_documents()}
        pdf = docs["report.pdf"]
        assert pdf.source_id == "files"
        assert pdf.title == "report"
        assert pdf.mime_type == "application/pdf"
        assert pdf.content == b"%PDF-1.4 fake" and pdf.text is None
        assert pdf.updated_at == datetime.fromtimestamp(1_700_000_000, tz=UTC)
        assert pdf.updated_at is not None and pdf.updated_at.tzinfo is not None
        assert pdf.uri.startswith("file://") and pdf.uri.endswith("/docs/report.pdf")
        assert docs["notes.md"].mime_type == "text/markdown"
        assert docs["page.HTM"].mime_type == "text/html"
        assert docs["finance/deep/q2.docx"].mime_type.endswith("wordprocessingml.document")
        assert docs["legal/draft.txt"].mime_type == "text/plain"
        assert docs["data.csv"].mime_type == "text/csv"

    def test_include_and_exclude_globs(self, tree: Path) -> None:
        source = FilesystemSource(
            id="f", path=tree, include=["**/*.txt", "*.pdf"], exclude=["legal/draft*"]
        )
        ids = [d.native_id for d in FilesystemConnector(source, ["all"]).list_documents()]
        assert ids == ["finance/q1.txt", "legal/contract.txt", "report.pdf"]

    def test_acl_rule_then_nearest_acl_file_then_default(self, tree: Path) -> None:
        source = FilesystemSource(
            id="f",
            path=tree,
            acl=[
                AclRule(glob="legal/**", groups=["legal"]),
                AclRule(glob="**/*.txt", groups=["text-readers"]),
            ],
        )
        docs = {
            d.native_id: d.acl_groups
            for d in build_connector(source, ["everyone"]).list_documents()
        }
        assert docs["legal/contract.txt"] == ["legal"]  # first matching rule wins
        assert docs["finance/q1.txt"] == ["text-readers"]  # rule beats the .acl file
        assert docs["finance/deep/q2.docx"] == ["finance", "auditors"]  # parent folder's .acl
        assert docs["report.pdf"] == ["everyone"]

    def test_acl_file_in_root_applies_below(self, tree: Path) -> None:
        _write(tree / ".acl", "staff\n")
        docs = {
            d.native_id: d.acl_groups
            for d in build_connector(FilesystemSource(id="f", path=tree), ["x"]).list_documents()
        }
        assert docs["report.pdf"] == ["staff"]
        assert docs["finance/q1.txt"] == ["finance", "auditors"]

    def test_missing_root_raises_a_clear_value_error(self, tmp_path: Path) -> None:
        conn = build_connector(FilesystemSource(id="f", path=tmp_path / "nope"), ["all"])
        with pytest.raises(ValueError, match="does not exist"):
            list(conn.list_documents())

    def test_unreadable_file_is_a_problem_not_a_failure(self, tree: Path) -> None:
        # A dangling symbolic link is listed but cannot be read (even by root).
        (tree / "legal" / "draft.txt").unlink()
        (tree / "legal" / "draft.txt").symlink_to(tree / "gone.txt")
        conn = build_connector(FilesystemSource(id="f", path=tree), ["all"])
        ids = [d.native_id for d in conn.list_documents()]
        assert "legal/draft.txt" not in ids and "legal/contract.txt" in ids
        assert conn.problems[0][0] == "legal/draft.txt"
        assert "cannot read" in conn.problems[0][1]

    def test_satisfies_the_connector_protocol(self, tree: Path) -> None:
        assert isinstance(build_connector(FilesystemSource(id="f", path=tree), ["a"]), Connector)


class TestMimeTypeFor:
    @pytest.mark.parametrize(
        ("name", "mime"),
        [
            ("a.pdf", "application/pdf"),
            ("a.markdown", "text/markdown"),
            ("a.htm", "text/html"),
            ("a.TXT", "text/plain"),
            ("a.json", "application/json"),
            ("a.unknownext", "application/octet-stream"),
        ],
    )
    def test_extension_to_mime(self, name: str, mime: str) -> None:
        assert mime_type_for(name) == mime


class TestDatasetConnector:
    def test_jsonl_rows_and_missing_id_is_a_problem(self, tmp_path: Path) -> None:
        path = tmp_path / "rows.jsonl"
        rows = [
            {
                "doc": "a1",
                "name": "First",
                "body": "alpha text",
                "groups": ["x", "y"],
                "ts": "2024-01-02T03:04:05Z",
            },
            {"doc": None, "name": "No id", "body": "lost"},
            {"doc": "a3", "name": None, "body": "gamma text", "groups": None, "ts": None},
            {"doc": "a1", "name": "Dup", "body": "duplicate"},
            {"doc": "a5", "name": "Empty", "body": "  "},
        ]
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        source = DatasetSource(
            id="ds",
            path=path,
            id_column="doc",
            title_column="name",
            text_column="body",
            acl_column="groups",
            updated_at_column="ts",
        )
        conn = build_connector(source, ["all"])
        assert isinstance(conn, DatasetConnector)
        docs = list(conn.list_documents())
        assert [d.native_id for d in docs] == ["a1", "a3"]
        first = docs[0]
        assert first.text == "alpha text" and first.content is None
        assert first.mime_type == "text/plain"
        assert first.title == "First"
        assert first.uri == f"{path}#a1"
        assert first.acl_groups == ["x", "y"]
        assert first.updated_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert docs[1].title == "a3" and docs[1].acl_groups == ["all"]
        assert docs[1].updated_at is None
        reasons = dict(conn.problems)
        assert "missing id" in reasons["row 2"]
        assert "duplicate" in reasons["a1"]
        assert "missing text" in reasons["a5"]

    def test_bad_jsonl_lines_and_changing_types_are_problems_not_failures(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "messy.jsonl"
        path.write_text(
            '{"id": 1, "title": "One", "text": "first", "extra": {"a": 1}}\n'
            "{this is not json}\n"
            '["a", "list"]\n'
            '{"id": "two", "title": "Two", "text": "second", "extra": "now a string"}\n'
        )
        conn = build_connector(DatasetSource(id="m", path=path), ["all"])
        docs = list(conn.list_documents())
        assert [(d.native_id, d.text, d.metadata["row"]) for d in docs] == [
            ("1", "first", 1),
            ("two", "second", 4),
        ]
        assert [p[0] for p in conn.problems] == ["row 2", "row 3"]
        assert "invalid JSON" in conn.problems[0][1]

    def test_csv_keeps_ids_as_strings_and_splits_acl_strings(self, tmp_path: Path) -> None:
        path = tmp_path / "rows.csv"
        path.write_text(
            'id,title,text,acl\n007,Bond,shaken not stirred,"mi6, agents"\n8,Other,text eight,\n'
        )
        source = DatasetSource(id="csv", path=path, acl_column="acl")
        docs = list(build_connector(source, ["all"]).list_documents())
        assert [d.native_id for d in docs] == ["007", "8"]
        assert docs[0].acl_groups == ["mi6", "agents"]
        assert docs[1].acl_groups == ["all"]

    def test_parquet_with_list_acl_timestamps_and_limit(self, tmp_path: Path) -> None:
        path = tmp_path / "rows.parquet"
        pd.DataFrame(
            {
                "id": ["p1", "p2", "p3"],
                "title": ["One", "Two", "Three"],
                "text": ["t1", "t2", "t3"],
                "acl": [["g1"], ["g1", "g2"], []],
                "updated": pd.to_datetime(["2024-05-01", "2024-05-02", "2024-05-03"]),
            }
        ).to_parquet(path)
        source = DatasetSource(
            id="pq", path=path, acl_column="acl", updated_at_column="updated", limit=2
        )
        docs = list(build_connector(source, ["all"]).list_documents())
        assert [d.native_id for d in docs] == ["p1", "p2"]
        assert docs[1].acl_groups == ["g1", "g2"]
        assert docs[0].updated_at == datetime(2024, 5, 1, tzinfo=UTC)

    def test_bad_configuration_raises_value_errors(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="not found"):
            list(
                DatasetConnector(
                    DatasetSource(id="x", path=tmp_path / "no.jsonl"), []
                ).list_documents()
            )
        bad_ext = tmp_path / "rows.xml"
        bad_ext.write_text("<rows/>")
        with pytest.raises(ValueError, match="unsupported extension"):
            list(build_connector(DatasetSource(id="x", path=bad_ext), []).list_documents())
        no_col = tmp_path / "rows.jsonl"
        no_col.write_text('{"id": "1", "body": "x"}\n')
        with pytest.raises(ValueError, match="columns"):
            list(build_connector(DatasetSource(id="x", path=no_col), []).list_documents())

    def test_reads_the_whole_scifact_corpus(self) -> None:
        source = DatasetSource(id="corpus", path=SCIFACT, id_column="_id")
        conn = build_connector(source, ["all"])
        docs = list(conn.list_documents())
        assert len(docs) == 5183
        assert conn.problems == []
        assert len({d.native_id for d in docs}) == 5183
        assert docs[0].native_id == "4983" and docs[0].title.startswith("Microstructural")
