"""A copy of Debian's python3-doc HTML served by ``python -m http.server`` on loopback, for the
web connector's tests (the test may edit and delete pages of its copy)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from rag_platform.lib.net import free_port, wait_for_http

#: Where Debian's python3-doc installs the HTML documentation.
PYTHON_DOC_HTML = Path("/usr/share/doc/python3.11/html")
#: The pages copied into a test site (real documentation pages linking to each other and to
#: many pages not copied, which answer 404).
LIBRARY_PAGES = ("json.html", "email.iterators.html", "marshal.html", "netdata.html")
_REQUEST = re.compile(r'"GET (\S+) HTTP/[\d.]+" (\d{3})')


@dataclass
class Site:
    """A served site: ``root`` folder, ``base`` URL (no trailing slash), the server's log."""

    root: Path
    base: str
    log_path: Path

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def requests(self) -> list[tuple[str, int]]:
        """``(path, status)`` of every request the server logged so far."""
        return [
            (m.group(1), int(m.group(2)))
            for m in _REQUEST.finditer(self.log_path.read_text(errors="replace"))
        ]

    def touch(self, path: str, seconds_later: float = 120.0) -> None:
        """Moves a file's mtime forward (http.server compares Last-Modified in whole seconds,
        so an edit within the second of the previous fetch would otherwise look unchanged)."""
        target = self.root / path
        st = target.stat()
        os.utime(target, (st.st_atime, st.st_mtime + seconds_later))


def require_python_docs() -> None:
    if not (PYTHON_DOC_HTML / "library" / "json.html").is_file():
        reason = "Debian's python3-doc is not installed (scripts/setup.sh --dev installs it)"
        if os.environ.get("RAG_REQUIRE_SERVICES") == "1":  # CI: a missing corpus is a failure
            pytest.fail(f"{reason} (RAG_REQUIRE_SERVICES=1 makes this a failure)", pytrace=False)
        pytest.skip(reason)


@contextmanager
def python_docs_site(tmp_path: Path, pages: tuple[str, ...] = LIBRARY_PAGES) -> Iterator[Site]:
    """Copies ``library/<page>`` for each page (plus the top-level ``contents.html`` and
    ``genindex.html``, which lie outside the ``/library/`` prefix) into ``tmp_path/site`` and
    serves it with ``python -m http.server`` on a free loopback port."""
    require_python_docs()
    root = tmp_path / "site"
    (root / "library").mkdir(parents=True)
    for page in pages:
        shutil.copy(PYTHON_DOC_HTML / "library" / page, root / "library" / page)
    for page in ("contents.html", "genindex.html"):
        shutil.copy(PYTHON_DOC_HTML / page, root / page)
    port = free_port()
    log_path = tmp_path / "http.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            cwd=root,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/contents.html", server, timeout=60, interval=0.1)
        yield Site(root, base, log_path)
    finally:
        server.terminate()
        server.wait(timeout=30)
