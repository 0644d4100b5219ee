"""Filesystem connector: every matching file under a folder is one document."""

from __future__ import annotations

import mimetypes
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path, PurePosixPath

from rag_platform.lib.models import SourceDocument
from rag_platform.lib.tenants import FilesystemSource

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


def read_acl_file(path: Path) -> list[str]:
    """Groups listed in an ``.acl`` file: one per line, blank lines and ``#`` comments ignored."""
    groups: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        group = line.split("#", 1)[0].strip()
        if group and group not in groups:
            groups.append(group)
    return groups


class FilesystemConnector:
    """Walks a folder; each file matching ``include`` and not ``exclude`` is one document.

    Hidden files and folders (name starting with ``.``) and ``.acl`` files are skipped. Files are
    listed in sorted order of their relative POSIX path, which is also the native id.

    ACL groups of a file: the groups of the first rule in ``source.acl`` whose glob matches its
    relative path; else the groups of the nearest ``.acl`` file in its folder or a parent up to
    the root; else ``default_acl_groups``.
    """

    def __init__(self, source: FilesystemSource, default_acl_groups: list[str]) -> None:
        self.source = source
        self.source_id = source.id
        self.root = Path(source.path)
        self.default_acl_groups = list(default_acl_groups)
        self.problems: list[tuple[str, str]] = []

    def _selected(self, rel: str) -> bool:
        if not any(glob_match(rel, p) for p in self.source.include):
            return False
        return not any(glob_match(rel, p) for p in self.source.exclude)

    def iter_paths(self) -> Iterator[tuple[str, Path]]:
        """Yields ``(relative POSIX path, absolute path)`` of the selected files, sorted.

        Raises:
            ValueError: the root folder does not exist or is not a folder.
        """
        if not self.root.is_dir():
            raise ValueError(
                f"source {self.source_id!r}: folder {str(self.root)!r} does not exist "
                "or is not a directory"
            )
        found: list[tuple[str, Path]] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith(".") or name == ACL_FILE_NAME:
                    continue
                path = Path(dirpath) / name
                rel = path.relative_to(self.root).as_posix()
                if self._selected(rel):
                    found.append((rel, path))
        found.sort(key=lambda item: item[0])
        yield from found

    def acl_groups_for(
        self, rel: str, acl_cache: dict[Path, list[str] | None] | None = None
    ) -> list[str]:
        """The ACL groups of a file given its relative POSIX path (rules, ``.acl``, default)."""
        for rule in self.source.acl:
            if glob_match(rel, rule.glob):
                return list(rule.groups)
        cache = acl_cache if acl_cache is not None else {}
        folder = (self.root / rel).parent
        while True:
            if folder not in cache:
                acl_path = folder / ACL_FILE_NAME
                cache[folder] = read_acl_file(acl_path) if acl_path.is_file() else None
            groups = cache[folder]
            if groups is not None:
                return list(groups)
            if folder == self.root or self.root not in folder.parents:
                break
            folder = folder.parent
        return list(self.default_acl_groups)

    def list_documents(self) -> Iterator[SourceDocument]:
        """Yields one document per selected file, bytes as content.

        Raises:
            ValueError: the root folder does not exist.
        """
        self.problems = []
        acl_cache: dict[Path, list[str] | None] = {}
        for rel, path in self.iter_paths():
            try:
                content = path.read_bytes()
                mtime = path.stat().st_mtime
                groups = self.acl_groups_for(rel, acl_cache)
            except OSError as exc:
                self.problems.append((rel, f"cannot read file: {exc}"))
                continue
            yield SourceDocument(
                source_id=self.source_id,
                native_id=rel,
                uri=path.resolve().as_uri(),
                title=path.stem,
                mime_type=mime_type_for(path),
                content=content,
                acl_groups=groups,
                updated_at=datetime.fromtimestamp(mtime, tz=UTC),
                metadata={"path": rel, "size_bytes": len(content)},
            )
