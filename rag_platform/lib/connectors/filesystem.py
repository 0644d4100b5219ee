"""Filesystem connector: every matching file under a folder is one document."""

from __future__ import annotations

import mimetypes
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path, PurePosixPath

from rag_platform.lib.connectors.base import Change, SourceState, Unchanged
from rag_platform.lib.models import SourceDocument, acl_key
from rag_platform.lib.tenants import FilesystemSource, InputBudgets, validate_acl_group

#: Name of the per-folder ACL file: one group per line, ``#`` starts a comment.
ACL_FILE_NAME = ".acl"

_MIME_BY_SUFFIX = {
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".html": "text/html",
    ".htm": "text/html",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
}


def mime_type_for(path: str | Path) -> str:
    """MIME type from the file extension (``application/octet-stream`` when unknown)."""
    suffix = Path(path).suffix.lower()
    if suffix in _MIME_BY_SUFFIX:
        return _MIME_BY_SUFFIX[suffix]
    guessed, _ = mimetypes.guess_type(str(path), strict=False)
    return guessed or "application/octet-stream"


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Compiles a glob to a regex over POSIX relative paths.

    ``**`` matches any number of path segments (``**/`` also zero), ``*`` and ``?`` stay within
    one segment, ``[...]`` is a character class.
    """
    i, n, out = 0, len(pattern), []
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j == -1:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def glob_match(rel_path: str, pattern: str) -> bool:
    """Whether a POSIX path relative to the source root matches a glob.

    A pattern without ``/`` matches the file name at any depth (as in ``.gitignore``), so
    ``*.pdf`` matches ``a.pdf`` and ``2023/a.pdf``; a pattern with ``/`` matches the whole
    relative path (``reports/**/*.pdf``).
    """
    pattern = pattern.lstrip("/")
    if "/" not in pattern:
        return _glob_regex(pattern).match(PurePosixPath(rel_path).name) is not None
    return _glob_regex(pattern).match(rel_path) is not None


def parse_acl_lines(text: str) -> list[str]:
    """Groups listed in an ``.acl`` file's text: one per line, blank lines and ``#`` comments
    ignored. A file with no group line yields ``[]``: no reader group sees the documents.

    Raises:
        ValueError: a line holds an invalid group name (see
            :func:`~rag_platform.lib.tenants.validate_acl_group`), e.g. two groups on one line.
    """
    groups: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        group = line.split("#", 1)[0].strip()
        if not group:
            continue
        try:
            validate_acl_group(group)
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from exc
        if group not in groups:
            groups.append(group)
    return groups


def _file_kind(mode: int) -> str:
    """Name of a non-regular file type for a problem reason."""
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISLNK, "symbolic link"),
    ):
        if test(mode):
            return name
    return "special file"


class SkippedFile(Exception):
    """A source item that is not read; ``reason`` becomes the connector's problem entry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ListedFile:
    """A regular file under the source root, vetted by :meth:`FilesystemConnector.iter_paths`.

    Attributes:
        rel: POSIX path relative to the root (the native id); for a symbolic link, the link's
            own path.
        path: the real path to open (symbolic links resolved; always inside the root).
        stat: the file's ``stat`` at listing time (reading checks it is still the same inode).
    """

    rel: str
    path: Path
    stat: os.stat_result


def read_contained(path: Path, max_bytes: int, expected: os.stat_result | None = None) -> bytes:
    """Reads a regular file without following a final symbolic link and without blocking.

    The file is opened with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO swapped in after listing can
    neither block nor be read), then checked with ``fstat``: it must be a regular file, the same
    inode as ``expected`` when given, and at most ``max_bytes`` long; at most ``max_bytes + 1``
    bytes are read, so a file growing meanwhile is caught too.

    Raises:
        SkippedFile: not a regular file, replaced since listing, or over ``max_bytes``.
        OSError: the file cannot be opened or read (e.g. it is a symbolic link now: ``ELOOP``).
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SkippedFile(f"not a regular file ({_file_kind(st.st_mode)})")
        if expected is not None and (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino):
            raise SkippedFile("file replaced while the source was listed")
        if st.st_size > max_bytes:
            raise SkippedFile(f"file over max_file_bytes ({st.st_size} > {max_bytes})")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SkippedFile(f"file over max_file_bytes ({len(data)} > {max_bytes})")
    return data


class FilesystemConnector:
    """Walks a folder; each regular file matching ``include`` and not ``exclude`` is one document.

    Hidden files and folders (name starting with ``.``) and ``.acl`` files are skipped. Files are
    listed in sorted order of their relative POSIX path, which is also the native id; the URI is
    ``file://`` of that path under the root's real path.

    Containment: nothing outside the root is ever read. A symbolic link to a file inside the
    root is read as that file; a link leaving the root, a directory link (never followed, so a
    link loop cannot hang the walk) and anything not a regular file (FIFO, socket, device) are
    skipped before any open and reported in :attr:`problems`; so is a file over the tenant's
    ``max_file_bytes`` (checked with ``stat`` first, never read).

    ACL groups of a file: the groups of the first rule in ``source.acl`` whose glob matches its
    relative path; else the groups of the nearest ``.acl`` file in its folder or a parent up to
    the root (an ``.acl`` file without group lines means no reader group); else
    ``default_acl_groups``. An ``.acl`` file that is invalid (a bad group name), unreadable or
    not a regular file inside the root makes the files it would govern problems, never default.

    Args:
        source: the configured folder, globs and ACL rules.
        default_acl_groups: groups of files no rule and no ``.acl`` file covers.
        budgets: the tenant's input budgets (``max_file_bytes`` applies here).
    """

    def __init__(
        self,
        source: FilesystemSource,
        default_acl_groups: list[str],
        budgets: InputBudgets | None = None,
    ) -> None:
        self.source = source
        self.source_id = source.id
        self.root = Path(source.path)
        self.default_acl_groups = list(default_acl_groups)
        self.budgets = budgets or InputBudgets()
        self.problems: list[tuple[str, str]] = []

    def _selected(self, rel: str) -> bool:
        if not any(glob_match(rel, p) for p in self.source.include):
            return False
        return not any(glob_match(rel, p) for p in self.source.exclude)

    def _vet(self, real_root: Path, path: Path) -> tuple[Path, os.stat_result]:
        """``(real path, stat)`` of a listed file that may be read.

        Raises:
            SkippedFile: a link leaving the root or to a directory, a dangling link, not a
                regular file, or over ``max_file_bytes``.
        """
        st = os.lstat(path)
        real = path
        if stat.S_ISLNK(st.st_mode):
            try:
                real = path.resolve(strict=True)
            except (OSError, RuntimeError) as exc:  # dangling link, link loop
                raise SkippedFile(f"cannot read file: broken symbolic link ({exc})") from exc
            if not real.is_relative_to(real_root):
                raise SkippedFile("symlink outside the source root")
            st = os.stat(real, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise SkippedFile(f"not a regular file ({_file_kind(st.st_mode)})")
        limit = self.budgets.max_file_bytes
        if st.st_size > limit:
            raise SkippedFile(f"file over max_file_bytes ({st.st_size} > {limit})")
        return real, st

    def _walk(self, real_root: Path) -> Iterator[tuple[str, Path, os.DirEntry[str] | None]]:
        """Yields ``(relative path, path, entry)`` of every non-hidden entry that is not a
        directory, and ``(relative path, path, None)`` for a directory link, without following
        any link. Directories already seen (by device and inode, e.g. a bind-mount loop) are
        not entered twice."""
        seen: set[tuple[int, int]] = set()
        stack = [real_root]
        while stack:
            folder = stack.pop()
            st = os.stat(folder, follow_symlinks=False)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
            subfolders = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                rel = path.relative_to(real_root).as_posix()
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(path)
                elif entry.is_symlink() and path.is_dir():
                    yield rel, path, None
                else:
                    yield rel, path, entry
            stack.extend(reversed(subfolders))

    def iter_paths(self) -> Iterator[ListedFile]:
        """Yields the selected regular files under the root, sorted by relative path; every
        skipped item is appended to :attr:`problems` as ``(relative path, reason)``.

        Raises:
            ValueError: the root folder does not exist or is not a folder.
        """
        if not self.root.is_dir():
            raise ValueError(
                f"source {self.source_id!r}: folder {str(self.root)!r} does not exist "
                "or is not a directory"
            )
        real_root = self.root.resolve(strict=True)
        found: list[ListedFile] = []
        for rel, path, entry in self._walk(real_root):
            if entry is None:
                real = path.resolve()
                reason = (
                    "symlink outside the source root"
                    if not real.is_relative_to(real_root)
                    else "directory symlink not followed"
                )
                self.problems.append((rel, reason))
                continue
            if entry.name == ACL_FILE_NAME or not self._selected(rel):
                continue
            try:
                real, st = self._vet(real_root, path)
            except SkippedFile as exc:
                self.problems.append((rel, exc.reason))
                continue
            except OSError as exc:
                self.problems.append((rel, f"cannot read file: {exc}"))
                continue
            found.append(ListedFile(rel, real, st))
        found.sort(key=lambda item: item.rel)
        yield from found

    def _acl_file_groups(self, real_root: Path, folder: Path) -> list[str] | None:
        """Groups of ``folder/.acl``: None when there is no such file.

        Raises:
            SkippedFile: the file is a link out of the root, not a regular file, too large,
                unreadable or holds an invalid group name.
        """
        acl_path = folder / ACL_FILE_NAME
        if not os.path.lexists(acl_path):
            return None
        rel = acl_path.relative_to(real_root).as_posix()
        try:
            real, st = self._vet(real_root, acl_path)
            text = read_contained(real, self.budgets.max_file_bytes, st)
            return parse_acl_lines(text.decode("utf-8", errors="replace"))
        except SkippedFile as exc:
            raise SkippedFile(f"ACL file {rel} not used: {exc.reason}") from exc
        except (OSError, ValueError) as exc:
            raise SkippedFile(f"ACL file {rel} not used: {exc}") from exc

    def acl_groups_for(
        self, rel: str, acl_cache: dict[Path, list[str] | SkippedFile | None] | None = None
    ) -> list[str]:
        """The ACL groups of a file given its relative POSIX path (rules, ``.acl``, default).

        Args:
            rel: the file's path relative to the root.
            acl_cache: ``.acl`` results per folder, shared across calls of one listing.

        Raises:
            SkippedFile: the governing ``.acl`` file cannot be used (the file must not get the
                default groups instead).
        """
        for rule in self.source.acl:
            if glob_match(rel, rule.glob):
                return list(rule.groups)
        cache = acl_cache if acl_cache is not None else {}
        real_root = self.root.resolve()
        folder = (real_root / rel).parent
        while True:
            if folder not in cache:
                try:
                    cache[folder] = self._acl_file_groups(real_root, folder)
                except SkippedFile as exc:
                    cache[folder] = exc
            groups = cache[folder]
            if isinstance(groups, SkippedFile):
                raise groups
            if groups is not None:
                return list(groups)
            if folder == real_root or real_root not in folder.parents:
                break
            folder = folder.parent
        return list(self.default_acl_groups)

    def list_documents(self) -> Iterator[SourceDocument]:
        """Yields one document per selected regular file, bytes as content.

        Raises:
            ValueError: the root folder does not exist.
        """
        for change in self.changes(SourceState(), full=True):
            if isinstance(change, SourceDocument):
                yield change

    def changes(self, state: SourceState, *, full: bool = True) -> Iterator[Change]:
        """Walks the folder (always a full listing: ``full`` is ignored). A file whose version
        (size, ``st_mtime_ns`` and ACL groups) equals the state's is :class:`Unchanged` and not
        read; any other is read and yielded as a document with that version.

        Raises:
            ValueError: the root folder does not exist.
        """
        self.problems = []
        acl_cache: dict[Path, list[str] | SkippedFile | None] = {}
        real_root = self.root.resolve()
        for item in self.iter_paths():
            try:
                groups = self.acl_groups_for(item.rel, acl_cache)
                version = f"{item.stat.st_size}:{item.stat.st_mtime_ns}:{acl_key(groups)}"
                if state.versions.get(item.rel) == version:
                    yield Unchanged(item.rel)
                    continue
                content = read_contained(item.path, self.budgets.max_file_bytes, item.stat)
            except SkippedFile as exc:
                self.problems.append((item.rel, exc.reason))
                continue
            except OSError as exc:
                self.problems.append((item.rel, f"cannot read file: {exc}"))
                continue
            yield SourceDocument(
                source_id=self.source_id,
                native_id=item.rel,
                uri=(real_root / item.rel).as_uri(),
                title=PurePosixPath(item.rel).stem,
                mime_type=mime_type_for(item.rel),
                content=content,
                acl_groups=groups,
                updated_at=datetime.fromtimestamp(item.stat.st_mtime, tz=UTC),
                metadata={"path": item.rel, "size_bytes": len(content)},
                version=version,
            )

    @property
    def next_cursor(self) -> str | None:
        """None: a folder has no cursor; every sync walks it (versions skip the reads)."""
        return None
