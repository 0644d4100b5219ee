"""Connector sync: every source of a tenant synced through its connector's ``changes`` (the
contract of :mod:`rag_platform.lib.connectors.base`) into one documents frame, with the change
set against the previous sync.

State, per source, under the tenant's state folder (``RAG_HOME/cache/<tenant>/sync/<source>/``):

- ``seg-<id>.parquet`` segments: the rows (:data:`~rag_platform.lib.models.SOURCE_COLUMNS` plus
  ``version``) of the documents a sync fetched (new, changed or re-listed); each sync writes
  at most one, streamed in batches of :data:`BATCH_ROWS` with a pyarrow ``ParquetWriter``;
- ``manifest.arrow``: one row per live document: ``doc_id``, ``native_id``,
  ``content_hash``, ``acl`` (:func:`~rag_platform.lib.models.acl_key`), ``version`` and the
  ``segment`` holding its row;
- ``state.json``: the connector's cursor, the last sync and last full sync (ISO UTC times) and
  the last sync's counts.

At rest (with a cipher, :mod:`rag_platform.lib.crypto`): each segment row's ``content`` and
``text`` are sealed one by one (purpose ``sync``), so the ``doc_id`` filters and the streamed
writes keep working; ``state.json`` is sealed whole (``sync-state``). The manifest holds ids,
hashes, ACL keys and versions only, and stays plain. Rows written before encryption are read as
they are and sealed when a compaction rewrites them.

A sync commits a source atomically once its listing is complete: the new segment first, then the
manifest (rename), then the state; segments no longer referenced are deleted afterwards and the
segments are compacted into one when they hold more than twice the live rows. An interrupted
sync leaves every source at its last complete sync, and the next run resumes from there: sources
finished before the interruption keep their new cursors, the interrupted one never advanced.
Only ids, hashes, ACLs and versions are held in memory (the manifest); an
:class:`~rag_platform.lib.connectors.base.Unchanged` item costs no fetch and no copy, so a
re-sync of a large source costs the changed items plus one manifest rewrite.

Full and incremental: a source is listed in full (every item visited, so items not yielded are
deleted) on its first sync, when ``full=True`` is asked, when its ``full_sync_every`` (a
``timedelta`` on the source config; absent or zero = always) has passed since its last full
listing, or when the connector reported an item as unchanged that the manifest does not hold;
otherwise incrementally from its cursor (only changes yielded; everything else kept).

A source that fails as a whole (an exception out of ``changes``) keeps its previous manifest and
state: its rows go into the frame with change ``"unchanged"``, so the next index version still
holds them (DESIGN.md: "an unreachable source keeps its previous documents").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pyarrow.parquet as pq

from rag_platform.lib.cache import atomic_write
from rag_platform.lib.connectors import build_connector
from rag_platform.lib.connectors.base import Deleted, SourceState, Unchanged
from rag_platform.lib.connectors.filesystem import FilesystemConnector
from rag_platform.lib.crypto import (
    NO_CIPHER,
    PURPOSE_SYNC,
    PURPOSE_SYNC_STATE,
    TenantCipher,
    is_sealed,
    is_sealed_text,
)
from rag_platform.lib.models import SOURCE_COLUMNS, SourceDocument, acl_key, make_doc_id
from rag_platform.lib.tenants import DatasetSource, FilesystemSource, GitSource, TenantConfig

log = logging.getLogger(__name__)

#: File of the tenant's state folder that held the frame before per-source state (read once
#: for the change labels of the first sync after an upgrade, then removed).
SNAPSHOT_FILE = "sources.parquet"
#: Folder of the tenant's state folder holding one folder of state per source.
SYNC_DIR = "sync"
#: Rows per Parquet write.
BATCH_ROWS = 500
_COMPRESSION = "lz4"
#: Dead rows tolerated beyond the live rows before segments are compacted (small sources
#: never compact: their dead rows stay under this).
COMPACT_SLACK_ROWS = 500

#: Arrow schema of a segment (the frame's columns plus ``version``).
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
#: Arrow schema of a source's manifest.
MANIFEST_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("native_id", pa.string()),
        ("content_hash", pa.string()),
        ("acl", pa.string()),
        ("version", pa.string()),
        ("segment", pa.string()),
    ]
)


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
        documents: live documents of the source after the sync.
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
    documents: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class _Part:
    """Where one source's rows of the frame live."""

    folder: Path
    segment: str | None  # this run's segment: its rows keep their change labels
    failed: bool


@dataclass
class SyncResult:
    """One sync of a tenant.

    Attributes:
        added, changed, deleted, acl_changed: doc ids of the change set against the previous
            sync (a failed source contributes none).
        problems: skipped items and failed sources.
        failed_sources: source id → error of each source that failed as a whole.
        seconds: wall time (seconds).
        sources: source id → :class:`SourceReport`.
        documents: rows of the frame.
        suppressed: doc ids the sources still hold but the suppression list left out (erased
            documents, see :mod:`rag_platform.lib.lifecycle.erasure`).
    """

    added: list[str]
    changed: list[str]
    deleted: list[str]
    acl_changed: list[str]
    problems: list[SourceProblem]
    failed_sources: dict[str, str]
    seconds: float
    sources: dict[str, SourceReport] = field(default_factory=dict)
    documents: int = 0
    parts: list[_Part] = field(default_factory=list, repr=False)
    suppressed: list[str] = field(default_factory=list)
    cipher: TenantCipher = field(default=NO_CIPHER, repr=False)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """The documents (``SOURCE_COLUMNS``), a failed source's previous rows included, read
        from the sources' segments (the live rows the manifests name)."""
        tables = [t for part in self.parts for t in _part_tables(part)]
        if not tables:
            return pd.DataFrame(columns=SOURCE_COLUMNS)
        frame = pa.concat_tables(tables).to_pandas()
        # Plain Python objects, as connectors yield them: lists of groups, None for no value.
        frame = frame.astype(object)
        frame["acl_groups"] = frame["acl_groups"].map(list)
        cipher = self.cipher
        frame["content"] = frame["content"].map(
            lambda v: cipher.open(v, PURPOSE_SYNC) if isinstance(v, bytes) else None
        )
        frame["text"] = frame["text"].map(
            lambda v: cipher.open_text(v, PURPOSE_SYNC) if isinstance(v, str) else None
        )
        return frame[SOURCE_COLUMNS].reset_index(drop=True)


def _part_tables(part: _Part) -> Iterator[pa.Table]:
    manifest = _read_manifest(part.folder)
    if manifest is None or manifest.num_rows == 0:
        return
    segments = manifest.column("segment")
    columns = [c for c in SOURCE_COLUMNS]
    for segment in sorted(set(segments.to_pylist())):
        live = pc.filter(manifest.column("doc_id"), pc.equal(segments, segment))
        table = pq.read_table(part.folder / segment, columns=columns)
        table = table.filter(pc.is_in(table.column("doc_id"), value_set=live))
        if part.failed or segment != part.segment:
            index = table.schema.get_field_index("change")
            table = table.set_column(
                index, "change", pa.array(["unchanged"] * table.num_rows, pa.string())
            )
        yield table


def _read_manifest(folder: Path) -> pa.Table | None:
    path = folder / "manifest.arrow"
    if not path.exists():
        return None
    return feather.read_table(path, memory_map=True)


def _write_manifest(folder: Path, manifest: pa.Table) -> None:
    def write(path: Path) -> None:
        feather.write_feather(manifest, path, compression="uncompressed")

    atomic_write(folder / "manifest.arrow", write)


def _write_segment(path: Path, table: pa.Table) -> None:
    def write(tmp: Path) -> None:
        pq.write_table(table, tmp, compression=_COMPRESSION)

    atomic_write(path, write)


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
        self.writer = pq.ParquetWriter(path, schema, compression=_COMPRESSION)
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

    def write_table(self, table: pa.Table) -> None:
        self.flush()
        if table.num_rows:
            self.writer.write_table(table)
            self.count += table.num_rows

    def close(self) -> None:
        self.flush()
        self.writer.close()


class _Versions(Mapping[str, str]):
    """``native_id`` → version of the previous manifest, as a view (no per-item dict)."""

    def __init__(self, index: dict[str, int], versions: pa.ChunkedArray | pa.Array) -> None:
        self._index = index
        self._versions = versions

    def __getitem__(self, native_id: str) -> str:
        version = self._versions[self._index[native_id]].as_py()
        if version is None:
            raise KeyError(native_id)
        return str(version)

    def __iter__(self) -> Iterator[str]:
        valid = self._versions.is_valid().to_pylist()
        return (n for n, i in self._index.items() if valid[i])

    def __len__(self) -> int:
        return len(self._versions) - self._versions.null_count


class _Known:
    """The previous manifest of one source: ids, hashes, ACLs and versions (no content),
    indexed by ``native_id``."""

    def __init__(self, table: pa.Table | None) -> None:
        self.table = table
        if table is None:
            self.index: dict[str, int] = {}
            self.versions: Mapping[str, str] = {}
            return
        natives = table.column("native_id").to_pylist()
        self.index = dict(zip(natives, range(len(natives)), strict=True))
        self._hashes = table.column("content_hash")
        version = (
            table.column("version")
            if "version" in table.column_names
            else pa.nulls(len(natives), pa.string())
        )
        self.versions = _Versions(self.index, version)
        self._acl = table.column("acl")

    def content_hash(self, i: int) -> str:
        return str(self._hashes[i].as_py())

    def acl(self, i: int) -> str:
        return str(self._acl[i].as_py() or "")


class SourceSync:
    """Syncs every connector of a tenant and diffs the result against the previous sync.

    Args:
        state_dir: the tenant's state folder (``RAG_HOME/cache/<tenant>``); holds
            :data:`SYNC_DIR`, updated by every run.
        suppressed: ids of erased documents (``MetadataStore.suppressed_doc_ids``): left out
            of the frame and the manifests as if the sources did not hold them, until released.
        cipher: the tenant's cipher: seals the rows' content and text and the state files;
            default none (plain).
    """

    def __init__(
        self,
        state_dir: Path,
        suppressed: frozenset[str] = frozenset(),
        cipher: TenantCipher = NO_CIPHER,
    ) -> None:
        self.state_dir = state_dir
        self.cipher = cipher
        self.snapshot_path = state_dir / SNAPSHOT_FILE
        self.sync_dir = state_dir / SYNC_DIR
        self.suppressed = suppressed

    def _folders(self) -> list[Path]:
        if not self.sync_dir.is_dir():
            return []
        return [f for f in sorted(self.sync_dir.iterdir()) if f.is_dir()]

    def forget(self, doc_ids: set[str]) -> int:
        """Removes documents from every source's manifest and segment files (erasure): their
        text is gone from the tenant's sync state, each file rewritten atomically.

        Args:
            doc_ids: platform doc ids.

        Returns:
            Segment rows removed (a document may have rows in several segments).
        """
        if not doc_ids:
            return 0
        ids = pa.array(sorted(doc_ids), pa.string())
        removed = 0
        for folder in self._folders():
            manifest = _read_manifest(folder)
            if manifest is not None:
                drop = pc.is_in(manifest.column("doc_id"), value_set=ids)
                if pc.any(drop).as_py():
                    _write_manifest(folder, manifest.filter(pc.invert(drop)))
            for segment in sorted(folder.glob("*.parquet")):
                table = pq.read_table(segment)
                drop = pc.is_in(table.column("doc_id"), value_set=ids)
                count = int(pc.sum(drop).as_py() or 0)
                if count:
                    _write_segment(segment, table.filter(pc.invert(drop)))
                    removed += count
        return removed

    def known_doc_ids(self) -> set[str] | None:
        """Doc ids the last sync of every source holds (their manifests), or None before a
        first sync. Reads only; the cost preview (``lib/plan.py``) uses it."""
        folders = [f for f in self._folders() if (f / "manifest.arrow").exists()]
        if not folders:
            return None
        ids: set[str] = set()
        for folder in folders:
            manifest = _read_manifest(folder)
            if manifest is not None:
                ids.update(str(d) for d in manifest.column("doc_id").to_pylist())
        return ids

    def rows_of(self, doc_id: str) -> pd.DataFrame:
        """The segment rows of ``doc_id`` (``SOURCE_COLUMNS`` as stored, ``content`` and
        ``text`` sealed; empty after :meth:`forget`), whichever segment or source holds them."""
        frames = []
        for folder in self._folders():
            for segment in sorted(folder.glob("*.parquet")):
                table = pq.read_table(segment, filters=[("doc_id", "==", doc_id)])
                if table.num_rows:
                    frames.append(table.to_pandas())
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def holds(self, doc_id: str) -> int:
        """Rows of ``doc_id`` in the sync state's manifests and segments (0 after
        :meth:`forget`)."""
        found = len(self.rows_of(doc_id))
        for folder in self._folders():
            manifest = _read_manifest(folder)
            if manifest is not None:
                found += int(pc.sum(pc.equal(manifest.column("doc_id"), doc_id)).as_py() or 0)
        return found

    def source_dir(self, source_id: str) -> Path:
        """The state folder of one source."""
        return self.sync_dir / _source_key(source_id)

    def read_state(self, source_id: str) -> dict[str, Any]:
        """The source's ``state.json`` (``{}`` before its first sync or when unreadable).

        Raises:
            rag_platform.lib.crypto.SealedDataError: the sealed state does not open (another
                tenant's, tampered, or the data key destroyed): never read as a first sync.
        """
        path = self.source_dir(source_id) / "state.json"
        try:
            data = json.loads(self.cipher.read_file(path, PURPOSE_SYNC_STATE))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("discarding unreadable sync state %s: %s", path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _known(self, source_id: str) -> tuple[_Known, bool]:
        """The previous manifest, and whether it can be trusted for copying rows.

        Falls back to the rows of a tenant-wide snapshot written before per-source state
        existed (labels and deletions only: no row is kept from it)."""
        folder = self.source_dir(source_id)
        try:
            manifest = _read_manifest(folder)
            if manifest is not None:
                return _Known(manifest), True
            if self.snapshot_path.exists():
                legacy = pq.read_table(
                    self.snapshot_path,
                    columns=["doc_id", "native_id", "content_hash", "acl_groups"],
                    filters=[("source_id", "==", source_id)],
                )
                acls = [acl_key(g or []) for g in legacy.column("acl_groups").to_pylist()]
                legacy = legacy.append_column("acl", pa.array(acls, pa.string()))
                return _Known(legacy), False
        except Exception as exc:  # an unreadable manifest means a first sync, not a failure
            log.warning("discarding unreadable sync manifest of source %s: %s", source_id, exc)
        return _Known(None), False

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
            The change set and per-source reports; :attr:`SyncResult.frame` reads the rows.
        """
        start = time.perf_counter()
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        result = SyncResult([], [], [], [], [], {}, 0.0, cipher=self.cipher)
        order: list[str] = []
        for source in tenant.sources:
            if source.id in result.sources:
                result.problems.append(SourceProblem(source.id, "*", "duplicate source id"))
                continue
            order.append(source.id)
            report, segment = self._sync_source(tenant, source, full, result)
            result.sources[source.id] = report
            if report.error:
                result.failed_sources[source.id] = report.error
            result.parts.append(_Part(self.source_dir(source.id), segment, bool(report.error)))
            result.documents += report.documents
        wanted = {_source_key(sid) for sid in order}
        for folder in sorted(self.sync_dir.iterdir()):
            if folder.is_dir() and folder.name not in wanted:
                with contextlib.suppress(Exception):
                    manifest = _read_manifest(folder)
                    if manifest is not None:
                        result.deleted.extend(manifest.column("doc_id").to_pylist())
                shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.snapshot_path.unlink()  # the pre-manifest snapshot, read once
        result.seconds = time.perf_counter() - start
        return result

    def _sync_source(
        self, tenant: TenantConfig, source: Any, force_full: bool, out: SyncResult
    ) -> tuple[SourceReport, str | None]:
        """Syncs one source and commits its segment, manifest and state; on failure leaves all
        three untouched. Returns the report and this run's segment (None when none)."""
        start = time.perf_counter()
        now = _now()
        folder = self.source_dir(source.id)
        folder.mkdir(parents=True, exist_ok=True)
        state = self.read_state(source.id)
        known, trusted = self._known(source.id)
        full = force_full or not trusted or self._full_due(source, state, now)
        report = SourceReport(
            last_sync_at=str(state.get("last_sync_at", "")), cursor=state.get("cursor"), full=full
        )
        prior = SourceState(
            cursor=state.get("cursor") if isinstance(state.get("cursor"), str) else None,
            versions=known.versions if trusted else {},
        )
        added: list[str] = []
        changed: list[str] = []
        acl_changed: list[str] = []
        problems: list[SourceProblem] = []
        fresh: dict[str, list[Any]] = {c: [] for c in MANIFEST_SCHEMA.names}
        seen: set[str] = set()
        keep: set[str] = set()
        gone: set[str] = set()
        needs_full = False
        unchanged = 0
        segment = f"seg-{uuid.uuid4().hex[:16]}.parquet"
        segment_path = folder / segment
        try:
            connector = build_connector(
                source, tenant.default_acl_groups, tenant.budgets, state_dir=self.state_dir
            )
            writer = _RowWriter(segment_path, ROW_SCHEMA)
            try:
                for item in connector.changes(prior, full=full):
                    doc_id = make_doc_id(tenant.id, source.id, item.native_id)
                    if doc_id in self.suppressed and not isinstance(item, Deleted):
                        out.suppressed.append(doc_id)
                        continue
                    if isinstance(item, Deleted):
                        if item.native_id in known.index and doc_id not in seen:
                            gone.add(doc_id)
                        continue
                    report.listed += 1
                    if doc_id in seen or doc_id in keep:
                        problems.append(
                            SourceProblem(source.id, item.native_id, "duplicate document id")
                        )
                        continue
                    if isinstance(item, Unchanged):
                        if trusted and item.native_id in known.index:
                            keep.add(doc_id)
                        else:
                            needs_full = True
                            problems.append(
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
                    self._seal_row(row)
                    i = known.index.get(item.native_id)
                    if i is None:
                        row["change"] = "added"
                        added.append(doc_id)
                    elif known.content_hash(i) != row["content_hash"]:
                        row["change"] = "changed"
                        changed.append(doc_id)
                    else:
                        row["change"] = "unchanged"
                        unchanged += 1
                        if known.acl(i) != acl_key(row["acl_groups"]):
                            acl_changed.append(doc_id)
                    writer.add(row)
                    for c in ("doc_id", "native_id", "content_hash", "version"):
                        fresh[c].append(row[c])
                    fresh["acl"].append(acl_key(row["acl_groups"]))
                    fresh["segment"].append(segment)
                problems.extend(SourceProblem(source.id, i, r) for i, r in connector.problems)
                cursor = connector.next_cursor
            finally:
                writer.close()
            manifest = pa.Table.from_pydict(fresh, schema=MANIFEST_SCHEMA)
            deleted: list[str] = []
            old = known.table
            if old is not None and old.num_rows:
                ids = old.column("doc_id")
                if not trusted:
                    mask = pa.array([False] * old.num_rows)
                elif full:
                    mask = pc.is_in(ids, value_set=pa.array(list(keep), pa.string()))
                else:
                    dropped = pa.array(list(seen | gone), pa.string())
                    mask = pc.invert(pc.is_in(ids, value_set=dropped))
                if self.suppressed:  # an erased document leaves the manifest in every mode
                    suppressed = pa.array(sorted(self.suppressed), pa.string())
                    mask = pc.and_(mask, pc.invert(pc.is_in(ids, value_set=suppressed)))
                # not kept and not listed again: deleted (an erased one is not reported again)
                deleted = [
                    d
                    for d in pc.filter(ids, pc.invert(mask)).to_pylist()
                    if d not in seen and d not in self.suppressed
                ]
                if trusted:
                    kept = old.filter(mask).select(MANIFEST_SCHEMA.names)
                    manifest = pa.concat_tables([kept, manifest])
            atomic_write(
                folder / "manifest.arrow",
                lambda p: feather.write_feather(manifest, p, compression="uncompressed"),
            )
        except Exception as exc:  # one broken source never drops the others
            with contextlib.suppress(FileNotFoundError):
                segment_path.unlink()
            log.exception("source %s of tenant %s failed", source.id, tenant.id)
            error = f"{type(exc).__name__}: {exc}"
            out.problems.append(SourceProblem(source.id, "*", error))
            report.error = error
            report.documents = len(known.index) if trusted else 0
            report.unchanged = report.documents
            report.seconds = round(time.perf_counter() - start, 3)
            return report, None
        report.cursor = cursor
        report.last_sync_at = now.isoformat()
        report.added, report.changed = len(added), len(changed)
        report.deleted, report.acl_changed = len(deleted), len(acl_changed)
        report.unchanged = manifest.num_rows - len(added) - len(changed)
        report.problems = len(problems)
        report.documents = manifest.num_rows
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
        self.cipher.write_file(
            folder / "state.json", json.dumps(new_state).encode(), PURPOSE_SYNC_STATE
        )
        try:
            segment_used = self._tidy(folder, manifest, segment)
        except Exception as exc:  # tidying is housekeeping: the sync itself is committed
            log.warning("could not tidy the segments of source %s: %s", source.id, exc)
            segment_used = segment
        report.seconds = round(time.perf_counter() - start, 3)
        out.added.extend(added)
        out.changed.extend(changed)
        out.deleted.extend(deleted)
        out.acl_changed.extend(acl_changed)
        out.problems.extend(problems)
        return report, segment_used

    def _seal_row(self, row: dict[str, Any]) -> None:
        """Seals a segment row's ``content`` and ``text`` in place (no-op without a cipher)."""
        if not self.cipher.enabled:
            return
        if isinstance(row["content"], bytes):
            row["content"] = self.cipher.seal(row["content"], PURPOSE_SYNC)
        if isinstance(row["text"], str):
            row["text"] = self.cipher.seal_text(row["text"], PURPOSE_SYNC)

    def _seal_table(self, table: pa.Table) -> pa.Table:
        """``table`` with any plaintext ``content``/``text`` cell (written before encryption)
        sealed; sealed cells are kept as they are."""
        if not self.cipher.enabled or not table.num_rows:
            return table
        cipher = self.cipher
        content = [
            cipher.seal(v, PURPOSE_SYNC) if isinstance(v, bytes) and not is_sealed(v) else v
            for v in table.column("content").to_pylist()
        ]
        text = [
            cipher.seal_text(v, PURPOSE_SYNC) if isinstance(v, str) and not is_sealed_text(v) else v
            for v in table.column("text").to_pylist()
        ]
        table = table.set_column(
            table.schema.get_field_index("content"), "content", pa.array(content, pa.large_binary())
        )
        return table.set_column(
            table.schema.get_field_index("text"), "text", pa.array(text, pa.large_string())
        )

    def _tidy(self, folder: Path, manifest: pa.Table, segment: str) -> str | None:
        """Deletes unreferenced segments; compacts the segments into one when they hold more
        than twice the live rows. Returns the name of this run's segment if it is still in use
        (compaction keeps labels: it runs before the frame is read only for unchanged rows)."""
        referenced = set(pc.unique(manifest.column("segment")).to_pylist())
        total = 0
        for path in folder.glob("seg-*.parquet"):
            if path.name not in referenced:
                path.unlink(missing_ok=True)
            else:
                total += pq.ParquetFile(path).metadata.num_rows
        older = sorted(referenced - {segment})
        if total <= 2 * manifest.num_rows + COMPACT_SLACK_ROWS or not older:
            return segment if segment in referenced else None
        # Compaction: older segments' live rows into one new segment (this run's stays).
        merged = f"seg-{uuid.uuid4().hex[:16]}.parquet"
        writer = _RowWriter(folder / merged, ROW_SCHEMA)
        try:
            segments = manifest.column("segment")
            for name in older:
                live = pc.filter(manifest.column("doc_id"), pc.equal(segments, name))
                with pq.ParquetFile(folder / name) as f:
                    for batch in f.iter_batches(batch_size=10_000):
                        table = pa.Table.from_batches([batch])
                        table = table.filter(pc.is_in(table.column("doc_id"), value_set=live))
                        writer.write_table(self._seal_table(table))
        finally:
            writer.close()
        in_older = pc.is_in(manifest.column("segment"), value_set=pa.array(older, pa.string()))
        index = manifest.schema.get_field_index("segment")
        relabeled = manifest.set_column(
            index, "segment", pc.if_else(in_older, pa.scalar(merged), manifest.column("segment"))
        )
        atomic_write(
            folder / "manifest.arrow",
            lambda p: feather.write_feather(relabeled, p, compression="uncompressed"),
        )
        for name in older:
            (folder / name).unlink(missing_ok=True)
        return segment if segment in referenced else None


def _row(tenant: str, source_id: str, doc_id: str, doc: SourceDocument) -> dict[str, Any]:
    """The segment row of one document (change set by the caller)."""
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
