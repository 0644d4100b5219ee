"""Connector sync: every source of a tenant listed into one documents frame, with the change set
against the previous sync.

The tenant's state folder keeps the previous sync's rows (``sources.parquet``, the
:data:`~rag_platform.lib.models.SOURCE_COLUMNS` minus ``change``). They give the change set
(added, changed, deleted, ACL changed) and keep a failing source's documents: when a source
fails as a whole (its folder is gone, its file unreadable), its previous rows go into the frame
unchanged, so the next index version still holds them (DESIGN.md: "an unreachable source keeps
its previous documents").
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, cast

import pandas as pd

from rag_platform.lib.cache import atomic_write
from rag_platform.lib.connectors import build_connector
from rag_platform.lib.connectors.filesystem import FilesystemConnector
from rag_platform.lib.models import SOURCE_COLUMNS, acl_key, make_doc_id
from rag_platform.lib.tenants import DatasetSource, FilesystemSource, TenantConfig

log = logging.getLogger(__name__)

#: File of the tenant's state folder holding the previous sync's rows.
SNAPSHOT_FILE = "sources.parquet"


class SourceProblem(NamedTuple):
    """A source item that was skipped, or a whole source that failed (``item`` = ``"*"``)."""

    source_id: str
    item: str
    reason: str


@dataclass
class SyncResult:
    """One sync of a tenant.

    Attributes:
        frame: the documents (``SOURCE_COLUMNS``), a failed source's previous rows included.
        added, changed, deleted, acl_changed: doc ids of the change set against the previous
            sync (a failed source contributes none).
        problems: skipped items and failed sources.
        suppressed: doc ids the sources still hold but the suppression list left out (erased
            documents, see :mod:`rag_platform.lib.lifecycle.erasure`).
        failed_sources: source id → error of each source that failed as a whole.
        seconds: wall time (seconds).
    """

    frame: pd.DataFrame
    added: list[str]
    changed: list[str]
    deleted: list[str]
    acl_changed: list[str]
    problems: list[SourceProblem]
    failed_sources: dict[str, str]
    seconds: float
    suppressed: list[str]


class SourceSync:
    """Runs every connector of a tenant and diffs the result against the previous sync.

    Args:
        state_dir: the tenant's state folder (``RAG_HOME/cache/<tenant>``); holds
            :data:`SNAPSHOT_FILE`, rewritten by every run.
        suppressed: ids of erased documents (``MetadataStore.suppressed_doc_ids``): left out
            of the frame and the snapshot as if the source did not hold them, until released.
    """

    def __init__(self, state_dir: Path, suppressed: frozenset[str] = frozenset()) -> None:
        self.state_dir = state_dir
        self.snapshot_path = state_dir / SNAPSHOT_FILE
        self.suppressed = suppressed

    def _previous(self) -> pd.DataFrame:
        if self.snapshot_path.exists():
            try:
                return pd.read_parquet(self.snapshot_path)
            except Exception as exc:  # an unreadable snapshot means a first sync, not a failure
                log.warning("discarding unreadable sync snapshot %s: %s", self.snapshot_path, exc)
        return pd.DataFrame(columns=SOURCE_COLUMNS[:-1])

    def run(self, tenant: TenantConfig) -> SyncResult:
        """Lists every source of ``tenant`` and computes the change set.

        A connector error on one item is a problem row; an exception out of a whole source is
        logged, reported in ``failed_sources`` and ``problems`` (item ``"*"``), and that source's
        previous rows are carried into the frame with change ``"unchanged"``: they are neither
        deleted nor re-processed. A document id seen twice is a problem, the second copy dropped.

        Returns:
            The frame and the change set; the snapshot is rewritten with the frame's rows.
        """
        start = time.perf_counter()
        previous = self._previous()
        known = {
            r.doc_id: (r.content_hash, acl_key(r.acl_groups))
            for r in previous.itertuples(index=False)
        }
        rows: list[dict[str, object]] = []
        problems: list[SourceProblem] = []
        failed: dict[str, str] = {}
        seen: set[str] = set()
        suppressed: list[str] = []
        for source in tenant.sources:
            source_rows: list[dict[str, object]] = []
            try:
                connector = build_connector(source, tenant.default_acl_groups, tenant.budgets)
                for doc in connector.list_documents():
                    doc_id = make_doc_id(tenant.id, source.id, doc.native_id)
                    if doc_id in self.suppressed:
                        suppressed.append(doc_id)
                        continue
                    if doc_id in seen:
                        problems.append(
                            SourceProblem(source.id, doc.native_id, "duplicate document id")
                        )
                        continue
                    seen.add(doc_id)
                    source_rows.append(
                        {
                            "doc_id": doc_id,
                            "tenant": tenant.id,
                            "source_id": source.id,
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
                        }
                    )
                problems.extend(SourceProblem(source.id, i, r) for i, r in connector.problems)
            except Exception as exc:  # one broken source never drops the others
                log.exception("source %s of tenant %s failed", source.id, tenant.id)
                error = f"{type(exc).__name__}: {exc}"
                problems.append(SourceProblem(source.id, "*", error))
                failed[source.id] = error
                kept = previous[previous["source_id"] == source.id]
                source_rows = [
                    {**r, "change": "unchanged"}
                    for r in kept.to_dict("records")
                    if r["doc_id"] not in seen and r["doc_id"] not in self.suppressed
                ]
                seen.update(str(r["doc_id"]) for r in source_rows)
            rows.extend(source_rows)

        added, changed, acl_changed = [], [], []
        for row in rows:
            doc_id = str(row["doc_id"])
            if "change" in row:  # carried over from a failed source
                continue
            prev = known.get(doc_id)
            if prev is None:
                row["change"] = "added"
                added.append(doc_id)
            elif prev[0] != row["content_hash"]:
                row["change"] = "changed"
                changed.append(doc_id)
            else:
                row["change"] = "unchanged"
                if prev[1] != acl_key(cast("list[str]", row["acl_groups"])):
                    acl_changed.append(doc_id)
        deleted = [d for d in known if d not in seen and d not in self.suppressed]
        frame = pd.DataFrame(rows, columns=SOURCE_COLUMNS)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        snapshot = frame.drop(columns=["change"])
        atomic_write(self.snapshot_path, lambda p: snapshot.to_parquet(p, index=False))
        return SyncResult(
            frame,
            added,
            changed,
            deleted,
            acl_changed,
            problems,
            failed,
            time.perf_counter() - start,
            suppressed,
        )


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
        else:
            listed = []
        for name, st in listed:
            h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
