"""The web connector against real HTTP servers on loopback: Debian's python3-doc pages served by
``python -m http.server`` (crawl, robots.txt, conditional GETs, edits, deletions) and a hostile
server (huge, compressed-bomb, non-HTML, slow, redirect loop and off-prefix redirect pages)."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rag_platform.lib.connectors import build_connector
from rag_platform.lib.connectors.base import Change, Deleted, SourceState, Unchanged
from rag_platform.lib.connectors.web import PageVersion, WebConnector, normalize_url
from rag_platform.lib.models import SourceDocument
from rag_platform.lib.net import free_port
from rag_platform.lib.tenants import InputBudgets, WebSource
from rag_platform_tests.utils.web_site import Site, python_docs_site

PAGES = ["json", "email.iterators", "marshal", "netdata"]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with python_docs_site(tmp_path) as served:
        yield served


def _source(site: Site, **extra: object) -> WebSource:
    config: dict[str, object] = {
        "id": "docs",
        "start_urls": [site.url("library/json.html")],
        "allowed_prefixes": [site.url("library/")],
        "delay_seconds": 0,
        "max_depth": 1,
        **extra,
    }
    return WebSource.model_validate(config)


def _crawl(conn: WebConnector, state: SourceState) -> tuple[list[Change], SourceState]:
    """The changes of one crawl and the state the next crawl starts from."""
    changes = list(conn.changes(state, full=True))
    versions = dict(state.versions)
    for change in changes:
        if isinstance(change, SourceDocument):
            assert change.version is not None
            versions[change.native_id] = change.version
        elif isinstance(change, Deleted):
            versions.pop(change.native_id, None)
    return changes, SourceState(conn.next_cursor, versions)


def _by_kind(changes: list[Change]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {"doc": set(), "unchanged": set(), "deleted": set()}
    for c in changes:
        kind = {SourceDocument: "doc", Unchanged: "unchanged", Deleted: "deleted"}[type(c)]
        out[kind].add(c.native_id)
    return out


class TestNormalize:
    def test_dots_case_port_fragment_and_tracking_are_normalized(self) -> None:
        url = "HTTP://Docs.Example.COM:80/a/../b/./c.html?b=2&a=1&utm_source=x#part"
        assert normalize_url(url) == "http://docs.example.com/b/c.html?a=1&b=2"
        assert normalize_url("../x.html#y", "http://h/lib/a.html") == "http://h/x.html"
        for bad in ("file:///etc/passwd", "javascript:alert(1)", "mailto:a@b.c"):
            with pytest.raises(ValueError):
                normalize_url(bad)


class TestPythonDocsCrawl:
    def test_crawl_stays_in_prefix_and_resync_is_conditional(self, site: Site) -> None:
        conn = build_connector(_source(site, acl_groups=["eng"]), ["all"])
        assert isinstance(conn, WebConnector)
        changes, state = _crawl(conn, SourceState())
        docs = {c.native_id: c for c in changes if isinstance(c, SourceDocument)}
        # The canonical link of Debian's pages is a file:// URL: not an id of this site, so
        # the fetched URL is the id.
        assert set(docs) == {site.url(f"library/{p}.html") for p in PAGES}
        json_doc = docs[site.url("library/json.html")]
        assert json_doc.mime_type == "text/markdown"
        assert json_doc.title.startswith("json — JSON encoder and decoder")
        text = (json_doc.content or b"").decode()
        assert "JSON (JavaScript Object Notation)" in text
        assert "Table of Contents" not in text  # navigation is not main content
        assert json_doc.acl_groups == ["eng"]
        assert json_doc.updated_at is not None
        problems = dict(conn.problems)
        assert problems[site.url("library/mailbox.html")] == "HTTP 404"  # linked, not copied
        paths = [p for p, _ in site.requests()]
        # Off-prefix links (contents.html, genindex.html, python.org) are never followed.
        assert "/contents.html" not in paths[1:] and "/genindex.html" not in paths
        assert all(p.startswith("/library/") or p in ("/robots.txt", "/contents.html")
                   for p in paths)  # fmt: skip
        # Depth 1 bounds the crawl: links of the depth-1 pages are not followed.
        assert not any(p.startswith("/library/email.message") for p in paths)

        before = len(site.requests())
        again, state2 = _crawl(conn, state)
        assert _by_kind(again)["unchanged"] == set(docs)
        assert not _by_kind(again)["doc"] and not _by_kind(again)["deleted"]
        logged = site.requests()[before:]
        assert (
            sum(1 for _, status in logged if status == 304)
            == len(PAGES)
            == (conn.stats.not_modified)
        )
        assert conn.next_cursor == state.cursor  # nothing changed: same cursor

        # An edit, a deletion, and a page no longer linked from anywhere.
        iterators = site.root / "library/email.iterators.html"
        iterators.write_text(iterators.read_text().replace(
            "Iterating over a message object tree", "Walking a message object tree"))  # fmt: skip
        site.touch("library/email.iterators.html")
        (site.root / "library/marshal.html").unlink()
        json_page = site.root / "library/json.html"
        json_page.write_text(json_page.read_text().replace('href="netdata.html"', 'href="#"'))
        site.touch("library/json.html")
        third, _ = _crawl(conn, state2)
        kinds = _by_kind(third)
        assert kinds["doc"] == {site.url("library/json.html"),
                                site.url("library/email.iterators.html")}  # fmt: skip
        edited = next(c for c in third if c.native_id == site.url("library/email.iterators.html"))
        assert isinstance(edited, SourceDocument)
        assert b"Walking a message object tree" in (edited.content or b"")
        reasons = {c.native_id: c.reason for c in third if isinstance(c, Deleted)}
        assert reasons == {
            site.url("library/marshal.html"): "HTTP 404",
            site.url("library/netdata.html"): (
                "gone from the sitemaps and unreachable from the start URLs"
            ),
        }
        assert conn.next_cursor != state2.cursor

    def test_robots_txt_disallow_and_politeness_delay(self, site: Site) -> None:
        (site.root / "robots.txt").write_text(
            "User-agent: *\nDisallow: /library/marshal.html\n\nUser-agent: other-bot\nDisallow: /\n"
        )
        delay = 0.2
        conn = WebConnector(_source(site, delay_seconds=delay), ["all"])
        start = time.monotonic()
        docs_list = list(conn.list_documents())
        elapsed = time.monotonic() - start
        docs = {d.native_id for d in docs_list}
        assert site.url("library/marshal.html") not in docs
        assert site.url("library/json.html") in docs
        assert dict(conn.problems)[site.url("library/marshal.html")] == "disallowed by robots.txt"
        assert "/library/marshal.html" not in [p for p, _ in site.requests()]
        # One host: consecutive requests are at least `delay` apart.
        assert conn.stats.requests >= 5
        assert elapsed >= (conn.stats.requests - 1) * delay

        # A page that robots.txt disallows later is deleted with that reason.
        state = SourceState(None, {d.native_id: d.version or "" for d in docs_list})
        (site.root / "robots.txt").write_text("User-agent: *\nDisallow: /library/json\n")
        later = list(WebConnector(_source(site), ["all"]).changes(state, full=True))
        gone = {c.native_id: c.reason for c in later if isinstance(c, Deleted)}
        assert gone[site.url("library/json.html")] == "disallowed by robots.txt"

    def test_max_pages_bounds_the_crawl_and_keeps_unvisited_pages(self, site: Site) -> None:
        full = WebConnector(_source(site), ["all"])
        _, state = _crawl(full, SourceState())
        assert len(state.versions) == len(PAGES)
        small = WebConnector(_source(site, max_pages=2), ["all"])
        changes = list(small.changes(state, full=True))
        assert len([c for c in changes if isinstance(c, Unchanged)]) == len(PAGES)
        assert small.stats.not_modified == 2  # only two pages visited
        assert not [c for c in changes if isinstance(c, Deleted)]
        assert "max_pages (2) reached" in dict(small.problems)["*"]

    def test_sitemap_lists_pages_and_acl_rules_by_prefix(self, site: Site) -> None:
        (site.root / "sitemap.xml").write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<url><loc>{site.url('library/marshal.html')}</loc></url>"
            f"<url><loc>{site.url('library/netdata.html')}</loc></url>"
            f"<url><loc>{site.url('contents.html')}</loc></url>"  # outside the prefix
            "</urlset>"
        )
        source = WebSource(
            id="docs",
            sitemap_urls=[site.url("sitemap.xml")],
            allowed_prefixes=[site.url("library/")],
            delay_seconds=0,
            max_depth=0,
            acl=[{"prefix": site.url("library/marshal"), "groups": ["ops"]}],
        )
        conn = WebConnector(source, ["all"])
        docs = {d.native_id: d.acl_groups for d in conn.list_documents()}
        assert docs == {
            site.url("library/marshal.html"): ["ops"],
            site.url("library/netdata.html"): ["all"],
        }

    def test_unreachable_site_fails_the_whole_source(self) -> None:
        base = f"http://127.0.0.1:{free_port()}/docs/"  # nothing listens there
        source = WebSource(id="docs", start_urls=[base], allowed_prefixes=[base], timeout_seconds=2)
        conn = WebConnector(source, ["all"], retry_attempts=2)
        state = SourceState("c", {base: PageVersion(base).token()})
        with pytest.raises(RuntimeError, match="no request was answered"):
            list(conn.changes(state, full=True))

    def test_an_unreachable_sitemap_fails_the_source_instead_of_deleting(self, site: Site) -> None:
        dead = f"http://127.0.0.1:{free_port()}/sitemap.xml"
        conn = WebConnector(_source(site, sitemap_urls=[dead], timeout_seconds=2), ["all"],
                            retry_attempts=2)  # fmt: skip
        with pytest.raises(RuntimeError, match="sitemap .* unreachable"):
            list(conn.changes(SourceState(), full=True))


# -- a hostile server ------------------------------------------------------------------------

_HTML = "<html><head><title>{title}</title></head><body><main><h1>{title}</h1><p>{body}</p>" \
    "{links}</main></body></html>"  # fmt: skip


class _Hostile(BaseHTTPRequestHandler):
    hits: dict[str, int] = {}  # noqa: RUF012 (set per server below)
    other_origin = ""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _send(self, status: int, body: bytes, ctype: str = "text/html", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path
        self.hits[path] = self.hits.get(path, 0) + 1
        if path == "/robots.txt":
            self._send(404, b"", "text/plain")
        elif path == "/site/":
            links = "".join(
                f'<a href="{p}">{p}</a> '
                for p in ("loop-a", "huge", "declared-huge", "bomb", "binary", "slow",
                          "offsite", "flaky", "gone", "/outside/page", "many-redirects",
                          "article?view=print")
            )  # fmt: skip
            body = "Operating notes for the hostile test site. " * 20
            self._send(200, _HTML.format(title="Home", body=body, links=links).encode())
        elif path == "/site/loop-a":
            self._send(302, b"", Location="/site/loop-b")
        elif path == "/site/loop-b":
            self._send(302, b"", Location="/site/loop-a")
        elif path.startswith("/site/many-redirects"):
            n = int(path.rsplit("-", 1)[-1]) if path[-1].isdigit() else 0
            self._send(302, b"", Location=f"/site/many-redirects-{n + 1}")
        elif path == "/site/huge":  # chunked, no length: the limit is enforced while reading
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"<p>" + b"x" * 65536 + b"</p>")
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif path == "/site/declared-huge":
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(10**10))
            self.end_headers()
        elif path == "/site/bomb":
            raw = gzip.compress(b"<html><body>" + b" " * (20 * 1024 * 1024) + b"</body></html>")
            self._send(200, raw, Content_Encoding="gzip")
        elif path == "/site/binary":
            self._send(200, b"%PDF-1.7\n" + bytes(range(256)) * 10, "application/pdf")
        elif path == "/site/slow":
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            try:
                for _ in range(40):
                    self.wfile.write(b"<p>drip</p>")
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif path == "/site/offsite":
            self._send(302, b"", Location=f"{self.other_origin}/site/")
        elif path == "/site/flaky":
            if self.hits[path] == 1:
                self._send(503, b"busy", "text/plain")
            else:
                body = "This page answered 503 once, then worked. " * 10
                self._send(200, _HTML.format(title="Flaky", body=body, links="").encode())
        elif path.startswith("/site/article"):  # only its print view is linked
            body = "An article reached through its print view. " * 10
            html = _HTML.format(title="Article", body=body, links="").replace(
                "<head>", '<head><link rel="canonical" href="/site/article">'
            )
            self._send(200, html.encode())
        elif path == "/site/gone":
            self._send(410, b"", "text/plain")
        else:
            self._send(404, b"", "text/plain")


@pytest.fixture
def hostile() -> Iterator[tuple[str, dict[str, int]]]:
    handler = type("Handler", (_Hostile,), {"hits": {}, "other_origin": "http://localhost:9"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.hits
    finally:
        server.shutdown()
        server.server_close()


def test_hostile_pages_are_contained(hostile: tuple[str, dict[str, int]]) -> None:
    base, hits = hostile
    source = WebSource(
        id="hostile",
        start_urls=[f"{base}/site/"],
        allowed_prefixes=[f"{base}/site/"],
        delay_seconds=0,
        max_page_bytes=1024 * 1024,
        timeout_seconds=1.5,
        max_redirects=3,
    )
    conn = WebConnector(source, ["all"], InputBudgets(max_file_bytes=2 * 1024 * 1024))
    docs = {d.native_id: d for d in conn.list_documents()}
    # The print view's canonical link names the article: that is its id.
    assert set(docs) == {f"{base}/site/", f"{base}/site/flaky", f"{base}/site/article"}
    assert docs[f"{base}/site/article"].metadata["fetched_url"] == f"{base}/site/article?view=print"
    assert hits["/site/flaky"] == 2  # the 503 was retried
    problems = dict(conn.problems)
    url = f"{base}/site/".__add__
    assert problems[url("loop-a")].startswith("redirect loop")
    assert problems[url("many-redirects")] == "more than 3 redirects"
    assert problems[url("huge")] == "page over max_page_bytes (> 1048576 bytes)"
    assert problems[url("declared-huge")].startswith("page over max_page_bytes (10000000000")
    assert problems[url("bomb")].startswith("page over max_page_bytes once decompressed")
    assert problems[url("binary")] == "non-HTML content type 'application/pdf'"
    assert problems[url("slow")] == "page not received within 1.5 s"
    assert problems[url("offsite")].startswith("redirect leaves the allowed prefixes")
    assert problems[url("gone")] == "HTTP 410"
    assert "/outside/page" not in hits  # an off-prefix link is never requested
    assert hits.get("/site/many-redirects-3", 0) == 1 and "/site/many-redirects-4" not in hits
