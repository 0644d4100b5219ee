"""Web connector: a site crawled from seed URLs and sitemaps, inside allowed URL prefixes.

One page is one document: its main content extracted with trafilatura as Markdown, its
canonical URL (``<link rel="canonical">`` when it lies inside the allowed prefixes, else the
fetched URL after redirects; normalized) as native id.

A sync re-crawls the site with conditional GETs: the version token of a page (JSON) holds the
URL it was fetched from, its ``ETag`` and ``Last-Modified`` and the in-prefix links it had, so a
``304 Not Modified`` page is :class:`~rag_platform.lib.connectors.base.Unchanged` and its stored
links are still followed. A page answering 404/410, disallowed by robots.txt or no longer
reachable from the seeds and sitemaps is :class:`~rag_platform.lib.connectors.base.Deleted`.

Sources: RFC 9309 (Robots Exclusion Protocol: a 4xx robots.txt allows everything, a 5xx or
unreachable one disallows everything, at most 500 KiB are parsed), the sitemaps.org protocol
(``urlset`` / ``sitemapindex``), RFC 9110 §13 (conditional requests).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urldefrag, urljoin, urlsplit, urlunsplit

import httpx
import lxml.etree
import lxml.html
import trafilatura
from courlan import normalize_url as courlan_normalize
from protego import Protego

from rag_platform.lib.connectors.base import (
    Change,
    Deleted,
    SourceState,
    Unchanged,
    is_transient,
    transient_retry,
)
from rag_platform.lib.models import SourceDocument
from rag_platform.lib.tenants import InputBudgets, WebSource

log = logging.getLogger(__name__)

#: Content types read as HTML pages; anything else is skipped with a reason.
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
#: RFC 9309 §2.5: crawlers must parse at least 500 KiB of robots.txt; we parse exactly that.
MAX_ROBOTS_BYTES = 500 * 1024
#: Links kept per page (in-prefix, deduplicated); the rest are ignored.
MAX_LINKS_PER_PAGE = 2_000
#: Sitemaps read per crawl (index files included) and nesting depth of sitemap indexes.
MAX_SITEMAPS = 100
MAX_SITEMAP_DEPTH = 3
#: Longest ``Crawl-delay`` of a robots.txt that is honoured (seconds).
MAX_CRAWL_DELAY_SECONDS = 60.0
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_GONE = frozenset({404, 410})


def normalize_url(url: str, base: str | None = None) -> str:
    """The normalized absolute form of an http(s) URL: dot segments resolved, scheme and host
    lower-cased, default port dropped, query parameters sorted and tracking ones (``utm_*``)
    dropped (courlan), fragment removed.

    Args:
        url: an absolute URL, or a reference relative to ``base``.
        base: the URL ``url`` is relative to.

    Raises:
        ValueError: not an http(s) URL with a host.
    """
    absolute = urljoin(base, url.strip()) if base else url.strip()
    parts = urlsplit(absolute)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url[:200]!r}")
    path = urlsplit(urljoin("http://h/", parts.path or "/")).path  # RFC 3986 dot removal
    rebuilt = urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
    return urldefrag(courlan_normalize(rebuilt))[0]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class PageSkipped(Exception):
    """A URL that yields no document; ``reason`` becomes the connector's problem entry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PageVersion:
    """What a sync remembers of a page (serialized as the manifest's version token).

    Attributes:
        url: the URL the page was fetched from (where the next conditional GET goes).
        etag: the ``ETag`` response header, if any.
        last_modified: the ``Last-Modified`` response header, if any.
        links: the normalized in-prefix links of the page, followed again on a 304.
    """

    url: str
    etag: str | None = None
    last_modified: str | None = None
    links: tuple[str, ...] = ()

    def token(self) -> str:
        """The compact JSON version token."""
        return json.dumps(
            {"u": self.url, "e": self.etag, "m": self.last_modified, "l": list(self.links)},
            separators=(",", ":"),
        )

    @classmethod
    def parse(cls, token: str) -> PageVersion | None:
        """The version of a token written by :meth:`token`; None for anything else."""
        try:
            raw = json.loads(token)
            links = tuple(str(link) for link in raw.get("l") or ())
            return cls(str(raw["u"]), raw.get("e"), raw.get("m"), links)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


@dataclass
class CrawlStats:
    """Counters of the last crawl (requests include robots.txt, sitemaps and redirects)."""

    requests: int = 0
    fetched: int = 0
    not_modified: int = 0
    redirects: int = 0
    robots_blocked: int = 0
    answered: int = 0
    fetched_urls: list[str] = field(default_factory=list)


@dataclass
class _Host:
    robots: Protego | None
    delay: float
    available: bool = True
    last_request: float = float("-inf")


@dataclass
class _Response:
    url: str
    status: int
    headers: httpx.Headers
    body: bytes


class WebConnector:
    """Crawls a web source breadth-first (see the module docstring for versions and deletions).

    Bounds: at most ``max_pages`` pages are visited (a crawl cut short keeps the known pages it
    did not reach, reported as a problem); a body over ``min(max_page_bytes,
    budgets.max_file_bytes)`` is never read past the limit; a request taking longer than
    ``timeout_seconds`` in all is abandoned; at most ``max_redirects`` redirects, each inside
    the allowed prefixes, robots-allowed and not seen before in the chain; only ``text/html``
    and ``application/xhtml+xml`` pages are read; ``<meta name="robots">`` ``noindex`` and
    ``nofollow`` are honoured.

    Errors: timeouts, connection errors, 429 and 5xx are retried with
    :func:`~rag_platform.lib.connectors.base.transient_retry`; a page still failing keeps its
    previous version (problem entry). When no request of the crawl got an answer (every host
    unreachable), :meth:`changes` raises, so the sync keeps the source's previous documents.

    ACL groups of a page: the first ``source.acl`` rule whose prefix the page's URL starts
    with, else ``source.acl_groups``, else ``default_acl_groups``.

    Args:
        source: the web source.
        default_acl_groups: groups of pages no rule covers when ``source.acl_groups`` is None.
        budgets: the tenant's input budgets (``max_file_bytes`` bounds a page too).
        transport: an httpx transport (tests; None: the default network transport).
        retry_attempts: attempts per request on transient errors (>= 1).
    """

    def __init__(
        self,
        source: WebSource,
        default_acl_groups: list[str],
        budgets: InputBudgets | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        retry_attempts: int = 4,
    ) -> None:
        self.source = source
        self.source_id = source.id
        self.default_acl_groups = list(default_acl_groups)
        self.budgets = budgets or InputBudgets()
        self.max_bytes = min(source.max_page_bytes, self.budgets.max_file_bytes)
        self.prefixes = [normalize_url(p) for p in source.allowed_prefixes]
        self.acl_rules = [(normalize_url(r.prefix), list(r.groups)) for r in source.acl]
        self.transport = transport
        self.retry_attempts = retry_attempts
        self.problems: list[tuple[str, str]] = []
        self.stats = CrawlStats()
        self._cursor: str | None = None
        self._hosts: dict[str, _Host] = {}
        self._client: httpx.Client | None = None

    # -- configuration -----------------------------------------------------------------------

    def allowed(self, url: str) -> bool:
        """Whether a normalized URL lies inside one of the allowed prefixes."""
        return any(url.startswith(p) for p in self.prefixes)

    def acl_groups_for(self, url: str) -> list[str]:
        """The ACL groups of a page given its native id (canonical URL)."""
        for prefix, groups in self.acl_rules:
            if url.startswith(prefix):
                return list(groups)
        if self.source.acl_groups is not None:
            return list(self.source.acl_groups)
        return list(self.default_acl_groups)

    @property
    def next_cursor(self) -> str | None:
        """SHA-256 over the sorted ``(native id, version)`` pairs of the last crawl."""
        return self._cursor

    # -- HTTP --------------------------------------------------------------------------------

    def _wait_turn(self, host: _Host) -> None:
        pause = host.last_request + host.delay - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        host.last_request = time.monotonic()

    def _request_once(
        self, url: str, headers: dict[str, str], host: _Host, *, html_only: bool = True
    ) -> _Response:
        """One GET after the host's politeness delay, with a total deadline and a body limit.

        Raises:
            httpx.HTTPStatusError: a 429 or 5xx answer (transient: retried by the caller).
            httpx.TransportError: timeouts, connection errors (transient).
            PageSkipped: a 200 body over the size limit, too slow, not HTML (``html_only``)
                or in an unsupported content encoding.
        """
        assert self._client is not None
        self._wait_turn(host)
        self.stats.requests += 1
        deadline = time.monotonic() + self.source.timeout_seconds
        with self._client.stream("GET", url, headers=headers) as response:
            if response.status_code == 429 or response.status_code >= 500:
                response.raise_for_status()  # HTTPStatusError: transient, retried
            body = b""
            if response.status_code == 200:
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    raise PageSkipped(
                        f"page over max_page_bytes ({declared} > {self.max_bytes} bytes, "
                        "Content-Length)"
                    )
                ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if html_only and ctype not in HTML_TYPES:
                    raise PageSkipped(f"non-HTML content type {ctype or 'none'!r}")
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_raw():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise PageSkipped(f"page over max_page_bytes (> {self.max_bytes} bytes)")
                    if time.monotonic() > deadline:
                        raise PageSkipped(
                            f"page not received within {self.source.timeout_seconds} s"
                        )
                    chunks.append(chunk)
                body = b"".join(chunks)
                encoding = response.headers.get("content-encoding", "identity").lower()
                if encoding in ("gzip", "deflate", "x-gzip"):
                    body = _bounded_inflate(body, self.max_bytes)
                elif encoding not in ("identity", ""):
                    raise PageSkipped(f"unsupported content encoding {encoding!r}")
            return _Response(str(response.url), response.status_code, response.headers, body)

    def _get(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        *,
        html_only: bool = True,
        host: _Host | None = None,
    ) -> _Response:
        """GET with retries on transient errors. Raises the last transient error, or
        :class:`PageSkipped`."""
        target = host or self._host(url)
        response = transient_retry(
            lambda: self._request_once(url, dict(headers or {}), target, html_only=html_only),
            attempts=self.retry_attempts,
        )
        self.stats.answered += 1
        return response

    # -- robots.txt --------------------------------------------------------------------------

    def _host(self, url: str) -> _Host:
        origin = _origin(url)
        host = self._hosts.get(origin)
        if host is None:
            host = _Host(None, self.source.delay_seconds)
            self._hosts[origin] = host
            self._load_robots(origin, host)
        return host

    def _load_robots(self, origin: str, host: _Host) -> None:
        """Fetches ``origin/robots.txt`` (RFC 9309 §2.3.1: redirects followed up to 5 hops; a
        4xx allows all; a 5xx or network failure disallows all)."""
        url = f"{origin}/robots.txt"
        try:
            for _ in range(6):
                response = self._get(url, html_only=False, host=host)
                location = response.headers.get("location")
                if response.status in _REDIRECTS and location:
                    url = urljoin(url, location)
                    continue
                break
            else:
                host.available = False
                self.problems.append((url, "robots.txt: too many redirects; host not crawled"))
                return
        except PageSkipped as exc:
            if "over max_page_bytes" not in exc.reason:
                raise
            response = _Response(url, 200, httpx.Headers(), b"")
            self.problems.append((url, "robots.txt over the size limit; read as empty"))
        except Exception as exc:
            if not is_transient(exc):
                raise
            host.available = False
            self.problems.append(
                (url, f"robots.txt unreachable ({type(exc).__name__}): host not crawled")
            )
            return
        if 400 <= response.status < 500:
            return  # no robots.txt: everything allowed
        if response.status != 200:
            host.available = False
            self.problems.append((url, f"robots.txt answered {response.status}: host not crawled"))
            return
        text = response.body[:MAX_ROBOTS_BYTES].decode("utf-8", errors="replace")
        host.robots = Protego.parse(text)
        crawl_delay = host.robots.crawl_delay(self.source.user_agent)
        if crawl_delay:
            host.delay = max(host.delay, min(float(crawl_delay), MAX_CRAWL_DELAY_SECONDS))

    def robots_allow(self, url: str) -> bool:
        """Whether robots.txt of the URL's host lets this crawler's user agent fetch it."""
        host = self._host(url)
        if not host.available:
            return False
        return host.robots is None or bool(host.robots.can_fetch(url, self.source.user_agent))

    # -- sitemaps ----------------------------------------------------------------------------

    def _sitemap_pages(self) -> list[str]:
        """Page URLs (normalized, in-prefix) of the configured sitemaps and their indexes.

        Raises:
            RuntimeError: a sitemap's host is unreachable.
            Exception: a sitemap could not be fetched for a transient reason (the listing
                would be incomplete, so the whole source fails rather than delete pages).
        """
        pages: list[str] = []
        seen: set[str] = set()
        queue: deque[tuple[str, int]] = deque((u, 0) for u in self.source.sitemap_urls)
        read = 0
        while queue and read < MAX_SITEMAPS:
            url, depth = queue.popleft()
            if url in seen:
                continue
            seen.add(url)
            read += 1
            if not self._host(url).available:
                raise RuntimeError(f"sitemap {url} unreachable (its host's robots.txt is)")
            try:
                if not self.robots_allow(normalize_url(url)):
                    self.problems.append((url, "sitemap disallowed by robots.txt"))
                    continue
                response = self._get(url, html_only=False)
            except PageSkipped as exc:
                self.problems.append((url, f"sitemap skipped: {exc.reason}"))
                continue
            if response.status != 200:
                self.problems.append((url, f"sitemap answered HTTP {response.status}"))
                continue
            body = response.body
            if body[:2] == b"\x1f\x8b":
                body = _bounded_inflate(body, self.max_bytes)
            try:
                root = lxml.etree.fromstring(body, parser=_xml_parser())
            except lxml.etree.XMLSyntaxError as exc:
                self.problems.append((url, f"sitemap is not valid XML: {exc}"))
                continue
            kind = lxml.etree.QName(root).localname
            for loc in root.iter("{*}loc"):
                target = (loc.text or "").strip()
                try:
                    target = normalize_url(target, url)
                except ValueError:
                    continue
                if kind == "sitemapindex":
                    if depth + 1 < MAX_SITEMAP_DEPTH and _origin(target) == _origin(url):
                        queue.append((target, depth + 1))
                elif self.allowed(target):
                    pages.append(target)
        if queue:
            self.problems.append(("*", f"more than {MAX_SITEMAPS} sitemaps: the rest not read"))
        return pages

    # -- pages -------------------------------------------------------------------------------

    def _fetch_page(self, url: str, known: PageVersion | None) -> _Response:
        """GETs a page, conditionally when its version is known, following redirects inside
        the prefixes.

        Raises:
            PageSkipped: redirect loop, too many redirects, a redirect leaving the prefixes or
                disallowed by robots.txt, or the body checks of a single request.
        """
        headers: dict[str, str] = {}
        if known is not None and known.url == url:
            if known.etag:
                headers["If-None-Match"] = known.etag
            if known.last_modified:
                headers["If-Modified-Since"] = known.last_modified
        chain = [url]
        current = url
        while True:
            response = self._get(current, headers)
            location = response.headers.get("location")
            if response.status not in _REDIRECTS or not location:
                return response
            self.stats.redirects += 1
            try:
                target = normalize_url(location, current)
            except ValueError as exc:
                raise PageSkipped(f"redirect to a non-http URL: {exc}") from exc
            if target in chain:
                raise PageSkipped(f"redirect loop: {' -> '.join([*chain, target])[:500]}")
            if len(chain) > self.source.max_redirects:
                raise PageSkipped(f"more than {self.source.max_redirects} redirects")
            if not self.allowed(target):
                raise PageSkipped(f"redirect leaves the allowed prefixes: {target[:300]}")
            if not self.robots_allow(target):
                raise PageSkipped(f"redirect target disallowed by robots.txt: {target[:300]}")
            chain.append(target)
            current = target
            headers = {}  # the validators belong to the first URL

    def _page(self, response: _Response) -> tuple[str, str, str, list[str], bool, bool]:
        """``(native id, title, markdown, links, noindex, nofollow)`` of an HTML page.

        Raises:
            PageSkipped: the HTML cannot be parsed or has no main content.
        """
        final = normalize_url(response.url)
        try:
            doc = lxml.html.document_fromstring(response.body, base_url=final)
        except (lxml.etree.ParserError, ValueError) as exc:
            raise PageSkipped(f"unparsable HTML: {exc}") from exc
        robots_meta = " ".join(
            str(v) for v in doc.xpath("//meta[translate(@name,'ROBTS','robts')='robots']/@content")
        ).lower()
        noindex, nofollow = "noindex" in robots_meta, "nofollow" in robots_meta
        native_id = final
        for href in doc.xpath(
            "//link[contains(concat(' ', normalize-space(@rel), ' '), ' canonical ')]/@href"
        ):
            try:
                canonical = normalize_url(str(href), final)
            except ValueError:
                continue  # file://, javascript: ... : not an id of this site
            if self.allowed(canonical):
                native_id = canonical
            break
        title = (doc.findtext(".//title") or "").strip()
        links: list[str] = []
        if not nofollow:
            doc.make_links_absolute(final, resolve_base_href=True, handle_failures="ignore")
            seen: set[str] = set()
            for element, attribute, link, _ in doc.iterlinks():
                if element.tag not in ("a", "area") or attribute != "href":
                    continue
                if "nofollow" in (element.get("rel") or "").lower():
                    continue
                try:
                    target = normalize_url(link)
                except ValueError:
                    continue
                if target not in seen and self.allowed(target):
                    seen.add(target)
                    links.append(target)
                    if len(links) >= MAX_LINKS_PER_PAGE:
                        break
        if noindex:
            return native_id, title, "", links, noindex, nofollow
        text = trafilatura.extract(
            doc,
            url=final,
            output_format="markdown",
            include_comments=False,
            include_tables=True,
            include_links=False,
            include_images=False,
        )
        if not text or not text.strip():
            raise PageSkipped("no main content extracted")
        return native_id, title or native_id, text, links, noindex, nofollow

    # -- the crawl ---------------------------------------------------------------------------

    def list_documents(self) -> Iterator[SourceDocument]:
        """Yields every page of a fresh crawl (no previous versions)."""
        for change in self.changes(SourceState(), full=True):
            if isinstance(change, SourceDocument):
                yield change

    def changes(self, state: SourceState, *, full: bool) -> Iterator[Change]:
        """Crawls the site against the previous versions (always a full crawl: ``full`` is
        ignored, conditional GETs make it cheap).

        Yields:
            A :class:`SourceDocument` per new or changed page, :class:`Unchanged` per page
            answering 304 (or failing transiently, so it keeps its previous version),
            :class:`Deleted` per known page answering 404/410, disallowed by robots.txt or no
            longer reachable.

        Raises:
            RuntimeError: no request got an answer (the site is unreachable).
        """
        del full
        self.problems = []
        self.stats = CrawlStats()
        self._hosts = {}
        self._cursor = None
        known_by_url: dict[str, tuple[str, PageVersion]] = {}
        for native_id, token in state.versions.items():
            version = PageVersion.parse(token)
            if version is not None:
                known_by_url[version.url] = (native_id, version)
        emitted: dict[str, str] = {}  # native id -> version token
        gone: dict[str, str] = {}  # native id -> why it is gone
        with httpx.Client(
            transport=self.transport,
            timeout=httpx.Timeout(self.source.timeout_seconds),
            follow_redirects=False,
            headers={"User-Agent": self.source.user_agent, "Accept-Encoding": "gzip, deflate"},
        ) as client:
            self._client = client
            try:
                queue: deque[tuple[str, int]] = deque()
                queued: set[str] = set()
                queue_limit = self.source.max_pages * 20

                def enqueue(url: str, depth: int) -> None:
                    max_depth = self.source.max_depth
                    if url in queued or (max_depth is not None and depth > max_depth):
                        return
                    if len(queued) < queue_limit:
                        queued.add(url)
                        queue.append((url, depth))

                for seed in self.source.start_urls:
                    url = normalize_url(seed)
                    if self.allowed(url):
                        enqueue(url, 0)
                    else:
                        self.problems.append((seed, "start URL outside the allowed prefixes"))
                for url in self._sitemap_pages():
                    enqueue(url, 0)
                visited = 0
                while queue and visited < self.source.max_pages:
                    url, depth = queue.popleft()
                    visited += 1
                    change, links = self._visit(url, known_by_url.get(url), gone)
                    for link in links:
                        enqueue(link, depth + 1)
                    if change is None or change.native_id in emitted:
                        continue  # skipped, or another URL of the same page (alias, canonical)
                    if isinstance(change, SourceDocument):
                        emitted[change.native_id] = change.version or ""
                    else:
                        emitted[change.native_id] = state.versions[change.native_id]
                    yield change
                truncated = bool(queue)
            finally:
                self._client = None
        if self.stats.answered == 0:
            raise RuntimeError(
                f"web source {self.source_id!r}: no request was answered "
                f"({'; '.join(r for _, r in self.problems[:3])})"
            )
        if truncated:
            self.problems.append(
                (
                    "*",
                    f"max_pages ({self.source.max_pages}) reached: known pages not visited "
                    "keep their previous version",
                )
            )
        for native_id, token in state.versions.items():
            if native_id in emitted:
                continue
            if truncated and native_id not in gone:
                emitted[native_id] = token
                yield Unchanged(native_id)
            else:
                yield Deleted(
                    native_id,
                    gone.get(
                        native_id, "gone from the sitemaps and unreachable from the start URLs"
                    ),
                )
        digest = hashlib.sha256()
        for native_id in sorted(emitted):
            digest.update(f"{native_id}\t{emitted[native_id]}\n".encode())
        self._cursor = digest.hexdigest()

    def _visit(
        self, url: str, known: tuple[str, PageVersion] | None, gone: dict[str, str]
    ) -> tuple[SourceDocument | Unchanged | None, tuple[str, ...]]:
        """The change of one URL with the links to follow from it (None for a skipped URL;
        its reason goes to :attr:`problems`, and to ``gone`` when it was a known page)."""
        known_id, known_version = known if known else (None, None)
        if not self._host(url).available:  # robots.txt unreachable (RFC 9309: disallow all)
            reason = "host not crawled: robots.txt unavailable"
            if known_id and known_version:
                self.problems.append((url, f"{reason}; previous version kept"))
                return Unchanged(known_id), known_version.links
            self.problems.append((url, reason))
            return None, ()
        if not self.robots_allow(url):
            self.stats.robots_blocked += 1
            self.problems.append((url, "disallowed by robots.txt"))
            if known_id:
                gone[known_id] = "disallowed by robots.txt"
            return None, ()
        try:
            response = self._fetch_page(url, known_version)
        except PageSkipped as exc:
            self.problems.append((url, exc.reason))
            if known_id:
                gone[known_id] = exc.reason
            return None, ()
        except Exception as exc:
            if not is_transient(exc):
                raise
            reason = f"{type(exc).__name__}: {str(exc)[:200]} after {self.retry_attempts} attempts"
            if known_id and known_version:
                self.problems.append((url, f"{reason}; previous version kept"))
                return Unchanged(known_id), known_version.links
            self.problems.append((url, reason))
            return None, ()
        if response.status == 304:
            if known_id and known_version:
                self.stats.not_modified += 1
                return Unchanged(known_id), known_version.links
            self.problems.append((url, "304 Not Modified to an unconditional request"))
            return None, ()
        if response.status != 200:
            reason = f"HTTP {response.status}"
            self.problems.append((url, reason))
            if known_id:
                gone[known_id] = reason
            return None, ()
        self.stats.fetched += 1
        self.stats.fetched_urls.append(url)
        try:
            native_id, title, text, links, noindex, _ = self._page(response)
        except PageSkipped as exc:
            self.problems.append((url, exc.reason))
            if known_id:
                gone[known_id] = exc.reason
            return None, ()
        if noindex:
            self.problems.append((url, "noindex (meta robots)"))
            if known_id:
                gone[known_id] = "noindex (meta robots)"
            # The links are still followed (noindex alone does not forbid it).
            return None, tuple(links)
        etag = response.headers.get("etag")
        last_modified = response.headers.get("last-modified")
        version = PageVersion(url, etag, last_modified, tuple(links))
        return (
            SourceDocument(
                source_id=self.source_id,
                native_id=native_id,
                uri=native_id,
                title=title,
                mime_type="text/markdown",
                content=text.encode("utf-8"),
                acl_groups=self.acl_groups_for(native_id),
                updated_at=_http_date(last_modified),
                metadata={
                    "url": native_id,
                    "fetched_url": response.url,
                    "etag": etag,
                    "last_modified": last_modified,
                },
                version=version.token(),
            ),
            tuple(links),
        )


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def _bounded_inflate(data: bytes, max_bytes: int) -> bytes:
    """Inflates gzip/zlib data, at most ``max_bytes`` out (a decompression-bomb guard).

    Raises:
        PageSkipped: corrupt data, or more than ``max_bytes`` once inflated.
    """
    inflater = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib header, auto-detected
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise PageSkipped(f"corrupt compressed body: {exc}") from exc
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise PageSkipped(f"page over max_page_bytes once decompressed (> {max_bytes} bytes)")
    return out


def _xml_parser() -> lxml.etree.XMLParser:
    """An XML parser that loads no DTD, resolves no entity and reads nothing from the network
    (XXE and entity-expansion guards)."""
    return lxml.etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
