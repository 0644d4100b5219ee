"""Filesystem containment, input budgets and fail-closed ACLs of the connectors, over real
folders with real symbolic links, a FIFO, a socket, a sparse over-budget file and link loops."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from rag_platform.lib.connectors import Connector, build_connector
from rag_platform.lib.tenants import AclRule, DatasetSource, FilesystemSource, InputBudgets


def _listing(conn: Connector) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``({native id: acl groups}, {item: problem reason})`` of one listing."""
    groups = {d.native_id: d.acl_groups for d in conn.list_documents()}
    return groups, dict(conn.problems)


@pytest.fixture
def tenants(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "tenant-a", tmp_path / "tenant-b"
    (a / "sub").mkdir(parents=True)
    b.mkdir()
    (a / "ok.txt").write_text("tenant A text")
    (b / "secret.txt").write_text("tenant B secret")
    return a, b


class TestContainment:
    def test_links_out_of_the_root_are_skipped_and_reported(self, tenants) -> None:
        a, b = tenants
        (a / "other.txt").symlink_to(b / "secret.txt")
        (a / "passwd.txt").symlink_to("/etc/passwd")
        (a / "bdir").symlink_to(b)
        (a / "inside.txt").symlink_to(a / "ok.txt")
        conn = build_connector(FilesystemSource(id="f", path=a), ["all"])
        docs = {d.native_id: d for d in conn.list_documents()}
        assert sorted(docs) == ["inside.txt", "ok.txt"]
        assert docs["inside.txt"].content == b"tenant A text"  # a link inside the root is fine
        assert docs["inside.txt"].uri.endswith("/tenant-a/inside.txt")
        assert all("tenant-b" not in d.uri and "/etc" not in d.uri for d in docs.values())
        problems = dict(conn.problems)
        for rel in ("other.txt", "passwd.txt", "bdir"):
            assert problems[rel] == "symlink outside the source root"

    def test_fifo_socket_and_device_are_skipped_without_blocking(self, tenants) -> None:
        a, _ = tenants
        os.mkfifo(a / "pipe.txt")
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(a / "sock.txt"))
        (a / "null.txt").symlink_to("/dev/null")  # a device, and outside the root
        try:
            _, problems = _listing(build_connector(FilesystemSource(id="f", path=a), ["all"]))
        finally:
            sock.close()
        assert problems["pipe.txt"] == "not a regular file (FIFO)"
        assert problems["sock.txt"] == "not a regular file (socket)"
        assert problems["null.txt"] == "symlink outside the source root"

    def test_directory_link_loops_cannot_hang_the_walk(self, tenants) -> None:
        a, _ = tenants
        (a / "sub" / "up").symlink_to(a)  # a directory link back to the root
        (a / "l1").symlink_to(a / "l2")
        (a / "l2").symlink_to(a / "l1")  # a link loop
        (a / "sub" / "doc.txt").write_text("deep")
        groups, problems = _listing(build_connector(FilesystemSource(id="f", path=a), ["all"]))
        assert sorted(groups) == ["ok.txt", "sub/doc.txt"]
        assert problems["sub/up"] == "directory symlink not followed"
        assert "broken symbolic link" in problems["l1"] and "l2" in problems

    def test_file_over_max_file_bytes_is_never_read(self, tenants) -> None:
        a, _ = tenants
        with (a / "huge.txt").open("wb") as f:
            f.truncate(200 * 1024 * 1024)  # sparse: 200 MiB, no disk used
        (a / "small.txt").write_bytes(b"x" * 2048)
        groups, problems = _listing(build_connector(FilesystemSource(id="f", path=a), ["all"]))
        assert "huge.txt" not in groups and "small.txt" in groups
        assert (
            problems["huge.txt"]
            == f"file over max_file_bytes ({200 * 1024 * 1024} > {100 * 1024 * 1024})"
        )
        budgets = InputBudgets(max_file_bytes=1024)
        groups, problems = _listing(
            build_connector(FilesystemSource(id="f", path=a), ["all"], budgets)
        )
        assert problems["small.txt"] == "file over max_file_bytes (2048 > 1024)"
        assert "ok.txt" in groups

    def test_dataset_path_must_be_a_regular_file(self, tmp_path: Path) -> None:
        os.mkfifo(tmp_path / "rows.jsonl")
        conn = build_connector(DatasetSource(id="d", path=tmp_path / "rows.jsonl"), ["all"])
        with pytest.raises(ValueError, match="not a regular file"):
            list(conn.list_documents())


class TestFailClosedAcl:
    def test_acl_file_with_only_comments_means_no_group(self, tenants) -> None:
        a, _ = tenants
        (a / "sub" / ".acl").write_text("# nobody yet\n\n   # still nobody\n")
        (a / "sub" / "plan.md").write_text("# Plan\n")
        groups, _ = _listing(build_connector(FilesystemSource(id="f", path=a), ["all"]))
        assert groups == {"ok.txt": ["all"], "sub/plan.md": []}

    def test_invalid_group_in_an_acl_file_quarantines_the_files_it_governs(self, tenants) -> None:
        a, b = tenants
        (a / "sub" / ".acl").write_text("hr, finance\n")
        (a / "sub" / "plan.md").write_text("# Plan\n")
        groups, problems = _listing(build_connector(FilesystemSource(id="f", path=a), ["all"]))
        assert groups == {"ok.txt": ["all"]}
        assert "ACL file sub/.acl not used" in problems["sub/plan.md"]
        assert "invalid ACL group name 'hr, finance'" in problems["sub/plan.md"]

    def test_acl_file_linking_out_of_the_root_is_not_used(self, tenants) -> None:
        a, _ = tenants
        (a / "sub" / ".acl").symlink_to("/etc/passwd")
        (a / "sub" / "plan.md").write_text("# Plan\n")
        groups, problems = _listing(build_connector(FilesystemSource(id="f", path=a), ["all"]))
        assert "sub/plan.md" not in groups
        assert problems["sub/plan.md"] == (
            "ACL file sub/.acl not used: symlink outside the source root"
        )

    def test_configured_rule_with_an_invalid_group_is_rejected(self, tenants) -> None:
        with pytest.raises(ValueError, match="invalid ACL group name"):
            AclRule(glob="**", groups=["a,b"])

    def test_dataset_empty_acl_stays_empty_missing_acl_gets_the_default(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "rows.jsonl"
        rows = [
            {"id": "list", "text": "t", "acl": []},
            {"id": "string", "text": "t", "acl": ""},
            {"id": "blanks", "text": "t", "acl": " , "},
            {"id": "null", "text": "t", "acl": None},
            {"id": "absent", "text": "t"},
            {"id": "named", "text": "t", "acl": "hr, legal"},
            {"id": "bad", "text": "t", "acl": ["hr team"]},
        ]
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        source = DatasetSource(id="d", path=path, title_column=None, acl_column="acl")
        groups, problems = _listing(build_connector(source, ["all"]))
        assert groups == {
            "list": [],
            "string": [],
            "blanks": [],
            "null": ["all"],
            "absent": ["all"],
            "named": ["hr", "legal"],
        }
        assert "invalid ACL group name 'hr team'" in problems["bad"]

    def test_csv_quoted_empty_acl_is_empty_unquoted_empty_is_missing(self, tmp_path: Path) -> None:
        path = tmp_path / "rows.csv"
        path.write_text('id,title,text,acl\n1,One,first,""\n2,Two,second,\n3,NA,null,NA\n')
        source = DatasetSource(id="c", path=path, acl_column="acl")
        conn = build_connector(source, ["all"])
        docs = {d.native_id: d for d in conn.list_documents()}
        assert {k: d.acl_groups for k, d in docs.items()} == {"1": [], "2": ["all"], "3": ["NA"]}
        assert docs["3"].title == "NA" and docs["3"].text == "null"
