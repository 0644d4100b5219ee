"""Tests of the Chunker with the real all-MiniLM-L6-v2 tokenizer, a real 10-Q PDF and SciFact,
and of the chunking stage, DocumentChunker."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pandas as pd
import pytest
from tokenizers import Tokenizer

from rag_platform.lib.ingestion.chunk import (
    Chunker,
    DocumentChunker,
    embedding_text,
    load_tokenizer,
    split_units,
)
from rag_platform.lib.ingestion.formats import parse_document
from rag_platform.lib.models import (
    CHUNK_COLUMNS,
    MASKED_COLUMNS,
    Chunk,
    ParsedDocument,
    Section,
    SourceDocument,
    make_chunk_id,
    make_doc_id,
    sha256_hex,
)
from rag_platform.lib.tenants import ChunkingConfig

SCIFACT = Path("/work/shared/data/scifact/corpus.jsonl")
PDF_PATH = Path("/work/shared/data/sec10q/docs/2023 Q3 AAPL.pdf")
DOC_ID = make_doc_id("t", "s", "doc")


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer()


@pytest.fixture(scope="module")
def filing() -> ParsedDocument:
    doc = SourceDocument(
        "filings",
        PDF_PATH.name,
        PDF_PATH.as_uri(),
        PDF_PATH.stem,
        "application/pdf",
        content=PDF_PATH.read_bytes(),
    )
    return parse_document(doc)


@pytest.fixture(scope="module")
def abstracts() -> list[dict[str, str]]:
    with SCIFACT.open() as f:
        return [json.loads(line) for line in islice(f, 30)]


def _count(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def _check_invariants(
    chunks: list[Chunk], tokenizer: Tokenizer, title: str, max_tokens: int, doc_id: str
) -> None:
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert len({c.chunk_id for c in chunks}) == len(chunks)
    for c in chunks:
        full = embedding_text(title, c.heading_path, c.text)
        assert 0 < c.token_count <= max_tokens
        assert c.token_count == _count(tokenizer, full)
        assert c.content_hash == sha256_hex(full)
        assert c.chunk_id == make_chunk_id(doc_id, c.ordinal, c.content_hash)
        assert c.doc_id == doc_id
        assert c.text.strip() == c.text and c.text


class TestLoadTokenizer:
    def test_no_truncation_or_padding(self, tokenizer: Tokenizer) -> None:
        assert _count(tokenizer, "word " * 600) == 600
        assert _count(tokenizer, "hello") == 1

    def test_missing_file_raises(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            load_tokenizer(tmp_path)


class TestEmbeddingText:
    def test_layout(self) -> None:
        assert embedding_text("Title", ["PART I", "Item 2"], "Body.") == (
            "Title.\nPART I > Item 2.\nBody."
        )
        assert embedding_text("Ends with a period.", [], "Body") == "Ends with a period.\nBody"
        assert embedding_text("", [], "Body") == "Body"

    def test_long_title_and_deep_paths_are_capped(self) -> None:
        text = embedding_text("word " * 100, ["a", "b", "c", "d"], "x")
        title_line, path_line, body = text.split("\n")
        assert len(title_line) <= 160 and title_line.endswith("word…")
        assert path_line == "b > c > d." and body == "x"


class TestSplitUnits:
    def test_sentences_lines_and_abbreviations(self) -> None:
        text = 'First sentence, e.g. this one. Second "quoted." Third (see Fig. 2) ends!\nRow 1 2'
        units = [text[s:e] for s, e in split_units(text)]
        assert units == [
            "First sentence, e.g. this one.",
            'Second "quoted."',
            "Third (see Fig. 2) ends!",
            "Row 1 2",
        ]


class TestChunker:
    def test_bounds_ids_and_heading_paths_on_a_real_10q(
        self, tokenizer: Tokenizer, filing: ParsedDocument
    ) -> None:
        chunker = Chunker(tokenizer, max_tokens=200, overlap_tokens=32)
        chunks = chunker.run(DOC_ID, filing, PDF_PATH.stem)
        assert len(chunks) > 50
        _check_invariants(chunks, tokenizer, PDF_PATH.stem, 200, DOC_ID)
        # A chunk never spans two heading paths: its text lies within its own path's sections.
        by_path: dict[tuple[str, ...], str] = {}
        for s in filing.sections:
            by_path[tuple(s.heading_path)] = by_path.get(tuple(s.heading_path), "") + s.text
        for c in chunks:
            for piece in c.text.split("\n\n"):
                assert piece in by_path[tuple(c.heading_path)]
        paths = {tuple(c.heading_path) for c in chunks}
        assert (
            "PART I — FINANCIAL INFORMATION",
            "Item 2. Management’s Discussion and Analysis of Financial Condition and "
            "Results of Operations",
        ) in paths
        assert paths <= set(by_path)
        assert {c.page for c in chunks} >= {1, 4, 17, 25}
        # Deterministic.
        again = chunker.run(DOC_ID, filing, PDF_PATH.stem)
        assert [c.chunk_id for c in again] == [c.chunk_id for c in chunks]

    def test_consecutive_pages_with_one_heading_flow_together(self, tokenizer: Tokenizer) -> None:
        parsed = ParsedDocument(
            [
                Section("Alpha sentence one.", ["H"], page=1),
                Section("Beta sentence two.", ["H"], page=2),
                Section("Gamma sentence three.", ["Other"], page=2),
            ]
        )
        chunks = Chunker(tokenizer, 64, 0).run(DOC_ID, parsed, "T")
        assert [(c.text, c.heading_path, c.page) for c in chunks] == [
            ("Alpha sentence one.\n\nBeta sentence two.", ["H"], 1),
            ("Gamma sentence three.", ["Other"], 2),
        ]

    def test_scifact_abstracts_bounds_and_run_many(
        self, tokenizer: Tokenizer, abstracts: list[dict[str, str]]
    ) -> None:
        chunker = Chunker(tokenizer, max_tokens=128, overlap_tokens=24)
        docs = [
            (
                make_doc_id("scifact", "corpus", a["_id"]),
                ParsedDocument([Section(a["text"])]),
                a["title"],
            )
            for a in abstracts
        ]
        many = chunker.run_many(docs)
        for (doc_id, parsed, title), result in zip(docs, many, strict=True):
            assert isinstance(result, list) and result
            _check_invariants(result, tokenizer, title, 128, doc_id)
            single = chunker.run(doc_id, parsed, title)
            assert [c.chunk_id for c in single] == [c.chunk_id for c in result]
        assert sum(len(r) for r in many if isinstance(r, list)) > len(abstracts)
        all_ids = [c.chunk_id for r in many if isinstance(r, list) for c in r]
        assert len(set(all_ids)) == len(all_ids)

    def test_overlap_repeats_trailing_sentences(self, tokenizer: Tokenizer) -> None:
        text = " ".join(f"Sentence number {i} talks about topic {i}." for i in range(40))
        chunker = Chunker(tokenizer, max_tokens=60, overlap_tokens=12)
        chunks = chunker.run(DOC_ID, ParsedDocument([Section(text)]), "")
        assert len(chunks) > 3
        for prev, nxt in zip(chunks, chunks[1:], strict=False):
            last_sentence = split_units(prev.text)[-1]
            assert nxt.text.startswith(prev.text[last_sentence[0] : last_sentence[1]])
        # Without overlap no sentence repeats.
        plain = Chunker(tokenizer, max_tokens=60, overlap_tokens=0).run(
            DOC_ID, ParsedDocument([Section(text)]), ""
        )
        assert " ".join(c.text for c in plain) == text

    def test_oversize_sentence_is_split_on_token_boundaries(self, tokenizer: Tokenizer) -> None:
        words = [f"antidisestablishment{i}" for i in range(300)]
        text = " ".join(words)
        chunks = Chunker(tokenizer, max_tokens=50, overlap_tokens=10).run(
            DOC_ID, ParsedDocument([Section(text)]), "A title"
        )
        assert len(chunks) > 5
        _check_invariants(chunks, tokenizer, "A title", 50, DOC_ID)
        for c in chunks:
            assert c.text in text
        assert " ".join(c.text for c in chunks) == text  # pieces carry no overlap

    def test_title_change_changes_hash_and_id(self, tokenizer: Tokenizer) -> None:
        parsed = ParsedDocument([Section("Same body text.")])
        chunker = Chunker(tokenizer, 64, 8)
        a, b = chunker.run(DOC_ID, parsed, "Old"), chunker.run(DOC_ID, parsed, "New")
        assert a[0].text == b[0].text
        assert a[0].content_hash != b[0].content_hash and a[0].chunk_id != b[0].chunk_id

    def test_empty_sections_are_skipped(self, tokenizer: Tokenizer) -> None:
        chunker = Chunker(tokenizer, 64, 8)
        assert chunker.run(DOC_ID, ParsedDocument([Section("  "), Section("")]), "T") == []
        chunks = chunker.run(DOC_ID, ParsedDocument([Section(""), Section("Real text.")]), "T")
        assert [c.text for c in chunks] == ["Real text."]

    def test_min_tokens_drops_tiny_chunks(self, tokenizer: Tokenizer) -> None:
        parsed = ParsedDocument([Section("Long enough sentence here.", ["A"]), Section("7", ["B"])])
        assert [
            c.text for c in Chunker(tokenizer, 64, 0, min_tokens=3).run(DOC_ID, parsed, "")
        ] == ["Long enough sentence here."]

    def test_prefix_too_long_for_the_budget_raises(self, tokenizer: Tokenizer) -> None:
        parsed = ParsedDocument([Section("Body.", ["heading " * 30])])
        with pytest.raises(ValueError, match="max_tokens"):
            Chunker(tokenizer, 16, 0).run(DOC_ID, parsed, "a long title " * 20)
        result = Chunker(tokenizer, 16, 0).run_many(
            [
                (DOC_ID, parsed, "a long title " * 20),
                (DOC_ID, ParsedDocument([Section("fine")]), "ok"),
            ]
        )
        assert isinstance(result[0], ValueError) and isinstance(result[1], list)

    @pytest.mark.parametrize(
        ("max_tokens", "overlap", "min_tokens"), [(4, 0, 1), (64, 64, 1), (64, -1, 1), (64, 8, 0)]
    )
    def test_invalid_settings_raise(
        self, tokenizer: Tokenizer, max_tokens: int, overlap: int, min_tokens: int
    ) -> None:
        with pytest.raises(ValueError):
            Chunker(tokenizer, max_tokens, overlap, min_tokens)


# --------------------------------------------------------------------------------------------
# The chunking stage


def _masked(docs: list[tuple[str, str, list[str]]]) -> pd.DataFrame:
    """A masked frame of ``(doc id, title, section texts)`` rows, ACL ``["all"]``."""
    rows = []
    for doc_id, title, texts in docs:
        sections = json.dumps([{"text": t, "heading_path": [], "page": None} for t in texts])
        rows.append(
            {
                "doc_id": doc_id,
                "tenant": "t",
                "source_id": "s",
                "uri": f"file:///{title}",
                "title": title,
                "mime_type": "text/plain",
                "content_hash": sha256_hex(sections),
                "acl_groups": ["all"],
                "updated_at": "",
                "sections": sections,
                "masked_hash": sha256_hex(sections),
            }
        )
    return pd.DataFrame(rows, columns=MASKED_COLUMNS)


class TestDocumentChunker:
    CHUNKING = ChunkingConfig(max_tokens=64, overlap_tokens=8)

    def test_chunks_quarantines_and_reuses_with_the_current_acl(self, tmp_path: Path) -> None:
        long = make_doc_id("t", "s", "long")
        empty = make_doc_id("t", "s", "empty")
        text = " ".join(f"Sentence {i} is about the storage policy of backups." for i in range(20))
        masked = _masked([(long, "Backups", [text]), (empty, "Nothing", [])])
        first = DocumentChunker(tmp_path, self.CHUNKING).run(masked)
        assert list(first.frame.columns) == CHUNK_COLUMNS
        assert len(first.frame) > 2 and set(first.frame["doc_id"]) == {long}
        assert first.frame["token_count"].max() <= 64
        assert [q.doc_id for q in first.quarantined] == [empty]
        assert json.loads((tmp_path / "quarantine_chunk.json").read_text())[0]["doc_id"] == empty
        masked.at[0, "acl_groups"] = ["hr"]
        again = DocumentChunker(tmp_path, self.CHUNKING).run(masked)
        assert again.stats.processed == 0 and again.stats.reused == 2
        assert list(again.frame["chunk_id"]) == list(first.frame["chunk_id"])
        assert {tuple(g) for g in again.frame["acl_groups"]} == {("hr",)}

    def test_a_title_over_the_budget_is_quarantined_not_cached(self, tmp_path: Path) -> None:
        doc = make_doc_id("t", "s", "title")
        masked = _masked([(doc, "word " * 200, ["Some body text."])])
        small = ChunkingConfig(max_tokens=16, overlap_tokens=2)
        result = DocumentChunker(tmp_path, small).run(masked)
        assert result.frame.empty and result.quarantined[0].doc_id == doc
        assert DocumentChunker(tmp_path, small).run(masked).stats.reused == 0
