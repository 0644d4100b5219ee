"""Format parsers: a source document's bytes or text → text with structure (sections).

Each parser returns :class:`~rag_platform.lib.models.ParsedDocument` whose sections carry the
heading path (outermost first) and, for PDFs, the 1-based page number. Tables become text, one
row per line with cells joined by ``" | "`` (DOCX, HTML, Markdown) or as the PDF's text lines.
:func:`parse_document` picks the parser by MIME type; :class:`~rag_platform.lib.ingestion.parse.
DocumentParser`, the pipeline's parse stage, calls it in worker processes.

Every failure — unknown mime type, empty, corrupt or encrypted file, no text, a document over
one of the tenant's :class:`~rag_platform.lib.tenants.InputBudgets` — raises
:class:`ParseError` with a reason; the parse stage quarantines the document with that reason.
"""

from __future__ import annotations

import io
import logging
import re
import unicodedata
import zipfile
from collections.abc import Callable, Iterable
from typing import Any

from rag_platform.lib.models import (
    ParsedDocument,
    Section,
    SourceDocument,
)
from rag_platform.lib.tenants import InputBudgets

log = logging.getLogger(__name__)

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
XHTML = "application/xhtml+xml"
MARKDOWN = "text/markdown"
PLAIN = "text/plain"

#: Cell separator for table rows.
CELL_SEPARATOR = " | "


class ParseError(ValueError):
    """A document could not be parsed; ``reason`` says why (shown in the quarantine)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Text normalisation

# C0/C1 control characters except tab and newline; also NUL.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_ZERO_WIDTH = re.compile(r"[\u200b-\u200d\u2060\ufeff\u00ad]")
_MANY_NEWLINES = re.compile(r"\n{3,}")
# Typographic ligatures PDFs keep as single code points ("ﬁnancial" must match "financial").
_LIGATURES = str.maketrans(
    {"ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "st", "ﬆ": "st"}
)


def normalize_text(text: str) -> str:
    """NFC-normalises, drops NUL/control and zero-width characters, expands typographic
    ligatures, collapses runs of spaces and tabs, strips every line and keeps at most one blank
    line between paragraphs."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _ZERO_WIDTH.sub("", _CONTROL.sub("", text)).translate(_LIGATURES)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


def _decode(content: bytes) -> str:
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return content.decode(encoding)
        except UnicodeDecodeError:
            continue
    return content.decode("latin-1")


class _SectionBuilder:
    """Accumulates paragraphs under the current heading path; a heading change flushes."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.headings: list[tuple[int, str]] = []  # (level, text)
        self._paragraphs: list[str] = []

    @property
    def path(self) -> list[str]:
        return [text for _, text in self.headings]

    def add(self, text: str) -> None:
        text = normalize_text(text)
        if text:
            self._paragraphs.append(text)

    def heading(self, level: int, text: str) -> None:
        text = normalize_text(text).replace("\n", " ")
        if not text:
            return
        self.flush()
        self.headings = [(lvl, t) for lvl, t in self.headings if lvl < level]
        self.headings.append((level, text))

    def flush(self) -> None:
        if self._paragraphs:
            self.sections.append(
                Section(text="\n\n".join(self._paragraphs), heading_path=self.path)
            )
            self._paragraphs = []

    def result(self) -> list[Section]:
        self.flush()
        return self.sections


# --------------------------------------------------------------------------------------------
# PDF (pypdfium2)

_PART_RE = re.compile(r"^PART\s+(IV|I{1,3})\b\s*(?:[.:—–-]\s*)?(.*)$", re.IGNORECASE)
_ITEM_RE = re.compile(r"^ITEM\s+(\d{1,2}[A-Z]?)(?:\s*[.:—–-]\s*(.*)|\s*)$", re.IGNORECASE)
# A table-of-contents entry ends with a page reference: "... 14", "Pages 3 - 23", "Not applicable".
_TOC_TAIL = re.compile(r"(?:\b\d{1,3}(?:\s*-\s*\d{1,3})?|not applicable)\s*$", re.IGNORECASE)
_MAX_HEADING_CHARS = 200
#: A page with at least this many "Item N. ... <page>" entries is a table of contents: no
#: heading is taken from it.
_TOC_MIN_ENTRIES = 3


class _SecHeadings:
    """Tracks the PART / Item heading path of an SEC filing (10-Q, 10-K) across pages.

    Running page headers that repeat the current part or item (``PART I`` / ``Item 1`` alone on
    every page, as in Microsoft's filings) are dropped, and so is a bare ``PART II`` that the
    same page spells out in full later; table-of-contents lines stay text.
    """

    def __init__(self) -> None:
        self.part_key: str | None = None
        self.part_title: str | None = None
        self.item_key: str | None = None
        self.item_title: str | None = None

    @property
    def path(self) -> list[str]:
        return [t for t in (self.part_title, self.item_title) if t]

    @staticmethod
    def match(line: str) -> tuple[str, str, str] | None:
        """``(kind, key, tail)`` of a heading candidate ("part"/"item", "II"/"1A", title), or
        None for ordinary text and table-of-contents entries."""
        if len(line) > _MAX_HEADING_CHARS:
            return None
        m = _PART_RE.match(line)
        if m:
            tail = m.group(2).strip()
            if tail and (_TOC_TAIL.search(tail) or len(tail) > 80):
                return None
            return "part", m.group(1).upper(), tail
        m = _ITEM_RE.match(line)
        if m:
            tail = (m.group(2) or "").strip()
            if tail and _TOC_TAIL.search(tail):
                return None
            return "item", m.group(1).upper(), tail
        return None

    def feed(self, line: str, titled_later: set[tuple[str, str]]) -> bool | None:
        """Returns True when the line changed the path, False when it is a running header to
        drop, None when it is ordinary text. ``titled_later`` holds the ``(kind, key)`` pairs
        that appear with a title further down the same page."""
        found = self.match(line)
        if found is None:
            return None
        kind, key, tail = found
        if not tail and (kind, key) in titled_later:
            return False
        if kind == "part":
            if key == self.part_key:
                if tail and self.part_title != line:
                    self.part_title = line
                    return True
                return False
            self.part_key, self.part_title = key, line
            self.item_key = self.item_title = None
            return True
        if key == self.item_key:
            if tail and self.item_title != line:
                self.item_title = line
                return True
            return False
        self.item_key, self.item_title = key, line
        return True


# A heading that ends in one of these words continues on the next line.
_CONTINUES = re.compile(r"(?:\b(?:of|and|the|for|in|to|on|or|by)|[,—–-])$", re.IGNORECASE)


def _reflow(lines: list[str]) -> list[str]:
    """Joins a wrapped line to the previous one when it starts with a lower-case letter (the
    previous line ended mid-sentence) or the previous line ends with a comma ("July 30," +
    "2023"); table rows and headings stay on their own lines."""
    out: list[str] = []
    for line in lines:
        if out and (
            out[-1].endswith(",")
            or (line[:1].islower() and not out[-1].endswith((".", ":", "?", "!")))
        ):
            out[-1] = out[-1][:-1] + line if out[-1].endswith("-") else f"{out[-1]} {line}"
        else:
            out.append(line)
    return out


def _pdf_page_sections(
    lines: list[str], page_no: int, headings: _SecHeadings, toc: bool
) -> list[Section]:
    """Splits one page's lines into sections at PART / Item headings."""
    out: list[Section] = []
    body: list[str] = []
    path = headings.path
    titled: list[tuple[str, str] | None] = []
    for ln in lines:
        found = None if toc else _SecHeadings.match(ln)
        titled.append((found[0], found[1]) if found and found[2] else None)
    i = 0
    while i < len(lines):
        line = lines[i]
        change = None
        if not toc:
            later = {t for t in titled[i + 1 :] if t is not None}
            if (
                titled[i] is not None
                and i + 1 < len(lines)
                and _CONTINUES.search(line)
                and _SecHeadings.match(lines[i + 1]) is None
            ):
                line = f"{line} {lines[i + 1]}"  # heading wrapped onto a second line
                i += 1
            change = headings.feed(line, later)
        if change is None:
            body.append(line)
        elif change and headings.path != path:
            if body:
                out.append(Section("\n".join(_reflow(body)), list(path), page_no))
                body = []
            path = headings.path
        i += 1
    if body:
        out.append(Section("\n".join(_reflow(body)), list(path), page_no))
    return out


_FOOTER = re.compile(r"^(?P<label>\D.{0,78}?)\s+(?P<page>\d{1,3})$")
#: Footer labels are used when at least this many pages, and half of all pages, carry one.
_FOOTER_MIN_PAGES = 3


def _footer_sections(pages: list[list[str]]) -> list[Section] | None:
    """Sections headed by running-footer labels ("MD&A 24", "Financial Statements Notes to
    Financial Statements 9"), for filings with their own layout (Intel's 10-Q has no PART /
    Item headings in the body). None unless at least half the pages (and three) carry a
    labelled footer."""
    labels: list[str | None] = []
    for lines in pages:
        m = _FOOTER.match(lines[-1]) if lines else None
        labels.append(m.group("label").strip() if m else None)
    labelled = sum(1 for label in labels if label)
    if labelled < _FOOTER_MIN_PAGES or labelled < len(pages) / 2:
        return None
    out: list[Section] = []
    for number, (lines, label) in enumerate(zip(pages, labels, strict=True), 1):
        if label:
            lines, path = lines[:-1], [label]
        else:
            path = []
        if lines:
            out.append(Section("\n".join(_reflow(lines)), path, number))
    return out


def _parse_pdf(content: bytes, budgets: InputBudgets) -> ParsedDocument:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(content)
    except pdfium.PdfiumError as exc:
        reason = str(exc)
        if "password" in reason.lower():
            raise ParseError(f"encrypted PDF (password required): {reason}") from exc
        raise ParseError(f"unreadable PDF: {reason}") from exc
    pages: list[list[str]] = []
    try:
        n_pages = len(pdf)
        if n_pages > budgets.max_pdf_pages:
            raise ParseError(f"PDF over max_pdf_pages ({n_pages} > {budgets.max_pdf_pages})")
        for index in range(n_pages):
            page = pdf[index]
            try:
                textpage = page.get_textpage()
                raw = textpage.get_text_range()
                textpage.close()
            finally:
                page.close()
            pages.append([ln for ln in normalize_text(raw).split("\n") if ln])
    except pdfium.PdfiumError as exc:
        raise ParseError(f"unreadable PDF page: {exc}") from exc
    finally:
        pdf.close()
    sections: list[Section] = []
    headings = _SecHeadings()
    for number, lines in enumerate(pages, 1):
        toc_entries = sum(
            1 for ln in lines if _ITEM_RE.match(ln) and _SecHeadings.match(ln) is None
        )
        toc = toc_entries >= _TOC_MIN_ENTRIES
        sections.extend(_pdf_page_sections(lines, number, headings, toc))
    if all(not s.heading_path for s in sections):
        sections = _footer_sections(pages) or sections
    return ParsedDocument(sections=sections, metadata={"pages": n_pages})


# --------------------------------------------------------------------------------------------
# DOCX (python-docx)

_HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)


def _table_rows(rows: Iterable[list[str]]) -> str:
    lines = []
    for cells in rows:
        dedup: list[str] = []
        for cell in cells:
            cell = normalize_text(cell).replace("\n", " ")
            if not dedup or cell != dedup[-1]:  # merged cells repeat their text
                dedup.append(cell)
        if any(dedup):
            lines.append(CELL_SEPARATOR.join(dedup))
    return "\n".join(lines)


def _docx_uncompressed_bytes(content: bytes) -> int:
    """Sum of the declared uncompressed sizes of a DOCX's zip members (bytes), read from the
    zip's central directory without inflating anything. :mod:`zipfile`, which python-docx
    reads through, never returns more than a member's declared size, so this bounds what
    opening the document can inflate.

    Raises:
        ParseError: the content is not a zip archive.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise ParseError(f"unreadable DOCX: {type(exc).__name__}: {exc}") from exc


def _parse_docx(content: bytes, budgets: InputBudgets) -> ParsedDocument:
    inflated = _docx_uncompressed_bytes(content)
    if inflated > budgets.max_docx_uncompressed_bytes:
        raise ParseError(
            "DOCX over max_docx_uncompressed_bytes "
            f"({inflated} > {budgets.max_docx_uncompressed_bytes})"
        )
    try:
        import docx
        from docx.table import Table
        from docx.text.paragraph import Paragraph

        document = docx.Document(io.BytesIO(content))
    except Exception as exc:  # python-docx raises zipfile, KeyError, lxml and value errors
        raise ParseError(f"unreadable DOCX: {type(exc).__name__}: {exc}") from exc
    builder = _SectionBuilder()
    body = document.element.body
    for child in body.iterchildren():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "p":
            para = Paragraph(child, document)
            style = para.style.name if para.style is not None else ""
            m = _HEADING_STYLE.match(style or "")
            if m:
                builder.heading(int(m.group(1)), para.text)
            elif style == "Title":
                builder.heading(0, para.text)
            else:
                builder.add(para.text)
        elif tag == "tbl":
            table = Table(child, document)
            builder.add(_table_rows([c.text for c in row.cells] for row in table.rows))
    props = document.core_properties
    return ParsedDocument(sections=builder.result(), metadata={"title": props.title or ""})


# --------------------------------------------------------------------------------------------
# HTML (BeautifulSoup + lxml)

_DROP_TAGS = ("script", "style", "nav", "header", "footer", "noscript", "template", "svg")
_BLOCK_TAGS = {
    "p",
    "div",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "pre",
    "blockquote",
    "section",
    "article",
    "main",
    "aside",
    "figure",
    "figcaption",
    "form",
    "fieldset",
    "address",
    "br",
    "hr",
    "tr",
    "caption",
    "details",
    "summary",
}


def _parse_html(content: bytes | str) -> ParsedDocument:
    from bs4 import BeautifulSoup, NavigableString, Tag
    from bs4.element import Comment, Doctype, ProcessingInstruction

    try:
        soup = BeautifulSoup(content, "lxml")
    except Exception as exc:
        raise ParseError(f"unreadable HTML: {type(exc).__name__}: {exc}") from exc
    for tag in soup(list(_DROP_TAGS)):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    builder = _SectionBuilder()
    buffer: list[str] = []

    def flush_paragraph() -> None:
        if buffer:
            builder.add("".join(buffer))
            buffer.clear()

    def walk(node: Tag) -> None:
        for child in node.children:
            if isinstance(child, Comment | Doctype | ProcessingInstruction):
                continue
            if isinstance(child, NavigableString):
                buffer.append(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name.lower()
            if name in ("head", "title", "meta", "link"):
                continue
            if len(name) == 2 and name[0] == "h" and name[1] in "123456":
                flush_paragraph()
                builder.heading(int(name[1]), child.get_text(" ", strip=True))
            elif name == "table":
                flush_paragraph()
                rows = (
                    [c.get_text(" ", strip=True) for c in tr.find_all(["td", "th"])]
                    for tr in child.find_all("tr")
                )
                builder.add(_table_rows(rows))
            elif name in _BLOCK_TAGS:
                flush_paragraph()
                walk(child)
                flush_paragraph()
            else:
                walk(child)

    walk(soup.body or soup)
    flush_paragraph()
    return ParsedDocument(sections=builder.result(), metadata={"title": title})


# --------------------------------------------------------------------------------------------
# Markdown (markdown-it-py)


_TAG = re.compile(r"<[^>]*>")


def _inline_text(token: Any) -> str:
    parts: list[str] = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
        elif child.type == "image":
            parts.append(child.content)
    return "".join(parts)


def _parse_markdown(text: str) -> ParsedDocument:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    builder = _SectionBuilder()
    heading_level: int | None = None
    row: list[str] | None = None
    table: list[list[str]] | None = None
    for tok in tokens:
        if tok.type == "heading_open":
            heading_level = int(tok.tag[1])
        elif tok.type == "heading_close":
            heading_level = None
        elif tok.type == "table_open":
            table = []
        elif tok.type == "table_close":
            builder.add(_table_rows(table or []))
            table = None
        elif tok.type == "tr_open":
            row = []
        elif tok.type == "tr_close":
            if table is not None and row is not None:
                table.append(row)
            row = None
        elif tok.type == "inline":
            content = _inline_text(tok)
            if heading_level is not None:
                builder.heading(heading_level, content)
            elif row is not None:
                row.append(content)
            else:
                builder.add(content)
        elif tok.type in ("fence", "code_block"):
            builder.add(tok.content)
        elif tok.type == "html_block":
            builder.add(_TAG.sub(" ", tok.content))
    return ParsedDocument(sections=builder.result())


# --------------------------------------------------------------------------------------------
# Plain text


def _parse_plain(text: str) -> ParsedDocument:
    paragraphs = re.split(r"\n\s*\n", normalize_text(text))
    return ParsedDocument(sections=[Section(p.strip()) for p in paragraphs if p.strip()])


#: Parser per MIME type: ``(content, budgets) -> ParsedDocument``.
_PARSERS: dict[str, Callable[[bytes, InputBudgets], ParsedDocument]] = {
    PDF: _parse_pdf,
    DOCX: _parse_docx,
    HTML: lambda b, _: _parse_html(b),
    XHTML: lambda b, _: _parse_html(b),
    MARKDOWN: lambda b, _: _parse_markdown(_decode(b)),
    "text/x-markdown": lambda b, _: _parse_markdown(_decode(b)),
    PLAIN: lambda b, _: _parse_plain(_decode(b)),
}

#: MIME types :func:`parse_document` accepts for byte content.
SUPPORTED_MIME_TYPES = frozenset(_PARSERS)


def _check_chars(chars: int, budgets: InputBudgets) -> None:
    if chars > budgets.max_document_chars:
        raise ParseError(
            f"document over max_document_chars ({chars} > {budgets.max_document_chars})"
        )


def parse_document(doc: SourceDocument, *, budgets: InputBudgets | None = None) -> ParsedDocument:
    """Extracts text with structure from a source document.

    Text rows (``doc.text`` set, e.g. a dataset row) become one section. Byte content is parsed by
    mime type: PDF (pypdfium2, one or more sections per page with the SEC ``PART`` / ``Item``
    heading path, or the running-footer label when the body has no such headings), DOCX
    (python-docx, ``Heading N`` styles), HTML (BeautifulSoup + lxml, ``h1``–``h6``; script,
    style, nav, header and footer dropped), Markdown (markdown-it-py) and plain text (one
    section per blank-line separated paragraph).

    Budgets are checked before the expensive step they guard: content bytes against
    ``max_file_bytes`` before any parser runs, a PDF's page count against ``max_pdf_pages``
    before any page is extracted, a DOCX's declared uncompressed size against
    ``max_docx_uncompressed_bytes`` before python-docx inflates it (zip-bomb guard), a text
    row's length and the parsed text's total length against ``max_document_chars``.

    Args:
        doc: the document as the connector produced it.
        budgets: the tenant's input budgets (``TenantConfig.budgets``); defaults when None.

    Returns:
        The sections in reading order; empty sections are omitted. ``metadata`` may hold
        ``pages`` (PDF) and ``title`` (DOCX, HTML).

    Raises:
        ParseError: unknown mime type, empty file, corrupt or encrypted file, no text, or a
            budget exceeded (the reason names the budget, e.g. ``PDF over max_pdf_pages
            (2400 > 2000)``).
    """
    budgets = budgets or InputBudgets()
    if doc.content is None:
        if doc.text is None:
            raise ParseError("document has neither content nor text")
        _check_chars(len(doc.text), budgets)
        text = normalize_text(doc.text)
        if not text:
            raise ParseError("empty text")
        return ParsedDocument(sections=[Section(text)])
    mime = (doc.mime_type or "").split(";", 1)[0].strip().lower()
    parser = _PARSERS.get(mime)
    if parser is None:
        raise ParseError(f"unsupported mime type {doc.mime_type!r}")
    if not doc.content:
        raise ParseError("empty file (0 bytes)")
    if len(doc.content) > budgets.max_file_bytes:
        raise ParseError(
            f"file over max_file_bytes ({len(doc.content)} > {budgets.max_file_bytes})"
        )
    try:
        parsed = parser(doc.content, budgets)
    except ParseError:
        raise
    except Exception as exc:  # a parser bug or odd file must quarantine, not crash the run
        raise ParseError(f"cannot parse {mime}: {type(exc).__name__}: {exc}") from exc
    parsed.sections = [s for s in parsed.sections if s.text.strip()]
    if not parsed.sections:
        raise ParseError(f"no text extracted from {mime} (scanned or empty document?)")
    _check_chars(sum(len(s.text) for s in parsed.sections), budgets)
    return parsed


# --------------------------------------------------------------------------------------------
# The parse stage
