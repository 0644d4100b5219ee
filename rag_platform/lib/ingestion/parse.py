"""The parse stage: source documents → sectioned text, cached by content hash, each file
parsed in a worker process within the tenant's time budget. The format parsers themselves are
in :mod:`rag_platform.lib.ingestion.formats`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import pandas as pd

from rag_platform.lib.cache import StageCache
from rag_platform.lib.crypto import NO_CIPHER, TenantCipher
from rag_platform.lib.ingestion.formats import ParseError, parse_document
from rag_platform.lib.ingestion.quarantine import save_quarantine
from rag_platform.lib.ingestion.workers import TaskFailure, WorkerPool
from rag_platform.lib.models import (
    DOC_COLUMNS,
    Quarantined,
    SectionRecord,
    SourceDocument,
    StageStats,
    section_records,
)
from rag_platform.lib.progress import ProgressCallback, no_progress
from rag_platform.lib.tenants import InputBudgets

log = logging.getLogger(__name__)

#: Bump when parsing output changes, so cached parses are recomputed.
PARSER_VERSION = "1"


class _ParseEntry(TypedDict, total=False):
    """A cached parse: the sections, or the reason the document was quarantined (with the
    ``parse_seconds`` it broke, for a time-budget failure)."""

    sections: list[SectionRecord]
    error: str
    parse_seconds: float


@dataclass
class ParseResult:
    """Output of :class:`DocumentParser`.

    Attributes:
        frame: parsed documents (``DOC_COLUMNS``), quarantined ones left out.
        quarantined: documents that could not be parsed, with the reason.
        stats: ``processed`` (parsed now), ``reused`` (from the cache), ``failed``, seconds.
    """

    frame: pd.DataFrame
    quarantined: list[Quarantined]
    stats: StageStats


class DocumentParser:
    """The parse stage: source documents → sectioned text, cached by content hash.

    A failure (:class:`ParseError`, or a parser crash on one file) quarantines the document with
    its reason; the run goes on. Files (byte content) are parsed in worker processes
    (:class:`~rag_platform.lib.ingestion.workers.WorkerPool`), one task per document, each
    within ``budgets.parse_seconds``: a file over it is quarantined with the reason ``parse over
    parse_seconds (120 s)``, and one whose parser process dies (a crash in a C extension, the
    out-of-memory killer) with ``parser process died: exit code …``. Text rows (a dataset's
    rows) are parsed in this process: their parse is ``formats.normalize_text`` of at most
    ``max_document_chars`` characters (checked first), character-class regexes linear in the
    text, so it cannot stall.

    Failures are cached too, so a broken file is not re-parsed until it changes; a time-budget
    failure is re-tried when ``parse_seconds`` has been raised since.

    Args:
        state_dir: the tenant's state folder; holds the cache ``parsed.parquet`` and the
            quarantine records ``quarantine_parse.json``.
        budgets: the tenant's input budgets (``TenantConfig.budgets``); defaults when None.
        workers: most worker processes parsing files (``RAG_PARSE_WORKERS``); at least one is
            used whenever a file needs parsing, so the time budget always holds.
        cipher: the tenant's cipher, sealing the cached texts at rest; default none.
    """

    def __init__(
        self,
        state_dir: Path,
        budgets: InputBudgets | None = None,
        workers: int = 1,
        cipher: TenantCipher = NO_CIPHER,
    ) -> None:
        self.state_dir = state_dir
        self.cipher = cipher
        self.budgets = budgets or InputBudgets()
        self.workers = workers

    def run(self, sources: pd.DataFrame, progress: ProgressCallback | None = None) -> ParseResult:
        """Parses every row of the sources frame (``SOURCE_COLUMNS``).

        Args:
            sources: the sources frame.
            progress: called with ``(documents done, documents)`` as documents finish (cached
                ones count at once).

        Returns:
            The parsed frame, the quarantined documents (also written to the quarantine file)
            and stats.
        """
        start = time.perf_counter()
        cache = StageCache(self.state_dir / "parsed.parquet", self.cipher)
        stats = StageStats()
        records = list(sources.itertuples(index=False))
        entries: dict[int, _ParseEntry] = {}
        files: list[tuple[int, tuple[object, ...]]] = []  # (row, (document, budgets))
        report = progress or no_progress
        total = len(records)
        try:
            for i, src in enumerate(records):
                cached = cast("_ParseEntry | None", cache.get(_cache_key(src)))
                if cached is not None and not self._retry(cached):
                    entries[i] = cached
                    stats.reused += 1
                    continue
                doc = _source_document(src)
                if doc.content is None:
                    entries[i] = _parse_entry(doc, self.budgets)
                    cache.put(_cache_key(src), entries[i])
                    stats.processed += 1
                else:
                    files.append((i, (doc, self.budgets)))
            report(len(entries), total)
            if files:
                with WorkerPool(min(max(1, self.workers), len(files))) as pool:
                    done = pool.run(_parse_entry, files, timeout=self.budgets.parse_seconds)
                    for i, outcome in done:
                        entries[i] = self._entry(outcome)
                        cache.put(_cache_key(records[i]), entries[i])
                        stats.processed += 1
                        report(len(entries), total)
        finally:  # what was parsed is kept, whether the run ends or is interrupted
            cache.save()
        rows: list[dict[str, object]] = []
        quarantined: list[Quarantined] = []
        for i, src in enumerate(records):
            entry = entries[i]
            if "error" in entry:
                stats.failed += 1
                quarantined.append(Quarantined(src.doc_id, src.uri, "parse", entry["error"]))
                continue
            rows.append(
                {
                    "doc_id": src.doc_id,
                    "tenant": src.tenant,
                    "source_id": src.source_id,
                    "uri": src.uri,
                    "title": src.title,
                    "mime_type": src.mime_type,
                    "content_hash": src.content_hash,
                    "acl_groups": list(src.acl_groups),
                    "updated_at": src.updated_at,
                    "sections": json.dumps(entry["sections"]),
                }
            )
        save_quarantine(self.state_dir, "parse", quarantined)
        stats.seconds = time.perf_counter() - start
        return ParseResult(pd.DataFrame(rows, columns=DOC_COLUMNS), quarantined, stats)

    def _retry(self, cached: _ParseEntry) -> bool:
        """A cached time-budget failure under a smaller ``parse_seconds`` than today's."""
        return cached.get("parse_seconds", self.budgets.parse_seconds) < self.budgets.parse_seconds

    def _entry(self, outcome: _ParseEntry | TaskFailure) -> _ParseEntry:
        if not isinstance(outcome, TaskFailure):
            return outcome
        if outcome.kind == "timeout":
            seconds = self.budgets.parse_seconds
            return {"error": f"parse over parse_seconds ({seconds:g} s)", "parse_seconds": seconds}
        return {"error": f"parser process died: {outcome.detail}"}


def _cache_key(src: Any) -> str:
    return f"{src.content_hash}:{src.mime_type}:{PARSER_VERSION}"


def _source_document(src: Any) -> SourceDocument:
    """The :class:`SourceDocument` of one sources-frame row (a pandas named tuple)."""
    return SourceDocument(
        source_id=src.source_id,
        native_id=src.native_id,
        uri=src.uri,
        title=src.title,
        mime_type=src.mime_type,
        content=src.content if isinstance(src.content, bytes) else None,
        text=src.text if isinstance(src.text, str) else None,
    )


def _parse_entry(doc: SourceDocument, budgets: InputBudgets) -> _ParseEntry:
    """Parses one document into a cache entry (in a worker process for files)."""
    try:
        return {"sections": section_records(parse_document(doc, budgets=budgets).sections)}
    except ParseError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # a parser bug on one file must not stop the run
        log.exception("parser crashed on %s", doc.uri)
        return {"error": f"{type(exc).__name__}: {exc}"}
