"""Tests of parse_document (real SEC 10-Q PDFs, DOCX/HTML/Markdown built here, bad files) and
of the parse stage, DocumentParser."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import threading
import time
import zipfile
from pathlib import Path

import docx
import pandas as pd
import pytest

from rag_platform.lib.ingestion.formats import (
    DOCX,
    HTML,
    MARKDOWN,
    PDF,
    PLAIN,
    ParseError,
    normalize_text,
    parse_document,
)
from rag_platform.lib.ingestion.parse import DocumentParser
from rag_platform.lib.models import (
    DOC_COLUMNS,
    SOURCE_COLUMNS,
    ParsedDocument,
    SourceDocument,
    make_doc_id,
)
from rag_platform.lib.tenants import InputBudgets
from rag_platform_tests.utils.pdfs import all_filings_pdf

SEC_DOCS = Path("/work/shared/data/sec10q/docs")
AAPL = SEC_DOCS / "2023 Q3 AAPL.pdf"
NVDA = SEC_DOCS / "2023 Q2 NVDA.pdf"
MSFT = SEC_DOCS / "2022 Q3 MSFT.pdf"


def _doc(content: bytes | None, mime: str, text: str | None = None) -> SourceDocument:
    return SourceDocument(
        source_id="s",
        native_id="n",
        uri="file:///n",
        title="t",
        mime_type=mime,
        content=content,
        text=text,
    )


@pytest.fixture(scope="module")
def aapl() -> ParsedDocument:
    return parse_document(_doc(AAPL.read_bytes(), PDF))


def _encrypted_pdf() -> bytes:
    """A one-page PDF under the standard security handler whose user password is not empty
    (random /O and /U entries), so it cannot be opened without a password."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        b"<< /Filter /Standard /V 1 /R 2 /O <"
        + b"11" * 32
        + b"> /U <"
        + b"22" * 32
        + b"> /P -4 >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Encrypt 4 0 R "
        f"/ID [<{'ab' * 16}> <{'ab' * 16}>] >>\nstartxref\n{xref}\n%%EOF\n"
    ).encode()
    return out


class TestPdf:
    def test_pages_are_one_based_and_in_order(self, aapl: ParsedDocument) -> None:
        pages = [s.page or 0 for s in aapl.sections]
        assert pages[0] == 1
        assert pages == sorted(pages)
        assert max(pages) == aapl.metadata["pages"] == 29

    def test_sec_heading_path(self, aapl: ParsedDocument) -> None:
        paths = {tuple(s.heading_path) for s in aapl.sections}
        assert ("PART I — FINANCIAL INFORMATION", "Item 1. Financial Statements") in paths
        assert (
            "PART I — FINANCIAL INFORMATION",
            "Item 2. Management’s Discussion and Analysis of Financial Condition and "
            "Results of Operations",
        ) in paths
        assert ("PART II — OTHER INFORMATION", "Item 1A. Risk Factors") in paths
        # The table of contents (page 3) does not set headings; the cover page has none.
        assert all(s.heading_path == [] for s in aapl.sections if s.page in (1, 2, 3))
        mdna = [
            s
            for s in aapl.sections
            if s.heading_path[-1:] and s.heading_path[-1].startswith("Item 2. Management")
        ]
        assert "Net sales" in " ".join(s.text for s in mdna)

    def test_table_rows_are_kept_as_lines(self, aapl: ParsedDocument) -> None:
        page4 = "\n".join(s.text for s in aapl.sections if s.page == 4)
        assert "Total net sales 81,797 82,959 293,787 304,182" in page4.split("\n")

    def test_wrapped_upper_case_heading_is_joined(self) -> None:
        parsed = parse_document(_doc(NVDA.read_bytes(), PDF))
        items = {s.heading_path[-1] for s in parsed.sections if len(s.heading_path) == 2}
        assert (
            "ITEM 2. MANAGEMENT’S DISCUSSION AND ANALYSIS OF FINANCIAL CONDITION AND "
            "RESULTS OF OPERATIONS"
        ) in items

    def test_running_footer_labels_when_the_body_has_no_part_item_headings(self) -> None:
        # Intel's 10-Q has its own layout; its footers name the section ("MD&A 24").
        parsed = parse_document(_doc((SEC_DOCS / "2023 Q2 INTC.pdf").read_bytes(), PDF))
        paths = {tuple(s.heading_path) for s in parsed.sections}
        assert ("MD&A",) in paths
        assert ("Financial Statements Notes to Financial Statements",) in paths
        mdna = [s for s in parsed.sections if s.heading_path == ["MD&A"]]
        assert not any(s.text.endswith(f"MD&A {s.page - 2}") for s in mdna)

    def test_text_is_normalised(self, aapl: ParsedDocument) -> None:
        for s in aapl.sections:
            assert "\r" not in s.text and "\x00" not in s.text and "  " not in s.text
            assert s.text == s.text.strip() and s.text

    def test_truncated_pdf_raises_parse_error(self) -> None:
        data = AAPL.read_bytes()[:5000]
        with pytest.raises(ParseError, match="PDF") as info:
            parse_document(_doc(data, PDF))
        assert info.value.reason

    def test_encrypted_pdf_raises_parse_error(self) -> None:
        with pytest.raises(ParseError, match="encrypted"):
            parse_document(_doc(_encrypted_pdf(), PDF))

    def test_garbage_with_pdf_mime_raises_parse_error(self) -> None:
        with pytest.raises(ParseError):
            parse_document(_doc(b"this is not a pdf at all", PDF))


class TestBadInput:
    @pytest.mark.parametrize("mime", [PDF, DOCX, HTML, MARKDOWN, PLAIN])
    def test_empty_file_raises(self, mime: str) -> None:
        with pytest.raises(ParseError, match="empty file"):
            parse_document(_doc(b"", mime))

    def test_unknown_mime_type_raises(self) -> None:
        with pytest.raises(ParseError, match="unsupported mime type"):
            parse_document(_doc(b"\x89PNG....", "image/png"))

    def test_corrupt_docx_raises(self) -> None:
        with pytest.raises(ParseError, match="DOCX"):
            parse_document(_doc(b"PK\x03\x04 not really a zip", DOCX))

    def test_document_without_text_raises(self) -> None:
        with pytest.raises(ParseError, match="no text"):
            parse_document(_doc(b"<html><body><script>x()</script></body></html>", HTML))
        with pytest.raises(ParseError):
            parse_document(_doc(None, PLAIN, text=" \n\t "))
        with pytest.raises(ParseError, match="neither"):
            parse_document(_doc(None, PLAIN))


class TestDocx:
    def test_headings_paragraphs_and_tables(self) -> None:
        document = docx.Document()
        document.add_heading("Annual Report", level=1)
        document.add_paragraph("Opening remarks.")
        document.add_heading("Revenue", level=2)
        document.add_paragraph("Revenue grew strongly.")
        table = document.add_table(rows=2, cols=3)
        for r, row in enumerate([["Segment", "2023", "2022"], ["Cloud", "10", "8"]]):
            for c, value in enumerate(row):
                table.cell(r, c).text = value
        document.add_heading("Outlook", level=1)
        document.add_paragraph("Cautious.")
        buffer = io.BytesIO()
        document.save(buffer)
        parsed = parse_document(_doc(buffer.getvalue(), DOCX))
        got = [(s.heading_path, s.text) for s in parsed.sections]
        assert got == [
            (["Annual Report"], "Opening remarks."),
            (
                ["Annual Report", "Revenue"],
                "Revenue grew strongly.\n\nSegment | 2023 | 2022\nCloud | 10 | 8",
            ),
            (["Outlook"], "Cautious."),
        ]


class TestHtml:
    def test_drops_boilerplate_and_keeps_structure(self) -> None:
        html = """<html><head><title>Doc title</title><style>p {color: red}</style></head>
        <body><nav>Home | About</nav><header>Site header</header>
        <h1>Main</h1><p>Intro <b>bold</b> text.</p>
        <script>var x = 1;</script>
        <h2>Details</h2><ul><li>first</li><li>second</li></ul>
        <table><tr><th>Name</th><th>Value</th></tr><tr><td>a</td><td>1</td></tr></table>
        <h2>Other</h2><p>More.</p>
        <footer>Copyright</footer></body></html>"""
        parsed = parse_document(_doc(html.encode(), HTML))
        got = [(s.heading_path, s.text) for s in parsed.sections]
        assert got == [
            (["Main"], "Intro bold text."),
            (["Main", "Details"], "first\n\nsecond\n\nName | Value\na | 1"),
            (["Main", "Other"], "More."),
        ]
        assert parsed.metadata["title"] == "Doc title"
        joined = parsed.text
        for boilerplate in ("Home", "Site header", "var x", "color", "Copyright"):
            assert boilerplate not in joined


class TestMarkdown:
    def test_headings_tables_code_and_inline_markup(self) -> None:
        md = (
            "# Guide\n\nSome *emphasis* and a [link](http://x.org).\n\n"
            "## Install\n\nRun this:\n\n```bash\npip install x\n```\n\n"
            "| Col A | Col B |\n|---|---|\n| 1 | 2 |\n\n"
            '# Appendix\n\n- item one\n- item <em>two</em>\n\n<div class="x">raw html</div>\n'
        )
        parsed = parse_document(_doc(md.encode(), MARKDOWN))
        got = [(s.heading_path, s.text) for s in parsed.sections]
        assert got == [
            (["Guide"], "Some emphasis and a link."),
            (["Guide", "Install"], "Run this:\n\npip install x\n\nCol A | Col B\n1 | 2"),
            (["Appendix"], "item one\n\nitem two\n\nraw html"),
        ]


class TestPlainText:
    def test_paragraphs_split_on_blank_lines_and_control_chars_dropped(self) -> None:
        raw = "First  para\x00graph\r\nline two.\r\n\r\n\r\n\x07Second\tparagraph.\n"
        parsed = parse_document(_doc(raw.encode(), PLAIN))
        assert [s.text for s in parsed.sections] == [
            "First paragraph\nline two.",
            "Second paragraph.",
        ]
        assert all(s.heading_path == [] and s.page is None for s in parsed.sections)

    def test_cp1252_bytes_are_decoded(self) -> None:
        parsed = parse_document(_doc("café – naïve".encode("cp1252"), PLAIN))
        assert parsed.sections[0].text == "café – naïve"

    def test_dataset_text_row_is_one_section(self) -> None:
        parsed = parse_document(_doc(None, PLAIN, text="Abstract text.\n\nSecond paragraph."))
        assert len(parsed.sections) == 1
        assert parsed.sections[0].text == "Abstract text.\n\nSecond paragraph."


class TestNormalizeText:
    def test_whitespace_and_controls(self) -> None:
        assert normalize_text(" a\u00a0\u00a0b\u200b c \n\n\n\nd\x1f ") == "a b c\n\nd"
        assert normalize_text("e\u0301 ﬁnancial\r\nx") == "\u00e9 financial\nx"


class TestBudgets:
    def test_pdf_over_the_page_budget_is_refused_before_extraction(
        self, aapl: ParsedDocument
    ) -> None:
        assert aapl.metadata["pages"] > 5  # the default budget lets it through
        content = AAPL.read_bytes()
        with pytest.raises(ParseError, match=r"PDF over max_pdf_pages \(\d+ > 5\)"):
            parse_document(_doc(content, PDF), budgets=InputBudgets(max_pdf_pages=5))

    def test_docx_zip_bomb_is_refused_before_python_docx_inflates_it(self) -> None:
        buf = io.BytesIO()
        docx.Document().save(buf)
        bomb = io.BytesIO()
        with (
            zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src,
            zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out,
        ):
            for info in src.infolist():
                if info.filename != "word/document.xml":
                    out.writestr(info, src.read(info))
            with out.open("word/document.xml", "w") as member:
                chunk = b" " * (1024 * 1024)
                for _ in range(300):  # 300 MB of spaces, a few hundred KB compressed
                    member.write(chunk)
        content = bomb.getvalue()
        assert len(content) < 2 * 1024 * 1024
        with pytest.raises(ParseError, match=r"DOCX over max_docx_uncompressed_bytes \(3\d{8} > "):
            parse_document(_doc(content, DOCX))

    def test_characters_and_bytes_budgets_name_the_budget(self) -> None:
        small = InputBudgets(max_document_chars=10, max_file_bytes=100)
        with pytest.raises(ParseError, match=r"document over max_document_chars \(11 > 10\)"):
            parse_document(_doc(None, PLAIN, text="eleven char"), budgets=small)
        with pytest.raises(ParseError, match=r"document over max_document_chars \(\d+ > 10\)"):
            parse_document(_doc(b"# Title\n\nsome words here", MARKDOWN), budgets=small)
        with pytest.raises(ParseError, match=r"file over max_file_bytes \(101 > 100\)"):
            parse_document(_doc(b"x" * 101, PLAIN), budgets=small)


# --------------------------------------------------------------------------------------------
# The parse stage


def _sources(rows: list[tuple[str, bytes | None, str | None, str]]) -> pd.DataFrame:
    """A sources frame of ``(native id, content, text, mime type)`` rows."""
    out = []
    for native_id, content, text, mime in rows:
        doc = SourceDocument("s", native_id, f"file:///{native_id}", native_id, mime, content, text)
        out.append(
            {
                "doc_id": make_doc_id("t", "s", native_id),
                "tenant": "t",
                "source_id": "s",
                "native_id": native_id,
                "uri": doc.uri,
                "title": doc.title,
                "mime_type": mime,
                "content": content,
                "text": text,
                "content_hash": doc.content_hash,
                "acl_groups": ["all"],
                "updated_at": "",
                "metadata": "{}",
                "change": "added",
            }
        )
    return pd.DataFrame(out, columns=SOURCE_COLUMNS)


class TestDocumentParser:
    def test_quarantines_bad_files_and_caches_by_content(self, tmp_path: Path) -> None:
        pdf = AAPL.read_bytes()
        sources = _sources(
            [
                ("aapl.pdf", pdf, None, PDF),
                ("corrupt.pdf", pdf[:20000], None, PDF),
                ("empty.pdf", b"", None, PDF),
                ("row", None, "A dataset row.", PLAIN),
            ]
        )
        first = DocumentParser(tmp_path).run(sources)
        assert list(first.frame["doc_id"]) == [sources["doc_id"][0], sources["doc_id"][3]]
        assert list(first.frame.columns) == DOC_COLUMNS
        assert {q.uri for q in first.quarantined} == {"file:///corrupt.pdf", "file:///empty.pdf"}
        assert first.stats.processed == 4 and first.stats.failed == 2
        records = json.loads((tmp_path / "quarantine_parse.json").read_text())
        assert {r["uri"] for r in records} == {"file:///corrupt.pdf", "file:///empty.pdf"}
        again = DocumentParser(tmp_path).run(sources)
        assert again.stats.processed == 0 and again.stats.reused == 4
        assert list(again.frame["sections"]) == list(first.frame["sections"])
        assert len(again.quarantined) == 2  # failures are cached too

    def test_a_file_over_parse_seconds_is_quarantined_with_the_budget(self, tmp_path: Path) -> None:
        # every 10-Q in one PDF takes seconds of CPU to parse: over 0.5 s on any machine
        sources = _sources(
            [
                ("msft.pdf", all_filings_pdf(), None, PDF),
                ("note.txt", b"Backups are kept for 30 days.", None, PLAIN),
                ("row", None, "A dataset row.", PLAIN),
            ]
        )
        tight = DocumentParser(tmp_path, InputBudgets(parse_seconds=0.5), workers=2).run(sources)
        assert [(q.uri, q.stage, q.reason) for q in tight.quarantined] == [
            ("file:///msft.pdf", "parse", "parse over parse_seconds (0.5 s)")
        ]
        assert list(tight.frame["doc_id"]) == list(sources["doc_id"][1:])
        records = json.loads((tmp_path / "quarantine_parse.json").read_text())
        assert [r["reason"] for r in records] == ["parse over parse_seconds (0.5 s)"]
        # the failure is cached under its budget: the same budget reuses it, a larger one retries
        same = DocumentParser(tmp_path, InputBudgets(parse_seconds=0.5)).run(sources)
        assert same.stats.reused == 3 and len(same.quarantined) == 1
        larger = DocumentParser(tmp_path, InputBudgets()).run(sources)
        assert larger.stats.reused == 2 and larger.stats.processed == 1
        assert not larger.quarantined and len(larger.frame) == 3

    def test_a_parser_process_killed_mid_document_quarantines_that_document(
        self, tmp_path: Path
    ) -> None:
        pdf = MSFT.read_bytes()
        sources = _sources([(f"msft-{i}.pdf", pdf, None, PDF) for i in range(12)])
        killed: list[int] = []
        killer = threading.Thread(target=_kill_parser_mid_document, args=(killed,))
        killer.start()
        result = DocumentParser(tmp_path, workers=1).run(sources)
        killer.join()
        assert len(killed) == 1
        assert [q.reason for q in result.quarantined] == [
            f"parser process died: exit code {-signal.SIGKILL}"
        ]
        assert len(result.frame) == 11  # the run went on with a fresh parser process


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _kill_parser_mid_document(killed: list[int]) -> None:
    """SIGKILLs this process's parser worker once it has used 1.2 s of CPU (its start costs
    about 0.5 s, each 10-Q about 0.3 s: it is then inside its third or fourth document) while
    it runs Python code (not between two documents, waiting on its pipe)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for worker in multiprocessing.active_children():
            if worker.name != "pebble_pool_worker" or worker.pid is None:
                continue
            try:
                busy = Path(f"/proc/{worker.pid}/syscall").read_text().startswith("running")
                if busy and _cpu_seconds(worker.pid) >= 1.2:
                    os.kill(worker.pid, signal.SIGKILL)
                    killed.append(worker.pid)
                    return
            except OSError:  # the worker ended meanwhile
                continue
        time.sleep(0.01)


def test_a_text_row_parsed_in_process_cannot_stall() -> None:
    """Text rows skip the worker processes: their parse is linear in the text, which is at
    most max_document_chars long, so the largest and most irregular row takes a small part of
    the default parse_seconds."""
    budgets = InputBudgets()
    unit = "a\u200b \t\u00a0\r\n\x07ﬁ\n\n"
    text = (unit * (budgets.max_document_chars // len(unit)))[: budgets.max_document_chars]
    started = time.process_time()
    parsed = parse_document(_doc(None, PLAIN, text), budgets=budgets)
    assert parsed.sections
    assert time.process_time() - started < budgets.parse_seconds / 10
