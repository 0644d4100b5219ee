"""The git connector against repositories the tests create with the git CLI: full listings with
last-commit metadata, incremental diffs (edits, additions, deletions, renames), force-pushes,
bare clones of a URL, skipped items and timeouts."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag_platform.lib.connectors import build_connector
from rag_platform.lib.connectors.base import Change, Deleted, SourceState, Unchanged
from rag_platform.lib.connectors.git import GitConnector, GitError, redact_url
from rag_platform.lib.models import SourceDocument
from rag_platform.lib.tenants import GitSource, InputBudgets


class Repo:
    """A work-tree repository driven through the git CLI."""

    def __init__(self, path: Path, branch: str = "main") -> None:
        self.path = path
        path.mkdir(parents=True)
        self.git("init", "-q", "-b", branch)

    def git(self, *args: str, author: str = "Ann Author", date: str | None = None) -> str:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": author,
            "GIT_AUTHOR_EMAIL": f"{author.split()[0].lower()}@example.com",
            "GIT_COMMITTER_NAME": author,
            "GIT_COMMITTER_EMAIL": "ci@example.com",
        }
        if date:
            env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = date
        done = subprocess.run(
            ["git", "-C", str(self.path), *args], env=env, capture_output=True, check=True
        )
        return done.stdout.decode().strip()

    def write(self, rel: str, data: str | bytes) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            target.write_text(data)

    def commit(self, message: str, **kwargs: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message, **kwargs)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    r = Repo(tmp_path / "repo")
    r.write("README.md", "# Handbook\n\nHow the team works.\n")
    r.write("docs/travel.md", "# Travel\n\nTrains under 500 km.\n")
    r.write("docs/old.txt", "Legacy note.\n")
    r.commit("first", author="Ann Author", date="2024-01-02T10:00:00+00:00")
    r.write("docs/travel.md", "# Travel\n\nTrains under 700 km.\n")
    r.write("src/app.py", "print('hello')\n")
    r.write("logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200))
    r.write("big.txt", "x" * 5000)
    os.symlink("README.md", r.path / "link.md")
    r.commit("second", author="Bob Builder", date="2024-03-04T12:00:00+00:00")
    return r


def _apply(state: SourceState, changes: list[Change], cursor: str | None) -> SourceState:
    versions = dict(state.versions)
    for c in changes:
        if isinstance(c, SourceDocument):
            versions[c.native_id] = c.version or ""
        elif isinstance(c, Deleted):
            versions.pop(c.native_id, None)
    return SourceState(cursor, versions)


def _full_state(conn: GitConnector) -> tuple[list[Change], SourceState]:
    changes = list(conn.changes(SourceState(), full=True))
    return changes, _apply(SourceState(), changes, conn.next_cursor)


class TestListing:
    def test_files_at_head_with_their_last_commit(self, repo: Repo) -> None:
        source = GitSource(
            id="handbook",
            repo=str(repo.path),
            branch="main",
            exclude=["src/**"],
            acl=[{"glob": "docs/**", "groups": ["staff"]}],
        )
        conn = build_connector(source, ["all"], InputBudgets(max_file_bytes=4096))
        assert isinstance(conn, GitConnector)
        changes, _ = _full_state(conn)
        docs = {c.native_id: c for c in changes if isinstance(c, SourceDocument)}
        assert set(docs) == {"README.md", "docs/travel.md", "docs/old.txt"}
        travel, readme = docs["docs/travel.md"], docs["README.md"]
        assert travel.content == b"# Travel\n\nTrains under 700 km.\n"
        assert (
            travel.mime_type == "text/markdown" and docs["docs/old.txt"].mime_type == "text/plain"
        )
        assert travel.metadata["author"] == "Bob Builder"
        assert travel.metadata["author_email"] == "bob@example.com"
        assert travel.metadata["date"] == "2024-03-04T12:00:00+00:00"
        assert readme.metadata["author"] == "Ann Author"  # untouched by the second commit
        assert readme.updated_at is not None and readme.updated_at.year == 2024
        assert travel.metadata["commit"] == repo.git("rev-parse", "HEAD")
        assert readme.metadata["commit"] == repo.git("rev-parse", "HEAD~1")
        assert travel.version == repo.git("rev-parse", "HEAD:docs/travel.md")
        assert travel.acl_groups == ["staff"] and readme.acl_groups == ["all"]
        assert conn.next_cursor == repo.git("rev-parse", "HEAD")
        assert dict(conn.problems) == {
            "big.txt": "file over max_file_bytes (5000 > 4096)",
            "link.md": "symbolic link (not followed)",
            "logo.png": "binary file (NUL byte in the first 8000 bytes)",
        }

    def test_full_listing_reads_only_changed_blobs(self, repo: Repo) -> None:
        conn = GitConnector(GitSource(id="g", repo=str(repo.path)), ["all"])
        _, state = _full_state(conn)
        repo.write("README.md", "# Handbook\n\nHow the team works, revised.\n")
        repo.commit("third", author="Cy Clerk")
        changes = list(conn.changes(state, full=True))
        assert [c.native_id for c in changes if isinstance(c, SourceDocument)] == ["README.md"]
        assert {c.native_id for c in changes if isinstance(c, Unchanged)} == {
            "big.txt", "docs/old.txt", "docs/travel.md", "src/app.py"
        }  # fmt: skip

    def test_a_missing_branch_or_repository_fails_the_source(self, repo: Repo, tmp_path) -> None:
        with pytest.raises(GitError, match="branch 'release' not found"):
            list(GitConnector(GitSource(id="g", repo=str(repo.path), branch="release"), []).changes(
                SourceState(), full=True))  # fmt: skip
        with pytest.raises(GitError, match="does not exist"):
            list(GitConnector(GitSource(id="g", repo=str(tmp_path / "nope")), []).list_documents())


class TestIncremental:
    def test_diff_since_cursor_yields_edits_additions_deletions_and_renames(
        self, repo: Repo
    ) -> None:
        conn = GitConnector(GitSource(id="g", repo=str(repo.path)), ["all"])
        _, state = _full_state(conn)
        repo.write("docs/travel.md", "# Travel\n\nFlights need approval.\n")
        repo.write("docs/new.md", "# New\n\nA new policy.\n")
        repo.git("rm", "-q", "docs/old.txt")
        repo.git("mv", "src/app.py", "src/main.py")
        head = repo.commit("edits", author="Dee Editor")
        changes = list(conn.changes(state, full=False))
        assert not conn.full_listing
        docs = {c.native_id: c for c in changes if isinstance(c, SourceDocument)}
        deleted = {c.native_id: c.reason for c in changes if isinstance(c, Deleted)}
        assert set(docs) == {"docs/travel.md", "docs/new.md", "src/main.py"}
        assert deleted == {"docs/old.txt": "deleted", "src/app.py": "renamed to src/main.py"}
        assert docs["docs/travel.md"].content == b"# Travel\n\nFlights need approval.\n"
        assert docs["src/main.py"].metadata["author"] == "Dee Editor"
        assert conn.next_cursor == head
        # Nothing new since: an empty diff.
        state = _apply(state, changes, head)
        assert list(conn.changes(state, full=False)) == []

    def test_a_force_push_falls_back_to_a_full_listing(self, repo: Repo) -> None:
        conn = GitConnector(GitSource(id="g", repo=str(repo.path)), ["all"])
        _, state = _full_state(conn)
        repo.git("reset", "-q", "--hard", "HEAD~1")  # history rewritten: the cursor is gone
        repo.write("docs/rewritten.md", "# Rewritten\n")
        repo.commit("rewrite")
        changes = list(conn.changes(state, full=False))
        assert conn.full_listing
        assert "not an ancestor" in dict(conn.problems)["*"]
        native = {c.native_id for c in changes}
        assert "docs/rewritten.md" in native and "src/app.py" not in native
        assert not [c for c in changes if isinstance(c, Deleted)]  # the sync deletes the rest
        garbage = SourceState("f" * 40, state.versions)  # an unknown commit id
        assert list(conn.changes(garbage, full=False)) and conn.full_listing


class TestRemote:
    def test_url_is_cloned_bare_into_the_state_folder_and_fetched(
        self, repo: Repo, tmp_path: Path
    ) -> None:
        state_dir = tmp_path / "state"
        source = GitSource(id="g", repo=repo.path.as_uri(), branch="main")
        conn = build_connector(source, ["all"], state_dir=state_dir)
        assert isinstance(conn, GitConnector)
        _, state = _full_state(conn)
        clones = list((state_dir / "git").iterdir())
        assert len(clones) == 1 and (clones[0] / "HEAD").is_file()
        assert not (clones[0] / "README.md").exists()  # bare: nothing checked out
        repo.write("docs/fetched.md", "# Fetched\n")
        repo.commit("upstream")
        changes = list(conn.changes(state, full=False))
        assert [c.native_id for c in changes] == ["docs/fetched.md"]
        state = _apply(state, changes, conn.next_cursor)
        repo.git("reset", "-q", "--hard", "HEAD~2")  # upstream force-push
        changes = list(conn.changes(state, full=False))
        assert conn.full_listing and conn.next_cursor == repo.git("rev-parse", "HEAD")
        assert {c.native_id for c in changes} == {"README.md", "docs/old.txt", "docs/travel.md"}
        # The first commit's travel.md is an older blob: read again; the others are unchanged.
        assert [c.native_id for c in changes if isinstance(c, SourceDocument)] == ["docs/travel.md"]

    def test_a_hanging_server_times_out(self, tmp_path: Path) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:  # accepts and never answers
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    accepted.append(listener.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        url = f"http://user:s3cret@127.0.0.1:{listener.getsockname()[1]}/repo.git"
        source = GitSource(id="g", repo=url, timeout_seconds=2)
        start = time.monotonic()
        try:
            with pytest.raises(GitError, match="timed out after 2.0 s") as info:
                list(GitConnector(source, [], state_dir=tmp_path).list_documents())
        finally:
            stop.set()
            thread.join()
            for conn in accepted:
                conn.close()
            listener.close()
        assert time.monotonic() - start < 30
        assert "s3cret" not in str(info.value)

    def test_credentials_are_redacted(self) -> None:
        assert redact_url("https://bot:tok@git.example.com:8443/a/b.git") == (
            "https://bot@git.example.com:8443/a/b.git"
        )
        assert redact_url("git@github.com:a/b.git") == "git@github.com:a/b.git"


def test_branch_and_repo_names_cannot_be_options() -> None:
    for bad in ("-x", "a..b", "a b", "x.lock", "refs/../x"):
        with pytest.raises(ValueError):
            GitSource(id="g", repo="/tmp/r", branch=bad)
    with pytest.raises(ValueError):
        GitSource(id="g", repo="--upload-pack=touch /tmp/pwned")


@pytest.fixture(autouse=True)
def _no_git_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("GIT_"):
            monkeypatch.delenv(key)
    yield


def test_the_sync_clones_into_the_tenant_state_and_the_sensor_sees_local_commits(
    repo: Repo, tmp_path: Path
) -> None:
    from rag_platform.lib.ingestion.sync import SourceSync, source_fingerprint
    from rag_platform.lib.tenants import TenantConfig

    remote = TenantConfig.model_validate(
        {"id": "t", "sources": [{"id": "kb", "type": "git", "repo": repo.path.as_uri()}]}
    )
    state_dir = tmp_path / "state" / "t"
    result = SourceSync(state_dir).run(remote)
    assert not result.failed_sources and len(result.added) == 5
    assert [p.name.startswith("kb-") for p in (state_dir / "git").iterdir()] == [True]

    local = TenantConfig.model_validate(
        {"id": "t", "sources": [{"id": "kb", "type": "git", "repo": str(repo.path)}]}
    )
    before = source_fingerprint(local)
    assert source_fingerprint(local) == before
    repo.write("docs/new.md", "# New\n")
    repo.commit("new")
    assert source_fingerprint(local) != before
