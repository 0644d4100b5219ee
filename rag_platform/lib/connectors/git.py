"""Git connector: the files of a repository at the head of a branch, one document each.

Reads git objects only (``ls-tree``, ``cat-file``, ``diff-tree``, ``log``) through the git CLI,
every command under a timeout; nothing is checked out and a local repository is never written.
A repository URL is cloned bare into the tenant's state folder and fetched (``+branch``: a
force-push is followed) on every sync.

Versions and cursor: a file's version token is its blob id, the cursor the branch head's commit
id. An incremental sync (``full=False``) diffs ``cursor..HEAD`` (``diff-tree -M``): added,
modified and renamed-to paths are fetched, deleted and renamed-from paths are
:class:`~rag_platform.lib.connectors.base.Deleted`. When the cursor is unknown or not an
ancestor of the head (a force-push rewrote history), the sync falls back to a full listing.

Metadata of a document: its path, the blob id, and the last commit that changed it on the
branch's first-parent history (``commit``, ``author``, ``author_email``, ``date``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from rag_platform.lib.connectors.base import Change, Deleted, SourceState, Unchanged
from rag_platform.lib.connectors.filesystem import glob_match, mime_type_for
from rag_platform.lib.ingestion.formats import DOCX, PDF, PLAIN, SUPPORTED_MIME_TYPES
from rag_platform.lib.models import SourceDocument
from rag_platform.lib.tenants import GitSource, InputBudgets

#: Git's own binary heuristic: a NUL byte in the first 8,000 bytes (``buffer_is_binary``).
BINARY_SNIFF_BYTES = 8000
#: Binary formats the parse stage reads: exempt from the binary check.
BINARY_DOCUMENT_TYPES = frozenset({PDF, DOCX})
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


class GitError(RuntimeError):
    """A git command failed or timed out (the whole source fails)."""


@dataclass(frozen=True)
class TreeEntry:
    """A file of the tree at the head: ``path`` (POSIX, repository-relative), ``blob`` id,
    ``mode`` (``100644``, ``100755``, ``120000`` link, ``160000`` submodule), ``size`` (bytes;
    None for a submodule)."""

    path: str
    blob: str
    mode: str
    size: int | None


@dataclass(frozen=True)
class CommitInfo:
    """The last commit that changed a file."""

    commit: str
    author: str
    author_email: str
    date: datetime


def redact_url(url: str) -> str:
    """A repository URL without its password or token (``https://user:token@host/...`` →
    ``https://user@host/...``), for metadata and messages."""
    parts = urlsplit(url)
    if parts.scheme and parts.password is not None:
        netloc = parts.hostname or ""
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


class GitConnector:
    """Lists a git branch's files as documents (see the module docstring).

    Skipped with a reason in :attr:`problems`: symbolic links and submodules (their target is
    not the file's content), files over the tenant's ``max_file_bytes`` (decided from the tree,
    never read), binary files (a NUL byte in the first 8,000 bytes, as git decides). Files are
    selected with ``include``/``exclude`` globs as in the filesystem connector; ACL groups come
    from the first matching ``acl`` rule, else ``default_acl_groups``.

    Args:
        source: the git source.
        default_acl_groups: groups of files no rule covers.
        budgets: the tenant's input budgets (``max_file_bytes`` applies).
        state_dir: the tenant's state folder; a URL is cloned under ``state_dir/git/`` (None:
            the settings' cache folder, ``RAG_HOME/cache/_git/``).

    Raises:
        GitError: (from :meth:`changes`) the repository or branch cannot be read, a clone or
            fetch failed, or a git command exceeded ``source.timeout_seconds``.
    """

    def __init__(
        self,
        source: GitSource,
        default_acl_groups: list[str],
        budgets: InputBudgets | None = None,
        *,
        state_dir: Path | None = None,
    ) -> None:
        self.source = source
        self.source_id = source.id
        self.default_acl_groups = list(default_acl_groups)
        self.budgets = budgets or InputBudgets()
        self.state_dir = state_dir
        self.problems: list[tuple[str, str]] = []
        self._cursor: str | None = None
        self._git_dir: Path | None = None
        self.full_listing = False  # whether the last changes() listed every file

    # -- git plumbing ------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(
            GIT_TERMINAL_PROMPT="0",  # never wait for a password
            GIT_OPTIONAL_LOCKS="0",  # read-only commands take no index lock
            GIT_CONFIG_NOSYSTEM="1",
            LC_ALL="C",
        )
        return env

    def _run(self, *args: str, git_dir: Path | None = None, check: bool = True) -> bytes:
        """Runs ``git [--git-dir D] args`` and returns its stdout.

        Raises:
            GitError: non-zero exit (when ``check``) or timeout.
        """
        # ext:: runs an arbitrary command: never, whatever the configured URL says.
        cmd = ["git", "-c", "protocol.ext.allow=never", "-c", "core.quotePath=false"]
        if git_dir is not None:
            cmd += ["--git-dir", str(git_dir)]
        cmd += list(args)
        try:
            done = subprocess.run(
                cmd,
                capture_output=True,
                timeout=self.source.timeout_seconds,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise GitError(
                f"git {args[0]} timed out after {self.source.timeout_seconds} s"
            ) from exc
        if check and done.returncode != 0:
            message = done.stderr.decode("utf-8", errors="replace").strip()[-500:]
            raise GitError(f"git {args[0]} failed ({done.returncode}): {message}")
        return done.stdout

    def _clone_dir(self) -> Path:
        base = (
            self.state_dir / "git" if self.state_dir is not None else _settings_cache_dir() / "_git"
        )
        key = hashlib.sha256(self.source.repo.encode()).hexdigest()[:16]
        return base / f"{self.source_id}-{key}.git"

    def git_dir(self) -> Path:
        """The repository's git folder: the local one, or the bare clone (created or fetched
        on the first call of each sync).

        Raises:
            GitError: not a repository, clone or fetch failed.
        """
        if self._git_dir is not None:
            return self._git_dir
        branch = self.source.branch
        if not self.source.is_remote:
            path = Path(self.source.repo)
            if not path.is_dir():
                raise GitError(f"repository {str(path)!r} does not exist")
            out = self._run("-C", str(path), "rev-parse", "--absolute-git-dir")
            self._git_dir = Path(out.decode().strip())
            return self._git_dir
        clone = self._clone_dir()
        if not (clone / "HEAD").is_file():
            clone.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".clone-", dir=clone.parent))
            try:
                self._run(
                    "clone", "--bare", "--quiet", "--no-tags", "--single-branch",
                    "--branch", branch, "--", self.source.repo, str(tmp / "repo.git"),
                )  # fmt: skip
                shutil.rmtree(clone, ignore_errors=True)
                os.replace(tmp / "repo.git", clone)
            except GitError as exc:
                raise GitError(redact_url(str(exc)).replace(self.source.repo, "<repo>")) from None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            try:
                self._run(
                    "fetch", "--quiet", "--no-tags", "--prune", "origin",
                    f"+refs/heads/{branch}:refs/heads/{branch}",
                    git_dir=clone,
                )  # fmt: skip
            except GitError as exc:
                raise GitError(redact_url(str(exc)).replace(self.source.repo, "<repo>")) from None
        self._git_dir = clone
        return clone

    def head(self) -> str:
        """The commit id at the head of the configured branch.

        Raises:
            GitError: the branch does not exist.
        """
        ref = f"refs/heads/{self.source.branch}"
        out = self._run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}",
                        git_dir=self.git_dir(), check=False)  # fmt: skip
        commit = out.decode().strip()
        if not _SHA.match(commit):
            raise GitError(f"branch {self.source.branch!r} not found")
        return commit

    def tree(self, commit: str) -> Iterator[TreeEntry]:
        """Every file of the commit's tree (``ls-tree -r -l -z``), in git's path order."""
        out = self._run("ls-tree", "-r", "-l", "-z", "--full-tree", commit, git_dir=self.git_dir())
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, _kind, blob, size = meta.decode().split()
            yield TreeEntry(
                raw_path.decode("utf-8", errors="replace"),
                blob,
                mode,
                int(size) if size.isdigit() else None,
            )

    def _is_ancestor(self, old: str, new: str) -> bool:
        if not _SHA.match(old):
            return False
        try:  # exit 1: not an ancestor; 128: unknown object (history rewritten, gc'ed)
            self._run("merge-base", "--is-ancestor", old, new, git_dir=self.git_dir())
        except GitError:
            return False
        return True

    def diff(self, old: str, new: str) -> Iterator[tuple[str, str | None, str | None]]:
        """``(status, old path, new path)`` of ``diff-tree -r -M old new``: ``A`` (new path
        only), ``D`` (old path only), ``M``/``T`` (the same path twice), ``R``/``C`` (both)."""
        out = self._run(
            "diff-tree", "-r", "-z", "-M", "--no-commit-id", "--name-status", old, new,
            git_dir=self.git_dir(),
        )  # fmt: skip
        fields = out.split(b"\0")
        i = 0
        while i < len(fields) and fields[i]:
            status = fields[i].decode()[0]
            if status in "RC":
                a, b = (f.decode("utf-8", errors="replace") for f in fields[i + 1 : i + 3])
                i += 3
                yield status, a, b
            else:
                path = fields[i + 1].decode("utf-8", errors="replace")
                i += 2
                yield status, (path if status != "A" else None), (path if status != "D" else None)

    def last_commits(self, commit: str, paths: set[str]) -> dict[str, CommitInfo]:
        """The newest commit on ``commit``'s first-parent history that changed each path.

        Streams ``git log --name-only`` and stops as soon as every path is found.

        Raises:
            GitError: the walk took longer than ``source.timeout_seconds``.
        """
        found: dict[str, CommitInfo] = {}
        if not paths:
            return found
        cmd = [
            "git", "--git-dir", str(self.git_dir()), "log", "--first-parent", "--no-renames",
            "--name-only", "-z", "--format=%x1e%H%x1f%an%x1f%ae%x1f%aI", commit, "--",
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            env=self._env(),
        )  # fmt: skip
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(self.source.timeout_seconds, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            buffer = b""
            while len(found) < len(paths):
                chunk = proc.stdout.read(1 << 16)
                done = not chunk
                buffer += chunk
                records = buffer.split(b"\x1e")
                buffer = b"" if done else records.pop()
                for record in records:
                    if not record:
                        continue
                    header, _, names = record.partition(b"\0")
                    sha, author, email, date = header.decode("utf-8", "replace").split("\x1f")
                    info = CommitInfo(sha, author, email, datetime.fromisoformat(date))
                    for name in names.split(b"\0"):
                        path = name.strip(b"\n").decode("utf-8", errors="replace")
                        if path in paths and path not in found:
                            found[path] = info
                if done:
                    break
        finally:
            timer.cancel()
            proc.kill()
            proc.wait()
        if timed_out.is_set():
            raise GitError(f"git log timed out after {self.source.timeout_seconds} s")
        return found

    def read_blobs(self, blobs: list[str]) -> Iterator[tuple[str, bytes]]:
        """``(blob id, content)`` of each blob through one ``cat-file --batch`` process.

        Raises:
            GitError: a blob is missing or git stopped answering within the timeout.
        """
        if not blobs:
            return
        proc = subprocess.Popen(
            ["git", "--git-dir", str(self.git_dir()), "cat-file", "--batch"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=self._env(),
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        timer = threading.Timer(self.source.timeout_seconds, proc.kill)
        timer.start()
        try:
            for blob in blobs:
                proc.stdin.write(f"{blob}\n".encode())
                proc.stdin.flush()
                header = proc.stdout.readline().decode().split()
                if len(header) != 3 or header[1] != "blob":
                    raise GitError(f"cannot read blob {blob}: {' '.join(header) or 'no answer'}")
                data = proc.stdout.read(int(header[2]))
                proc.stdout.read(1)  # the newline after the content
                yield blob, data
        finally:
            timer.cancel()
            proc.kill()
            proc.wait()

    # -- the listing -------------------------------------------------------------------------

    def _selected(self, path: str) -> bool:
        if not any(glob_match(path, p) for p in self.source.include):
            return False
        return not any(glob_match(path, p) for p in self.source.exclude)

    def acl_groups_for(self, path: str) -> list[str]:
        """The ACL groups of a file: first matching rule, else the default groups."""
        for rule in self.source.acl:
            if glob_match(path, rule.glob):
                return list(rule.groups)
        return list(self.default_acl_groups)

    def _vet(self, entry: TreeEntry) -> str | None:
        """The reason an entry is skipped, or None when it may be read."""
        if entry.mode == "160000":
            return "submodule (not followed)"
        if entry.mode == "120000":
            return "symbolic link (not followed)"
        limit = self.budgets.max_file_bytes
        if entry.size is not None and entry.size > limit:
            return f"file over max_file_bytes ({entry.size} > {limit})"
        return None

    @property
    def next_cursor(self) -> str | None:
        """The head commit id of the last :meth:`changes`."""
        return self._cursor

    def list_documents(self) -> Iterator[SourceDocument]:
        """Yields every selected file at the branch head."""
        for change in self.changes(SourceState(), full=True):
            if isinstance(change, SourceDocument):
                yield change

    def changes(self, state: SourceState, *, full: bool) -> Iterator[Change]:
        """Yields the branch's changes against the previous sync's state.

        With ``full=True``, or an unknown / rewritten cursor, every selected file: unchanged
        blobs as :class:`Unchanged` (not read), others as documents. With ``full=False`` and a
        cursor that is an ancestor of the head, only the diff ``cursor..HEAD``.

        Raises:
            GitError: the repository, branch or a git command failed.
        """
        self.problems = []
        self._cursor = None
        self._git_dir = None
        head = self.head()
        self.full_listing = True
        to_read: list[TreeEntry] = []
        if not full and state.cursor and self._is_ancestor(state.cursor, head):
            self.full_listing = False
            changed_paths: set[str] = set()
            for status, old, new in self.diff(state.cursor, head):
                if old is not None and status in "DR" and old in state.versions:
                    yield Deleted(old, "deleted" if status == "D" else f"renamed to {new}")
                if new is not None and self._selected(new):
                    changed_paths.add(new)
            if changed_paths:
                entries = {e.path: e for e in self.tree(head) if e.path in changed_paths}
                to_read = [entries[p] for p in sorted(entries)]
        else:
            if not full and state.cursor:
                self.problems.append(
                    (
                        "*",
                        f"cursor {state.cursor[:12]} is not an ancestor of "
                        f"{self.source.branch}: full listing",
                    )  # fmt: skip
                )
            for entry in self.tree(head):
                if not self._selected(entry.path):
                    continue
                if state.versions.get(entry.path) == entry.blob:
                    yield Unchanged(entry.path)
                else:
                    to_read.append(entry)
        readable: list[TreeEntry] = []
        for entry in to_read:
            reason = self._vet(entry)
            if reason is None:
                readable.append(entry)
                continue
            self.problems.append((entry.path, reason))
            if not self.full_listing and entry.path in state.versions:
                yield Deleted(entry.path, reason)  # a kept older version would be stale
        commits = self.last_commits(head, {e.path for e in readable})
        by_blob: dict[str, list[TreeEntry]] = {}
        for entry in readable:
            by_blob.setdefault(entry.blob, []).append(entry)
        repo = redact_url(self.source.repo)
        for blob, content in self.read_blobs(list(by_blob)):
            for entry in by_blob[blob]:
                doc = self._document(entry, content, commits.get(entry.path), repo)
                if doc is None:
                    if not self.full_listing and entry.path in state.versions:
                        yield Deleted(entry.path, "binary file")
                    continue
                yield doc
        self._cursor = head

    def _document(
        self, entry: TreeEntry, content: bytes, info: CommitInfo | None, repo: str
    ) -> SourceDocument | None:
        """The document of one file; None (and a problem) for a binary file."""
        mime = mime_type_for(entry.path)
        if mime not in BINARY_DOCUMENT_TYPES:
            if b"\0" in content[:BINARY_SNIFF_BYTES]:
                self.problems.append((entry.path, "binary file (NUL byte in the first 8000 bytes)"))
                return None
            if mime not in SUPPORTED_MIME_TYPES:
                mime = PLAIN  # source code, configuration, reStructuredText: read as text
        return SourceDocument(
            source_id=self.source_id,
            native_id=entry.path,
            uri=f"{repo}#{self.source.branch}:{entry.path}",
            title=PurePosixPath(entry.path).stem,
            mime_type=mime,
            content=content,
            acl_groups=self.acl_groups_for(entry.path),
            updated_at=info.date if info else None,
            metadata={
                "path": entry.path,
                "repo": repo,
                "branch": self.source.branch,
                "blob": entry.blob,
                "size_bytes": len(content),
                "commit": info.commit if info else None,
                "author": info.author if info else None,
                "author_email": info.author_email if info else None,
                "date": info.date.isoformat() if info else None,
            },
            version=entry.blob,
        )


def _settings_cache_dir() -> Path:
    from rag_platform.settings import get_settings

    return get_settings().cache_dir
