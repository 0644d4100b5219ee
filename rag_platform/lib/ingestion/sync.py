"""Connector sync: every source of a tenant synced through its connector's ``changes`` (the
contract of :mod:`rag_platform.lib.connectors.base`) into one documents frame, with the change
set against the previous sync.

State, per source, under the tenant's state folder (``RAG_HOME/cache/<tenant>/sync/<source>/``):

- ``rows.parquet``: the source's rows (:data:`~rag_platform.lib.models.SOURCE_COLUMNS` plus
  ``version``): content, hash, ACL groups and the connector's version token of every document;
- ``state.json``: the connector's cursor, the last sync and last full sync (ISO UTC times) and
  the last sync's counts.

Both are replaced atomically once a source's listing is complete (rows first, then state), so an
interrupted sync leaves every source at its last complete sync and the next run resumes from
there: sources finished before the interruption are not listed again from scratch (their
versions make unchanged items cheap) and the cursor of the interrupted one never advanced.

Streaming: rows are written in batches of :data:`BATCH_ROWS` with a pyarrow ``ParquetWriter``;
only ids, hashes, ACL keys and versions are kept in memory. An :class:`Unchanged` item's row is
copied from the previous ``rows.parquet`` batch by batch, never fetched again. The tenant's
frame (``sources.parquet``) is the concatenation of the sources' rows, also written batch by
batch; :attr:`SyncResult.frame` reads it on first access.

Full and incremental: a source is listed in full (every item visited, so items not yielded are
deleted) on its first sync, when ``full=True`` is asked, when its ``full_sync_every`` (a
``timedelta`` on the source config; absent or zero = always) has passed since its last full
listing, or when the connector reported an item as unchanged that the manifest does not hold;
otherwise incrementally from its cursor (only changes yielded; everything else kept).

A source that fails as a whole (an exception out of ``changes``) keeps its previous rows and
state: they go into the frame with change ``"unchanged"``, so the next index version still holds
them (DESIGN.md: "an unreachable source keeps its previous documents").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rag_platform.lib.cache import atomic_write
from rag_platform.lib.connectors import build_connector
from rag_platform.lib.connectors.base import Deleted, SourceState, Unchanged
from rag_platform.lib.connectors.filesystem import FilesystemConnector
from rag_platform.lib.models import SOURCE_COLUMNS, SourceDocument, acl_key, make_doc_id
from rag_platform.lib.tenants import DatasetSource, FilesystemSource, GitSource, TenantConfig

log = logging.getLogger(__name__)

#: File of the tenant's state folder holding the last sync's frame (all sources).
SNAPSHOT_FILE = "sources.parquet"
#: Folder of the tenant's state folder holding one folder of state per source.
SYNC_DIR = "sync"
#: Rows per Parquet write (and per copied batch).
BATCH_ROWS = 500

#: Arrow schema of a source's ``rows.parquet`` (the frame's columns plus ``version``).
ROW_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("tenant", pa.string()),
        ("source_id", pa.string()),
        ("native_id", pa.string()),
        ("uri", pa.string()),
        ("title", pa.string()),
        ("mime_type", pa.string()),
        ("content", pa.large_binary()),
        ("text", pa.large_string()),
        ("content_hash", pa.string()),
        ("acl_groups", pa.list_(pa.string())),
        ("updated_at", pa.string()),
        ("metadata", pa.string()),
        ("change", pa.string()),
        ("version", pa.string()),
    ]
)
FRAME_SCHEMA = pa.schema([f for f in ROW_SCHEMA if f.name in SOURCE_COLUMNS])


class SourceProblem(NamedTuple):
    """A source item that was skipped, or a whole source that failed (``item`` = ``"*"``)."""

    source_id: str
    item: str
    reason: str


@dataclass
class SourceReport:
    """One source's part of a sync, as the Dagster asset's metadata shows it.

    Attributes:
        last_sync_at: ISO UTC time this source last synced completely (this run, or an earlier
            one when it failed now; "" before any).
        cursor: the connector's cursor after the sync (None when it has none).
        full: whether this run listed the source in full.
        listed: items the connector yielded (documents and unchanged items).
        added, changed, deleted, unchanged, acl_changed, problems: counts of this run.
        seconds: wall time of the source (seconds).
        error: the error of a failed source ("" otherwise).
    """

    last_sync_at: str = ""
    cursor: str | None = None
    full: bool = True
    listed: int = 0
    added: int = 0
    changed: int = 0
    deleted: int = 0
    unchanged: int = 0
    acl_changed: int = 0
    problems: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class SyncResult:
    """One sync of a tenant.

    Attributes:
        path: the frame's Parquet file (``sources.parquet``); :attr:`frame` reads it.
        added, changed, deleted, acl_changed: doc ids of the change set against the previous
            sync (a failed source contributes none).
        problems: skipped items and failed sources.
        failed_sources: source id → error of each source that failed as a whole.
        seconds: wall time (seconds).
        sources: source id → :class:`SourceReport`.
        documents: rows of the frame.
    """

    path: Path
    added: list[str]
    changed: list[str]
    deleted: list[str]
    acl_changed: list[str]
    problems: list[SourceProblem]
    failed_sources: dict[str, str]
    seconds: float
    sources: dict[str, SourceReport] = field(default_factory=dict)
    documents: int = 0

    @cached_property
    def frame(self) -> pd.DataFrame:
        """The documents (``SOURCE_COLUMNS``), a failed source's previous rows included."""
        frame = pq.read_table(self.path).to_pandas(types_mapper=None)
        # Plain Python objects, as connectors yield them: lists of groups, None for no value.
        frame = frame.astype(object)
        frame["acl_groups"] = frame["acl_groups"].map(list)
        for column in ("content", "text"):
            frame[column] = frame[column].map(lambda v: v if isinstance(v, bytes | str) else None)
        return frame[SOURCE_COLUMNS]


@dataclass
class _Known:
    """What the previous sync kept of one document (memory: ids and hashes only)."""

    native_id: str
    content_hash: str
    acl: str
    version: str | None


def _source_key(source_id: str) -> str:
    """A folder name for a source id: its safe characters plus a hash (ids are free text)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", source_id)[:40].strip(".") or "source"
    return f"{slug}-{hashlib.sha256(source_id.encode()).hexdigest()[:12]}"


def _now() -> datetime:
    return datetime.now(UTC)


class _RowWriter:
    """Buffers rows and writes them to a Parquet file in batches of :data:`BATCH_ROWS`."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.schema = schema
        self.writer = pq.ParquetWriter(path, schema)
        self.rows: list[dict[str, Any]] = []
        self.count = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.count += len(self.rows)
            self.rows = []

    def write_batch(self, batch: pa.RecordBatch) -> None:
        self.flush()
        if batch.num_rows:
            self.writer.write_batch(batch)
            self.count += batch.num_rows

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _batches(path: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches of a Parquet file (at most :data:`BATCH_ROWS` rows each)."""
    with pq.ParquetFile(path) as f:
        yield from f.iter_batches(batch_size=BATCH_ROWS, columns=columns)


def _with_change(batch: pa.RecordBatch, change: str) -> pa.RecordBatch:
    index = batch.schema.get_field_index("change")
    values = pa.array([change] * batch.num_rows, pa.string())
    return pa.RecordBatch.from_arrays(
        [values if i == index else c for i, c in enumerate(batch.columns)], schema=batch.schema
    )


class SourceSync:
    """Syncs every connector of a tenant and diffs the result against the previous sync.

    Args:
        state_dir: the tenant's state folder (``RAG_HOME/cache/<tenant>``); holds
            :data:`SNAPSHOT_FILE` and :data:`SYNC_DIR`, rewritten by every run.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.snapshot_path = state_dir / SNAPSHOT_FILE
        self.sync_dir = state_dir / SYNC_DIR

    def source_dir(self, source_id: str) -> Path:
        """The state folder of one source."""
        return self.sync_dir / _source_key(source_id)

    def read_state(self, source_id: str) -> dict[str, Any]:
        """The source's ``state.json`` (``{}`` before its first sync or when unreadable)."""
        path = self.source_dir(source_id) / "state.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("discarding unreadable sync state %s: %s", path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _known(self, source_id: str) -> tuple[dict[str, _Known], Path | None]:
        """The previous rows' ids, hashes, ACLs and versions, and the file to copy rows from.

        Falls back to the rows of a tenant-wide snapshot written before per-source state
        existed (labels and deletions only: nothing is copied from it)."""
        rows = self.source_dir(source_id) / "rows.parquet"
        known: dict[str, _Known] = {}
        try:
            if rows.exists():
                table = pq.read_table(
                    rows, columns=["doc_id", "native_id", "content_hash", "acl_groups", "version"]
                )
                source: Path | None = rows
            elif self.snapshot_path.exists():
                table = pq.read_table(
                    self.snapshot_path,
                    columns=["doc_id", "native_id", "content_hash", "acl_groups"],
                    filters=[("source_id", "==", source_id)],
                )
                source = None
            else:
                return known, None
        except Exception as exc:  # an unreadable manifest means a first sync, not a failure
            log.warning("discarding unreadable sync rows of source %s: %s", source_id, exc)
            return {}, None
        cols = table.to_pydict()
        versions = cols.get("version") or [None] * table.num_rows
        for doc_id, native_id, content_hash, acl, version in zip(
            cols["doc_id"],
            cols["native_id"],
            cols["content_hash"],
            cols["acl_groups"],
            versions,
            strict=True,
        ):
            known[doc_id] = _Known(native_id, content_hash, acl_key(acl or []), version)
        return known, source

    def _full_due(self, source: Any, state: dict[str, Any], now: datetime) -> bool:
        last_full = state.get("last_full_sync_at")
        if not last_full or state.get("needs_full"):
            return True
        every = getattr(source, "full_sync_every", None)
        if not isinstance(every, timedelta) or every <= timedelta(0):
            return True
        try:
            return now - datetime.fromisoformat(last_full) >= every
        except ValueError:
            return True

    def run(self, tenant: TenantConfig, *, full: bool = False) -> SyncResult:
        """Syncs every source of ``tenant`` and computes the change set.

        Args:
            tenant: the tenant's config.
            full: list every source in full, whatever its ``full_sync_every``.

        A connector error on one item is a problem row; an exception out of a whole source is
        logged, reported in ``failed_sources`` and ``problems`` (item ``"*"``), and that source's
        previous rows are carried into the frame with change ``"unchanged"``: they are neither
        deleted nor re-processed. A document id seen twice is a problem, the second copy dropped.
        A source removed from the config has its documents deleted and its state removed.

        Returns:
            The change set and per-source reports; the frame is in :data:`SNAPSHOT_FILE`.
        """
        start = time.perf_counter()
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        added: list[str] = []
        changed: list[str] = []
        deleted: list[str] = []
        acl_changed: list[str] = []
        problems: list[SourceProblem] = []
        failed: dict[str, str] = {}
        reports: dict[str, SourceReport] = {}
        order: list[str] = []
        for source in tenant.sources:
            if source.id in reports:
                problems.append(SourceProblem(source.id, "*", "duplicate source id"))
                continue
            order.append(source.id)
            report = self._sync_source(
                tenant, source, full, added, changed, deleted, acl_changed, problems
            )
            reports[source.id] = report
            if report.error:
                failed[source.id] = report.error
        wanted = {_source_key(sid) for sid in order}
        for folder in sorted(self.sync_dir.iterdir()):
            if folder.is_dir() and folder.name not in wanted:
                rows = folder / "rows.parquet"
                if rows.exists():
                    with contextlib.suppress(Exception):
                        deleted.extend(
                            pq.read_table(rows, columns=["doc_id"])["doc_id"].to_pylist()
                        )
                shutil.rmtree(folder, ignore_errors=True)
        documents = self._write_frame(order, set(failed))
        return SyncResult(
            self.snapshot_path,
            added,
            changed,
            deleted,
            acl_changed,
            problems,
            failed,
            time.perf_counter() - start,
            reports,
            documents,
        )

    def _write_frame(self, order: list[str], failed: set[str]) -> int:
        """Concatenates the sources' rows into :data:`SNAPSHOT_FILE`, batch by batch."""
        columns = [f.name for f in FRAME_SCHEMA]
        count = 0

        def write(path: Path) -> None:
            nonlocal count
            writer = _RowWriter(path, FRAME_SCHEMA)
            try:
                for source_id in order:
                    rows = self.source_dir(source_id) / "rows.parquet"
                    if not rows.exists():
                        continue
                    for batch in _batches(rows, columns):
                        writer.write_batch(
                            _with_change(batch, "unchanged") if source_id in failed else batch
                        )
            finally:
                writer.close()
            count = writer.count

        atomic_write(self.snapshot_path, write)
        return count

    def _sync_source(
        self,
        tenant: TenantConfig,
        source: Any,
        force_full: bool,
        added: list[str],
        changed: list[str],
        deleted: list[str],
        acl_changed: list[str],
        problems: list[SourceProblem],
    ) -> SourceReport:
        """Syncs one source and commits its rows and state; on failure leaves both untouched."""
        start = time.perf_counter()
        now = _now()
        folder = self.source_dir(source.id)
        folder.mkdir(parents=True, exist_ok=True)
        state = self.read_state(source.id)
        known, copy_from = self._known(source.id)
        full = force_full or self._full_due(source, state, now) or copy_from is None
        report = SourceReport(
            last_sync_at=str(state.get("last_sync_at", "")), cursor=state.get("cursor"), full=full
        )
        prior = SourceState(
            cursor=state.get("cursor") if isinstance(state.get("cursor"), str) else None,
            versions={k.native_id: k.version for k in known.values() if k.version is not None},
        )
        run_added: list[str] = []
        run_changed: list[str] = []
        run_acl: list[str] = []
        run_problems: list[SourceProblem] = []
        seen: set[str] = set()
        keep: set[str] = set()
        gone: set[str] = set()
        needs_full = False
        run_unchanged = 0
        rows_path = folder / "rows.parquet"
        fd_tmp = folder / f".rows.{os.getpid()}.tmp"
        try:
            connector = build_connector(
                source, tenant.default_acl_groups, tenant.budgets, state_dir=self.state_dir
            )
            writer = _RowWriter(fd_tmp, ROW_SCHEMA)
            try:
                for item in connector.changes(prior, full=full):
                    if isinstance(item, Deleted):
                        doc_id = make_doc_id(tenant.id, source.id, item.native_id)
                        if doc_id in known and doc_id not in seen:
                            gone.add(doc_id)
                        continue
                    report.listed += 1
                    doc_id = make_doc_id(tenant.id, source.id, item.native_id)
                    if doc_id in seen or doc_id in keep:
                        run_problems.append(
                            SourceProblem(source.id, item.native_id, "duplicate document id")
                        )
                        continue
                    if isinstance(item, Unchanged):
                        if copy_from is not None and doc_id in known:
                            keep.add(doc_id)
                        else:
                            needs_full = True
                            run_problems.append(
                                SourceProblem(
                                    source.id,
                                    item.native_id,
                                    "reported unchanged but not in the manifest "
                                    "(the next sync lists the source in full)",
                                )
                            )
                        continue
                    if not isinstance(item, SourceDocument):
                        raise TypeError(f"connector yielded {type(item).__name__}")
                    seen.add(doc_id)
                    gone.discard(doc_id)
                    row = _row(tenant.id, source.id, doc_id, item)
                    prev = known.get(doc_id)
                    if prev is None:
                        row["change"] = "added"
                        run_added.append(doc_id)
                    elif prev.content_hash != row["content_hash"]:
                        row["change"] = "changed"
                        run_changed.append(doc_id)
                    else:
                        row["change"] = "unchanged"
                        run_unchanged += 1
                        if prev.acl != acl_key(row["acl_groups"]):
                            run_acl.append(doc_id)
                    writer.add(row)
                run_problems.extend(SourceProblem(source.id, i, r) for i, r in connector.problems)
                cursor = connector.next_cursor
                copied: set[str] = set()
                if copy_from is not None:
                    for batch in _batches(copy_from):
                        ids = batch.column("doc_id").to_pylist()
                        mask = [
                            d in keep or (not full and d not in seen and d not in gone) for d in ids
                        ]
                        if any(mask):
                            picked = batch.filter(pa.array(mask))
                            copied.update(picked.column("doc_id").to_pylist())
                            writer.write_batch(_with_change(picked, "unchanged"))
            finally:
                writer.close()
            os.replace(fd_tmp, rows_path)
        except Exception as exc:  # one broken source never drops the others
            with contextlib.suppress(FileNotFoundError):
                fd_tmp.unlink()
            log.exception("source %s of tenant %s failed", source.id, tenant.id)
            error = f"{type(exc).__name__}: {exc}"
            problems.append(SourceProblem(source.id, "*", error))
            report.error = error
            report.full = full
            report.unchanged = len(known)
            report.seconds = round(time.perf_counter() - start, 3)
            return report
        run_deleted = [d for d in known if d not in seen and d not in copied]
        report.cursor = cursor
        report.last_sync_at = now.isoformat()
        report.added, report.changed = len(run_added), len(run_changed)
        report.deleted, report.acl_changed = len(run_deleted), len(run_acl)
        report.unchanged = len(copied) + run_unchanged
        report.problems = len(run_problems)
        report.seconds = round(time.perf_counter() - start, 3)
        new_state = {
            "source_id": source.id,
            "type": source.type,
            "cursor": cursor,
            "last_sync_at": report.last_sync_at,
            "last_full_sync_at": now.isoformat() if full else state.get("last_full_sync_at"),
            "needs_full": needs_full,
            "counts": {
                k: getattr(report, k)
                for k in ("listed", "added", "changed", "deleted", "unchanged", "problems")
            },
        }
        atomic_write(folder / "state.json", lambda p: p.write_text(json.dumps(new_state)))
        added.extend(run_added)
        changed.extend(run_changed)
        deleted.extend(run_deleted)
        acl_changed.extend(run_acl)
        problems.extend(run_problems)
        return report


def _row(tenant: str, source_id: str, doc_id: str, doc: SourceDocument) -> dict[str, Any]:
    """The ``rows.parquet`` row of one document (change set by the caller)."""
    return {
        "doc_id": doc_id,
        "tenant": tenant,
        "source_id": source_id,
        "native_id": doc.native_id,
        "uri": doc.uri,
        "title": doc.title,
        "mime_type": doc.mime_type,
        "content": doc.content,
        "text": doc.text,
        "content_hash": doc.content_hash,
        "acl_groups": sorted(set(doc.acl_groups)),
        # No date at the source stays empty: a sync time would change every run.
        "updated_at": doc.updated_at.isoformat() if doc.updated_at else "",
        "metadata": json.dumps(doc.metadata, default=str),
        "change": "",
        "version": doc.version,
    }


def source_fingerprint(tenant: TenantConfig) -> str:
    """Cheap fingerprint of a tenant's sources: file paths, sizes and mtimes (no content read).

    A change here triggers a sync (``source_change_sensor``); the sync itself decides by content
    hash what really changed.

    Returns:
        A SHA-256 hex digest.
    """
    h = hashlib.sha256()
    for source in tenant.sources:
        h.update(f"{source.id}|{source.type}\n".encode())
        if isinstance(source, DatasetSource):
            root = Path(source.path)
            listed = [(str(root), root.stat())] if root.is_file() else []
        elif isinstance(source, FilesystemSource):
            # The connector's own walk: links out of the root, FIFOs and devices are never
            # stat'ed through, so the sensor sees exactly what a sync would read.
            connector = FilesystemConnector(source, tenant.default_acl_groups, tenant.budgets)
            try:
                listed = [(f.rel, f.stat) for f in connector.iter_paths()]
            except ValueError:  # the folder is gone: that is a change too
                listed = []
        elif isinstance(source, GitSource) and not source.is_remote:
            # The branch head of a local repository (a remote one is fetched by the sync only).
            h.update(_git_head(source).encode())
            listed = []
        else:
            listed = []
        for name, st in listed:
            h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _git_head(source: GitSource) -> str:
    """The commit id at the head of a local repository's branch ("" when it cannot be read)."""
    from rag_platform.lib.connectors.git import GitConnector, GitError

    try:
        return GitConnector(source, []).head()
    except GitError:
        return ""
