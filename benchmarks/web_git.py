"""Listing speed of the web and git connectors, from empty and again after a small change.

- web: Debian's python3-doc ``library/`` pages (``apt-get install python3-doc``) copied to a
  temporary folder and served by ``python -m http.server`` on loopback; a crawl of up to
  ``--pages`` pages from ``library/index.html`` (delay 0), then a re-crawl with the first
  crawl's versions after editing 1% of the fetched pages (conditional GETs: the others answer
  304 and are neither downloaded nor extracted).
- git: a generated repository of ``--files`` Markdown files in one commit; a full listing, then
  an incremental one after a commit changing 1% of them (``cursor..HEAD`` diff).

Only the connector runs (``changes()``: listing, fetching, diffing), no parsing or embedding.

Usage::

    .venv/bin/python benchmarks/web_git.py                 # 300 pages, 5,000 files
    .venv/bin/python benchmarks/web_git.py --pages 100 --files 1000

Prints one JSON object per connector: ``connector``, ``documents``, ``first_seconds``,
``resync_seconds``, ``documents_per_s`` (first listing), ``changed`` (documents the re-sync
fetched), ``peak_rss_mb`` (of this process, after both).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag_platform.lib.connectors.base import SourceState  # noqa: E402
from rag_platform.lib.connectors.git import GitConnector  # noqa: E402
from rag_platform.lib.connectors.web import WebConnector  # noqa: E402
from rag_platform.lib.models import SourceDocument  # noqa: E402
from rag_platform.lib.net import free_port, wait_for_http  # noqa: E402
from rag_platform.lib.tenants import GitSource, WebSource  # noqa: E402

DOCS = Path("/usr/share/doc/python3.11/html/library")


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _line(connector: str, docs: int, first: float, again: float, changed: int) -> str:
    return json.dumps(
        {
            "connector": connector,
            "documents": docs,
            "first_seconds": round(first, 3),
            "resync_seconds": round(again, 3),
            "documents_per_s": round(docs / first, 1) if first else None,
            "changed": changed,
            "peak_rss_mb": _rss_mb(),
        }
    )


def bench_web(tmp: Path, pages: int) -> str:
    if not DOCS.is_dir():
        raise SystemExit(f"{DOCS} missing: apt-get install python3-doc")
    root = tmp / "site"
    shutil.copytree(DOCS, root / "library")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/library/"
        wait_for_http(f"{base}index.html", server, timeout=60, interval=0.1)
        source = WebSource(
            id="pydocs",
            start_urls=[f"{base}index.html"],
            allowed_prefixes=[base],
            delay_seconds=0,
            max_pages=pages,
        )
        conn = WebConnector(source, ["all"])
        start = time.perf_counter()
        docs = [c for c in conn.changes(SourceState(), full=True) if isinstance(c, SourceDocument)]
        first = time.perf_counter() - start
        state = SourceState(conn.next_cursor, {d.native_id: d.version or "" for d in docs})
        edited = docs[::100][: max(1, len(docs) // 100)]
        for doc in edited:
            path = root / "library" / doc.native_id.rsplit("/", 1)[-1]
            path.write_text(path.read_text().replace("</p>", " (edited)</p>", 1))
            st = path.stat()
            os.utime(path, (st.st_atime, st.st_mtime + 120))
        start = time.perf_counter()
        again = list(conn.changes(state, full=True))
        resync = time.perf_counter() - start
        changed = sum(isinstance(c, SourceDocument) for c in again)
        return _line("web", len(docs), first, resync, changed)
    finally:
        server.terminate()
        server.wait(timeout=30)


def bench_git(tmp: Path, files: int) -> str:
    repo = tmp / "repo"
    (repo / "docs").mkdir(parents=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "b@example.com",
           "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "b@example.com"}  # fmt: skip

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    for i in range(files):
        (repo / "docs" / f"page-{i:06d}.md").write_text(
            f"# Page {i}\n\nGenerated handbook page number {i}. " * 8 + "\n"
        )
    git("add", "-A")
    git("commit", "-q", "-m", "pages")
    conn = GitConnector(GitSource(id="handbook", repo=str(repo)), ["all"])
    start = time.perf_counter()
    docs = [c for c in conn.changes(SourceState(), full=True) if isinstance(c, SourceDocument)]
    first = time.perf_counter() - start
    state = SourceState(conn.next_cursor, {d.native_id: d.version or "" for d in docs})
    for i in range(0, files, 100):
        (repo / "docs" / f"page-{i:06d}.md").write_text(f"# Page {i}\n\nEdited.\n")
    git("commit", "-q", "-am", "edit 1%")
    start = time.perf_counter()
    again = list(conn.changes(state, full=False))
    resync = time.perf_counter() - start
    changed = sum(isinstance(c, SourceDocument) for c in again)
    return _line("git", len(docs), first, resync, changed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=300, help="web: most pages crawled")
    parser.add_argument("--files", type=int, default=5000, help="git: files in the repository")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(bench_web(Path(tmp), args.pages), flush=True)
        print(bench_git(Path(tmp), args.files), flush=True)


if __name__ == "__main__":
    main()
