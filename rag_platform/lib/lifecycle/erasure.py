"""Right to erasure: one document, or one principal's queries and feedback, removed everywhere
the platform keeps them, with a receipt in the audit log and a verification that nothing is left.

A document (:class:`DocumentEraser`) is

1. put on the tenant's suppression list (``document_suppressions`` in the metadata store): every
   later sync leaves it out, so a re-sync of its source does not bring it back and the next index
   version does not hold it, until ``erase release``; the API excludes it inside every index query
   of the published version at once (within its one-second memo);
2. removed from the content caches under ``RAG_HOME/cache/<tenant>``: the sync state (the
   per-source manifests and segments under ``sync/``), the parse and mask caches (keyed by its
   content hash), the chunk cache (keyed by its doc id), the embedding caches (its chunks'
   content hashes) and the quarantine records;
3. removed from the golden-set candidates (their retrieved chunks and relevance), and from
   the intermediate assets the Dagster IO manager wrote under
   ``RAG_HOME/storage/<asset>/<tenant>``: its rows of every Parquet frame, its chunks' vectors of
   the embedding set, and its relevance judgements in the stored golden set (the golden
   candidates the evaluation would look for).

A principal (:class:`PrincipalEraser`, the API key id) loses its query-log rows (with all feedback
on them), the feedback it gave, its conversations (with their messages), the golden-set
candidates made from its queries, and its records in the query-log spool file.

A tenant (:class:`TenantEraser`) is crypto-shredded: its data keys are destroyed, so everything
sealed under them (:mod:`rag_platform.lib.crypto`) is unreadable wherever a copy lies; then its
caches, stored assets, uploads, index versions, rows and registry entry are removed.

Each erasure ends with a verification (:func:`verify_document_erasure`,
:func:`verify_principal_erasure`) whose result is part of the receipt written to the audit log
(action ``erasure.document`` / ``erasure.principal``).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from sqlalchemy import func, select

from rag_platform.lib.backup import tenant_tables
from rag_platform.lib.cache import atomic_write
from rag_platform.lib.crypto import (
    NO_CIPHER,
    PURPOSE_ASSET,
    PURPOSE_CACHE,
    SealedDataError,
    TenantCipher,
)
from rag_platform.lib.embedding.stage import EmbeddingSet
from rag_platform.lib.index.backend import IndexBackend
from rag_platform.lib.ingestion.sync import SYNC_DIR, SourceSync
from rag_platform.lib.models import SearchFilters
from rag_platform.lib.store import MetadataStore
from rag_platform.lib.store.tenants import check_tenant
from rag_platform.lib.tenants import RetrievalSettings
from rag_platform.settings import Settings

log = logging.getLogger(__name__)

#: Content caches of a tenant's state folder and what their keys start with.
_KEYED_BY_CONTENT_HASH = ("parsed.parquet", "masked.parquet")
_KEYED_BY_DOC_ID = ("chunks.parquet",)
#: Index versions that may still hold points (``deleted`` ones have no shard any more).
_LIVE_STATUSES = ("building", "built", "published", "retired", "rejected")


def check_doc_id(doc_id: str) -> str:
    """A document id as the platform makes them (a UUID string), normalised.

    Raises:
        ValueError: not a UUID (also refuses path separators, wildcards and over-long input).
    """
    try:
        return str(uuid.UUID(doc_id))
    except (ValueError, AttributeError, TypeError) as exc:
        shown = str(doc_id)[:80]
        raise ValueError(f"doc_id must be a document id (a UUID), got {shown!r}") from exc


@dataclass
class Removal:
    """What one erasure step removed.

    Attributes:
        where: the kind of place: ``suppression_list``, ``cache``, ``asset``, ``query_log``,
            ``feedback``, ``conversations``, ``golden_candidates``, ``spool``.
        path: the file (relative to ``RAG_HOME``) or table.
        items: rows, cache entries or vectors removed.
    """

    where: str
    path: str
    items: int


@dataclass
class Check:
    """One verification check: ``passed`` and what was found."""

    name: str
    passed: bool
    detail: str


@dataclass
class Verification:
    """Whether anything of the erased subject is left (every check passed)."""

    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}


@dataclass
class ErasureReceipt:
    """What an erasure removed, where, when and by whom, and its verification.

    Attributes:
        erasure_id: a new UUID.
        kind: ``document``, ``principal`` or ``tenant``.
        tenant: tenant id.
        subject: the doc id or the principal (API key id).
        actor: who asked (``cli``, ``key:<id>``).
        at: when (UTC).
        removed: one :class:`Removal` per place that held something.
        verification: the checks run after the removal.
        pending: what the erasure leaves to a later step (e.g. the published index version
            still holding the document's points, excluded from every search until the next
            version replaces it).
        hashes: for a document, the SHA-256 content hashes of the document and of its chunks
            (not content: what a later :func:`verify_document_erasure` looks for).
    """

    erasure_id: str
    kind: Literal["document", "principal", "tenant"]
    tenant: str
    subject: str
    actor: str
    at: datetime
    removed: list[Removal]
    verification: Verification
    pending: list[str] = field(default_factory=list)
    hashes: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The receipt as JSON-ready values (also the audit row's details)."""
        return {
            "erasure_id": self.erasure_id,
            "kind": self.kind,
            "tenant": self.tenant,
            "subject": self.subject,
            "actor": self.actor,
            "at": self.at.isoformat(),
            "removed": [asdict(r) for r in self.removed],
            "removed_total": sum(r.items for r in self.removed),
            "verification": self.verification.to_dict(),
            "pending": list(self.pending),
            "hashes": self.hashes,
        }


# ------------------------------------------------------------------------------------------
# file helpers
# ------------------------------------------------------------------------------------------


# Stored assets are sealed whole (purpose ``asset``); the content caches are plain Parquet files
# whose values are sealed one by one. ``cipher`` opens the former and leaves the latter as read.


def _read_bytes(path: Path, cipher: TenantCipher) -> bytes | None:
    """A file's plaintext; None when it is missing. A sealed file that does not open raises:
    it is never taken for an empty one."""
    if not path.is_file():
        return None
    return cipher.open(path.read_bytes(), PURPOSE_ASSET)


def _read_parquet(path: Path, cipher: TenantCipher = NO_CIPHER) -> pd.DataFrame | None:
    data = _read_bytes(path, cipher)
    if data is None or data[:4] != b"PAR1":
        return None
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # unreadable
        log.debug("not a readable Parquet file %s: %s", path, exc)
        return None


def _write_parquet(path: Path, frame: pd.DataFrame, cipher: TenantCipher) -> None:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    cipher.write_file(path, buf.getvalue(), PURPOSE_ASSET)


def _filter_frame(
    path: Path, drop: Callable[[pd.DataFrame], pd.Series], cipher: TenantCipher = NO_CIPHER
) -> int:
    """Rewrites the Parquet file without the rows ``drop`` selects; returns how many went.
    A stored asset (``cipher`` given) is written back sealed."""
    frame = _read_parquet(path, cipher)
    if frame is None or not len(frame):
        return 0
    mask = drop(frame)
    removed = int(mask.sum())
    if removed:
        _write_parquet(path, frame[~mask].reset_index(drop=True), cipher)
    return removed


def _cache_keys(path: Path) -> pd.DataFrame | None:
    frame = _read_parquet(path)
    if frame is None or "key" not in frame.columns:
        return None
    return frame


def _prefix_mask(frame: pd.DataFrame, prefixes: set[str]) -> pd.Series:
    keys = frame["key"].astype(str)
    return keys.map(lambda k: k.split(":", 1)[0] in prefixes)


def _load_embeddings(path: Path, cipher: TenantCipher) -> EmbeddingSet | None:
    data = _read_bytes(path, cipher)
    if data is None or data[:2] != b"PK":
        return None
    return EmbeddingSet.from_bytes(data)


def _filter_embeddings(path: Path, hashes: set[str], cipher: TenantCipher = NO_CIPHER) -> int:
    """Rewrites an embedding set without the vectors of ``hashes``; returns how many went."""
    emb = _load_embeddings(path, cipher) if hashes else None
    if emb is None:
        return 0
    keep = [i for i, h in enumerate(emb.hashes) if h not in hashes]
    removed = len(emb.hashes) - len(keep)
    if removed:
        kept = EmbeddingSet(emb.model, [emb.hashes[i] for i in keep], emb.vectors[keep])
        cipher.write_file(path, kept.to_bytes(), PURPOSE_ASSET)
    return removed


def _embedding_hashes(path: Path, cipher: TenantCipher = NO_CIPHER) -> set[str]:
    emb = _load_embeddings(path, cipher)
    return set(emb.hashes) if emb is not None else set()


def _json_file(path: Path, cipher: TenantCipher = NO_CIPHER) -> Any:
    try:
        data = _read_bytes(path, cipher)
        return json.loads(data) if data is not None else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _scrub_quarantine(path: Path, doc_id: str) -> int:
    records = _json_file(path)
    if not isinstance(records, list):
        return 0
    kept = [r for r in records if not (isinstance(r, dict) and r.get("doc_id") == doc_id)]
    if len(kept) != len(records):
        text = json.dumps(kept, indent=1)
        atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    return len(records) - len(kept)


def _scrub_golden(path: Path, doc_id: str, cipher: TenantCipher) -> int:
    """Drops ``doc_id`` from every question's relevance in a stored golden set (JSON)."""
    data = _json_file(path, cipher)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        return 0
    removed = 0
    for q in data["questions"]:
        rel = q.get("relevant_doc_ids") if isinstance(q, dict) else None
        if isinstance(rel, dict) and doc_id in rel:
            del rel[doc_id]
            removed += 1
    if removed:
        cipher.write_file(path, json.dumps(data, default=str).encode(), PURPOSE_ASSET)
    return removed


def _golden_mentions(path: Path, doc_id: str, cipher: TenantCipher) -> int:
    data = _json_file(path, cipher)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        return 0
    return sum(
        1
        for q in data["questions"]
        if isinstance(q, dict) and doc_id in (q.get("relevant_doc_ids") or {})
    )


def _doc_mask(frame: pd.DataFrame, doc_id: str) -> pd.Series:
    """The rows of ``doc_id`` (none when the frame has no ``doc_id`` column)."""
    if "doc_id" not in frame.columns:
        return pd.Series(False, index=frame.index)
    return frame["doc_id"].astype(str) == doc_id


def _doc_rows(frame: pd.DataFrame | None, doc_id: str) -> pd.DataFrame:
    if frame is None or "doc_id" not in frame.columns:
        return pd.DataFrame()
    return frame[frame["doc_id"].astype(str) == doc_id]


# ------------------------------------------------------------------------------------------
# documents
# ------------------------------------------------------------------------------------------


@dataclass
class DocumentTrace:
    """Where a document's derived data can be found: its content hashes and chunk hashes."""

    source_id: str = ""
    uri: str = ""
    content_hashes: set[str] = field(default_factory=set)
    chunk_hashes: set[str] = field(default_factory=set)
    erased_at: datetime | None = None


class TenantFiles:
    """The files a tenant's pipeline writes: state folder and asset storage.

    Args:
        settings: platform settings (``cache_dir``, ``storage_dir``, ``home``).
        tenant: tenant id.
        cipher: the tenant's cipher (opens the sealed assets and cache values).
    """

    def __init__(self, settings: Settings, tenant: str, cipher: TenantCipher = NO_CIPHER) -> None:
        self.cipher = cipher
        self.home = settings.home
        self.state_dir = settings.cache_dir / tenant
        self.storage_dir = settings.storage_dir
        self.tenant = tenant

    def rel(self, path: Path) -> str:
        """``path`` relative to ``RAG_HOME`` (for receipts)."""
        try:
            return str(path.relative_to(self.home))
        except ValueError:
            return str(path)

    def cache_file(self, name: str) -> Path:
        return self.state_dir / name

    def embedding_caches(self) -> list[Path]:
        return sorted(self.state_dir.glob("embeddings-*.npz"))

    def quarantine_files(self) -> list[Path]:
        return sorted(self.state_dir.glob("quarantine_*.json"))

    def asset_files(self) -> Iterator[tuple[str, Path]]:
        """``(asset name, file)`` of every stored asset partition of the tenant."""
        if not self.storage_dir.is_dir():
            return
        for asset_dir in sorted(p for p in self.storage_dir.iterdir() if p.is_dir()):
            path = asset_dir / self.tenant
            if path.is_file():
                yield asset_dir.name, path


class DocumentEraser:
    """Erases one document of a tenant (see the module docstring for every place it goes).

    Args:
        settings: platform settings.
        store: the metadata store (migrated).
        backend: the index backend, to verify the index versions' shard payloads.
    """

    def __init__(self, settings: Settings, store: MetadataStore, backend: IndexBackend) -> None:
        self.settings = settings
        self.store = store
        self.backend = backend

    def run(self, tenant: str, doc_id: str, actor: str = "cli", reason: str = "") -> ErasureReceipt:
        """Suppresses the document, removes it from caches and stored assets, verifies, and
        writes the receipt to the audit log (action ``erasure.document``).

        An unknown document id is still suppressed (a later sync will not ingest it); its
        receipt then lists no removals.

        Args:
            tenant: tenant id.
            doc_id: the document id (``GET /v1/admin/documents`` lists them).
            actor: who asked.
            reason: recorded with the suppression (<= 500 characters).

        Returns:
            The receipt, as written to the audit log.

        Raises:
            ValueError: ``doc_id`` is not a document id, or a bad tenant id.
        """
        doc_id = check_doc_id(doc_id)
        files = TenantFiles(self.settings, tenant, self.store.keyring.cipher(tenant))
        trace = self._trace(files, tenant, doc_id)
        self.store.suppress_document(
            tenant, doc_id, trace.source_id, trace.uri, reason or "erasure request", actor
        )
        removed = [Removal("suppression_list", "document_suppressions", 1)]
        removed += self._purge(files, doc_id, trace)
        removed.append(
            Removal(
                "golden_candidates",
                "golden_candidates",
                self.store.golden_candidates.scrub_document(tenant, doc_id),
            )
        )
        verification = verify_document_erasure(
            self.settings, self.store, self.backend, tenant, doc_id, trace
        )
        receipt = ErasureReceipt(
            erasure_id=str(uuid.uuid4()),
            kind="document",
            tenant=tenant,
            subject=doc_id,
            actor=actor,
            at=datetime.now(UTC),
            removed=[r for r in removed if r.items],
            verification=verification,
            pending=_pending(verification),
            hashes={
                "content": sorted(trace.content_hashes),
                "chunks": sorted(trace.chunk_hashes),
            },
        )
        self.store.audit("erasure.document", tenant, actor, receipt.to_dict())
        return receipt

    def _trace(self, files: TenantFiles, tenant: str, doc_id: str) -> DocumentTrace:
        """The document's source, URI, content hashes and chunk hashes, from every file that
        knows them (read before anything is removed)."""
        trace = DocumentTrace()
        frames = [SourceSync(files.state_dir).rows_of(doc_id)]
        frames += [_read_parquet(path, files.cipher) for _, path in files.asset_files()]
        for frame in frames:
            rows = _doc_rows(frame, doc_id)
            if not len(rows):
                continue
            first = rows.iloc[0]
            trace.source_id = trace.source_id or str(first.get("source_id", "") or "")
            trace.uri = trace.uri or str(first.get("uri", "") or "")
            column = "content_hash"
            if "chunk_id" in rows.columns:  # a chunks frame: content_hash is the chunk's
                trace.chunk_hashes.update(str(h) for h in rows[column])
            elif column in rows.columns:
                trace.content_hashes.update(str(h) for h in rows[column])
        chunk_cache = _cache_keys(files.cache_file("chunks.parquet"))
        if chunk_cache is not None:
            for value in chunk_cache[_prefix_mask(chunk_cache, {doc_id})]["value"]:
                try:
                    chunks = json.loads(files.cipher.open_text(value, PURPOSE_CACHE))
                    trace.chunk_hashes.update(str(c["content_hash"]) for c in chunks)
                except (ValueError, KeyError, TypeError):
                    continue
        return trace

    def _purge(self, files: TenantFiles, doc_id: str, trace: DocumentTrace) -> list[Removal]:
        removed: list[Removal] = []

        def note(where: str, path: Path, items: int) -> None:
            removed.append(Removal(where, files.rel(path), items))

        note("cache", files.state_dir / SYNC_DIR, SourceSync(files.state_dir).forget({doc_id}))
        hashes = trace.content_hashes
        for name in _KEYED_BY_CONTENT_HASH:
            path = files.cache_file(name)
            if hashes:
                note("cache", path, _filter_frame(path, lambda f: _prefix_mask(f, hashes)))
        for name in _KEYED_BY_DOC_ID:
            path = files.cache_file(name)
            note("cache", path, _filter_frame(path, lambda f: _prefix_mask(f, {doc_id})))
        for path in files.embedding_caches():
            note("cache", path, _filter_embeddings(path, trace.chunk_hashes))
        for path in files.quarantine_files():
            note("cache", path, _scrub_quarantine(path, doc_id))
        cipher = files.cipher
        for asset, path in files.asset_files():
            if asset == "golden_set":
                note("golden_candidates", path, _scrub_golden(path, doc_id, cipher))
            elif _read_parquet(path, cipher) is not None:
                note("asset", path, _filter_frame(path, lambda f: _doc_mask(f, doc_id), cipher))
            else:
                note("asset", path, _filter_embeddings(path, trace.chunk_hashes, cipher))
        return removed


def _pending(verification: Verification) -> list[str]:
    return [c.detail for c in verification.checks if c.name == "published_version" and c.detail]


def _doc_points(reader: Any, doc_id: str) -> list[str]:
    return [pid for pid, payload in reader.payloads() if payload.get("doc_id") == doc_id]


def verify_document_erasure(
    settings: Settings,
    store: MetadataStore,
    backend: IndexBackend,
    tenant: str,
    doc_id: str,
    trace: DocumentTrace | None = None,
) -> Verification:
    """Proves nothing of an erased document is left where the platform keeps it.

    Checks: ``suppressed`` (on the suppression list); ``caches`` (no sync-snapshot row, no
    parse/mask/chunk cache entry, no embedding of its chunks, no quarantine record); ``assets``
    (no row of any stored Parquet frame, no vector of its chunks in a stored embedding set, no
    golden-set relevance); ``golden_candidates`` (no golden-set candidate names it among its
    retrieved chunks or relevant documents); ``new_versions`` (no index version created after
    the erasure holds a point of it); ``search`` (a search of the published version under the
    API's filter, with the document's own vectors as the query, returns none of its chunks:
    without the exclusion it would rank first). ``published_version`` reports, without failing,
    that the published version was built before the erasure and still holds its points (the API
    excludes them; the next version does not hold them).

    Args:
        settings, store, backend: as :class:`DocumentEraser`.
        tenant: tenant id.
        doc_id: the erased document id.
        trace: its hashes (from the erasure); default: those recorded in the document's last
            ``erasure.document`` audit receipt.

    Returns:
        The verification (``passed`` when every check passed).
    """
    doc_id = check_doc_id(doc_id)
    files = TenantFiles(settings, tenant, store.keyring.cipher(tenant))
    trace = trace or _recorded_trace(store, tenant, doc_id)
    checks: list[Check] = []
    suppression = next((s for s in store.list_suppressions(tenant) if s.doc_id == doc_id), None)
    checks.append(
        Check(
            "suppressed",
            suppression is not None,
            "on the suppression list" if suppression else "not on the suppression list",
        )
    )

    # caches
    found: list[str] = []
    held = SourceSync(files.state_dir).holds(doc_id)
    if held:
        found.append(f"{SYNC_DIR}/: {held} row(s)")
    prefixes = {
        **{n: trace.content_hashes for n in _KEYED_BY_CONTENT_HASH},
        **{n: {doc_id} for n in _KEYED_BY_DOC_ID},
    }
    for name, keys in prefixes.items():
        frame = _cache_keys(files.cache_file(name))
        if frame is not None and keys:
            hits = int(_prefix_mask(frame, keys).sum())
            if hits:
                found.append(f"{name}: {hits} entr(ies)")
    for path in files.embedding_caches():
        left = _embedding_hashes(path) & trace.chunk_hashes
        if left:
            found.append(f"{path.name}: {len(left)} vector(s)")
    for path in files.quarantine_files():
        records = _json_file(path)
        if isinstance(records, list) and any(
            isinstance(r, dict) and r.get("doc_id") == doc_id for r in records
        ):
            found.append(f"{path.name}: a record")
    checks.append(Check("caches", not found, "; ".join(found) or "nothing left"))

    # stored assets
    found = []
    for asset, path in files.asset_files():
        if asset == "golden_set":
            if n := _golden_mentions(path, doc_id, files.cipher):
                found.append(f"{files.rel(path)}: {n} question(s)")
            continue
        frame = _read_parquet(path, files.cipher)
        if frame is not None:
            if n := len(_doc_rows(frame, doc_id)):
                found.append(f"{files.rel(path)}: {n} row(s)")
        elif left := _embedding_hashes(path, files.cipher) & trace.chunk_hashes:
            found.append(f"{files.rel(path)}: {len(left)} vector(s)")
    checks.append(Check("assets", not found, "; ".join(found) or "nothing left"))
    named = store.golden_candidates.mentions(tenant, doc_id)
    checks.append(Check("golden_candidates", not named, f"{named} candidate(s) name it"))

    # index versions
    # released: the versions built since its (last) erasure
    recorded = trace.erased_at or _recorded_trace(store, tenant, doc_id).erased_at
    erased_at = suppression.created_at if suppression else recorded or datetime.now(UTC)
    published = store.get_published_version(tenant)
    newer: list[str] = []
    for v in store.list_versions(tenant):
        if v.status not in _LIVE_STATUSES or v.created_at < erased_at:
            continue
        if not backend.exists(v.path):
            continue
        reader = backend.open_reader(tenant, v.version, v.path)
        try:
            if n := len(_doc_points(reader, doc_id)):
                newer.append(f"{v.version}: {n} point(s)")
        finally:
            reader.close()
    checks.append(
        Check("new_versions", not newer, "; ".join(newer) or "no version built since holds it")
    )
    if published is not None and backend.exists(published.path):
        with backend.acquire(tenant, published.version, published.path) as reader:
            points = _doc_points(reader, doc_id)
            checks.append(_search_check(reader, tenant, doc_id, points, store))
        detail = (
            f"published version {published.version} still holds {len(points)} point(s) of it, "
            "excluded from every search; the next materialization publishes a version without it"
            if points
            else ""
        )
        checks.append(Check("published_version", True, detail))
    return Verification(checks)


def _recorded_trace(store: MetadataStore, tenant: str, doc_id: str) -> DocumentTrace:
    """The hashes recorded by the document's last erasure receipt (empty when none)."""
    trace = DocumentTrace()
    for entry in reversed(store.list_audit(tenant, "erasure.document")):
        if entry.details.get("subject") == doc_id:
            hashes = entry.details.get("hashes") or {}
            trace.content_hashes = set(hashes.get("content") or [])
            trace.chunk_hashes = set(hashes.get("chunks") or [])
            trace.erased_at = entry.created_at
            break
    return trace


def _search_check(
    reader: Any, tenant: str, doc_id: str, points: list[str], store: MetadataStore
) -> Check:
    """Searches the published version with the document's own vectors under the API's filter
    (its ACL groups, the tenant's erased documents excluded): none of its chunks may come back."""
    if not points:
        return Check("search", True, "the published version holds no point of it")
    point = reader.get_points(points[:1])[0]
    groups = tuple(point.payload.get("acl_groups") or ()) or ("all",)
    filters = SearchFilters(
        acl_groups=groups, exclude_doc_ids=tuple(sorted(store.suppressed_doc_ids(tenant)))
    )
    hits = reader.search(
        point.dense, point.sparse, filters, tenant, RetrievalSettings(), limit=max(10, len(points))
    )
    leaked = [h.chunk_id for h in hits if h.doc_id == doc_id]
    return Check(
        "search",
        not leaked,
        f"{len(leaked)} of its chunks returned" if leaked else "no chunk of it is returned",
    )


# ------------------------------------------------------------------------------------------
# principals
# ------------------------------------------------------------------------------------------


def _spool_lines(path: Path) -> list[str]:
    try:
        return path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def _spool_matches(line: str, tenant: str, key_id: str) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and (record.get("tenant"), record.get("key_id")) == (
        tenant,
        key_id,
    )


class PrincipalEraser:
    """Erases what the platform stores about one principal (an API key id) of a tenant.

    Args:
        settings: platform settings (the query-log spool file under ``RAG_HOME/spool``).
        store: the metadata store (migrated).
    """

    def __init__(self, settings: Settings, store: MetadataStore) -> None:
        self.settings = settings
        self.store = store
        self.spool_path = settings.home / "spool" / "query_log.jsonl"

    def run(self, tenant: str, principal: str, actor: str = "cli") -> ErasureReceipt:
        """Deletes the principal's query-log rows (with all feedback on them), the feedback it
        gave, its conversations, the golden-set candidates of its queries and its spooled
        query-log records; verifies; writes the receipt to the audit log
        (action ``erasure.principal``).

        Raises:
            ValueError: an empty principal or a bad tenant id.
        """
        if not principal or not principal.strip() or len(principal) > 200:
            raise ValueError("principal must be an API key id (1-200 characters)")
        queries, feedback_on = self.store.query_log.delete(tenant, key_id=principal)
        feedback = self.store.feedback.delete(tenant, key_id=principal)
        conversations, messages = self.store.conversations.delete(tenant, key_id=principal)
        candidates = self.store.golden_candidates.delete(tenant, key_id=principal)
        lines = _spool_lines(self.spool_path)
        kept = [line for line in lines if not _spool_matches(line, tenant, principal)]
        if len(kept) != len(lines):
            text = "".join(f"{line}\n" for line in kept)
            atomic_write(self.spool_path, lambda p: p.write_text(text, encoding="utf-8"))
        removed = [
            Removal("query_log", "query_log", queries),
            Removal("feedback", "feedback (on its queries)", feedback_on),
            Removal("feedback", "feedback (given by it)", feedback),
            Removal("conversations", "conversations", conversations),
            Removal("conversations", "conversation_messages", messages),
            Removal("golden_candidates", "golden_candidates", candidates),
            Removal("spool", "spool/query_log.jsonl", len(lines) - len(kept)),
        ]
        verification = verify_principal_erasure(self.settings, self.store, tenant, principal)
        receipt = ErasureReceipt(
            erasure_id=str(uuid.uuid4()),
            kind="principal",
            tenant=tenant,
            subject=principal,
            actor=actor,
            at=datetime.now(UTC),
            removed=[r for r in removed if r.items],
            verification=verification,
        )
        self.store.audit("erasure.principal", tenant, actor, receipt.to_dict())
        return receipt


def verify_principal_erasure(
    settings: Settings, store: MetadataStore, tenant: str, principal: str
) -> Verification:
    """Proves no query-log row, feedback row, conversation, golden-set candidate or spooled
    record of the principal is left.

    Returns:
        Checks ``query_log``, ``feedback``, ``conversations``, ``golden_candidates`` and
        ``spool``.
    """
    queries = [q for q in store.list_queries(tenant) if q.key_id == principal]
    feedback = [f for f in store.list_feedback(tenant) if f.key_id == principal]
    conversations = store.conversations.count(tenant, principal)
    candidates = [c for c in store.golden_candidates.find(tenant) if c.key_id == principal]
    spool = settings.home / "spool" / "query_log.jsonl"
    spooled = [line for line in _spool_lines(spool) if _spool_matches(line, tenant, principal)]
    return Verification(
        [
            Check("query_log", not queries, f"{len(queries)} row(s) left"),
            Check("feedback", not feedback, f"{len(feedback)} row(s) left"),
            Check("conversations", not conversations, f"{conversations} conversation(s) left"),
            Check("golden_candidates", not candidates, f"{len(candidates)} row(s) left"),
            Check("spool", not spooled, f"{len(spooled)} record(s) left"),
        ]
    )


# ------------------------------------------------------------------------------------------
# tenants (crypto-shredding)
# ------------------------------------------------------------------------------------------

#: Tables whose tenant rows an erased tenant keeps: the audit log (the hash chain and the
#: receipt itself) and the destroyed data keys (so a key version is never reused).
_KEPT_TABLES = ("audit_log", "data_keys")


def _tenant_asset_files(settings: Settings, tenant: str) -> list[Path]:
    """Every stored asset partition of the tenant: ``<asset>/<tenant>`` and, for tenant × day
    partitions, ``<asset>/<day>/<tenant>``."""
    storage = settings.storage_dir
    if not storage.is_dir():
        return []
    found = [p for p in storage.glob(f"*/{tenant}") if p.is_file()]
    found += [p for p in storage.glob(f"*/*/{tenant}") if p.is_file()]
    return sorted(found)


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


class TenantEraser:
    """Erases a whole tenant: destroys its data keys first (crypto-shredding: every sealed
    cache value, sync row, stored asset, question and comment of it is unreadable from then on,
    wherever a copy lies; a backup carries its own wrapped copy of the data key, readable only
    under the master key it was taken with), then removes what can be removed: the state folder
    ``RAG_HOME/cache/<tenant>``, its stored asset partitions, its uploads, its index versions
    (shards or collections) and its rows of every table but the audit log, and its registry
    entry (so no sensor or schedule ingests it again). The receipt (action ``erasure.tenant``)
    goes to the audit log.

    Args:
        settings: platform settings.
        store: the metadata store (migrated).
        backend: the index backend (the tenant's versions are deleted through it).
    """

    def __init__(self, settings: Settings, store: MetadataStore, backend: IndexBackend) -> None:
        self.settings = settings
        self.store = store
        self.backend = backend

    def run(self, tenant: str, actor: str = "cli") -> ErasureReceipt:
        """Crypto-shreds and removes the tenant; returns the receipt (as audited).

        Raises:
            ValueError: a bad tenant id.
        """
        check_tenant(tenant)
        rel = TenantFiles(self.settings, tenant).rel
        removed = [
            Removal("data_keys", "data_keys (destroyed)", self.store.keyring.destroy(tenant))
        ]
        state_dir = self.settings.cache_dir / tenant
        removed.append(Removal("cache", rel(state_dir), _count_files(state_dir)))
        shutil.rmtree(state_dir, ignore_errors=True)
        assets = _tenant_asset_files(self.settings, tenant)
        for path in assets:
            path.unlink(missing_ok=True)
        removed.append(Removal("asset", rel(self.settings.storage_dir), len(assets)))
        uploads = self.settings.uploads_dir / tenant
        removed.append(Removal("uploads", rel(uploads), _count_files(uploads)))
        shutil.rmtree(uploads, ignore_errors=True)
        self.backend.release_tenant(tenant)
        shards = self.backend.collect_garbage(tenant, set())
        removed.append(Removal("index", "index versions", len(shards)))
        edge_dir = self.settings.index_dir / tenant
        if edge_dir.is_dir() and not any(edge_dir.iterdir()):
            edge_dir.rmdir()
        with self.store.db.transaction() as conn:
            for table, column in reversed(tenant_tables()):
                if table.name in _KEPT_TABLES:
                    continue
                rows = conn.execute(table.delete().where(table.c[column] == tenant)).rowcount
                removed.append(Removal("rows", table.name, int(rows)))
        removed.append(
            Removal("registry", rel(self.settings.tenants_file), self._unregister(tenant))
        )
        verification = verify_tenant_erasure(self.settings, self.store, tenant)
        receipt = ErasureReceipt(
            erasure_id=str(uuid.uuid4()),
            kind="tenant",
            tenant=tenant,
            subject=tenant,
            actor=actor,
            at=datetime.now(UTC),
            removed=[r for r in removed if r.items],
            verification=verification,
            pending=[c.detail for c in verification.checks if not c.passed],
        )
        self.store.audit("erasure.tenant", tenant, actor, receipt.to_dict())
        return receipt

    def _unregister(self, tenant: str) -> int:
        import yaml

        path = self.settings.tenants_file
        if not path.exists():
            return 0
        raw = yaml.safe_load(path.read_text()) or {}
        entries = raw.get("tenants", []) or []
        kept = [e for e in entries if not (isinstance(e, dict) and e.get("id") == tenant)]
        if len(kept) == len(entries):
            return 0
        raw["tenants"] = kept
        text = yaml.safe_dump(raw, sort_keys=False)
        atomic_write(path, lambda p: p.write_text(text))
        return len(entries) - len(kept)


def verify_tenant_erasure(settings: Settings, store: MetadataStore, tenant: str) -> Verification:
    """Proves an erased tenant's data is gone or unreadable.

    Checks: ``data_keys`` (no live data key, and a blob sealed under its last key does not
    open), ``caches`` (no state folder), ``assets`` (no stored partition), ``rows`` (no row of
    any table but the audit log and the destroyed keys), ``index`` (no Qdrant Edge shard: one
    an API process still holds is reported, and deleted by a later garbage collection).
    """
    checks: list[Check] = []
    latest = store.data_keys.latest(tenant)
    live = latest is not None and latest.wrapped is not None
    if latest is None:
        detail = "the tenant never had a data key"
    elif live:
        detail = f"data key {latest.version} is live"
    else:
        try:  # the destroyed key must refuse to open anything sealed under it
            store.keyring.key(tenant, latest.version)
            detail, live = f"data key {latest.version} still unwraps", True
        except SealedDataError as exc:
            detail = f"data key {latest.version} destroyed: {exc}"
    checks.append(Check("data_keys", not live, detail))
    state_dir = settings.cache_dir / tenant
    left = _count_files(state_dir)
    checks.append(Check("caches", not left, f"{left} file(s) left" if left else "nothing left"))
    assets = _tenant_asset_files(settings, tenant)
    checks.append(
        Check("assets", not assets, f"{len(assets)} file(s) left" if assets else "nothing left")
    )
    found: list[str] = []
    with store.db.transaction(write=False) as conn:
        for table, column in tenant_tables():
            if table.name in _KEPT_TABLES:
                continue
            count = conn.execute(
                select(func.count()).select_from(table).where(table.c[column] == tenant)
            ).scalar_one()
            if count:
                found.append(f"{table.name}: {count} row(s)")
    checks.append(Check("rows", not found, "; ".join(found) or "nothing left"))
    edge_dir = settings.index_dir / tenant
    shards = sorted(p.name for p in edge_dir.iterdir() if p.is_dir()) if edge_dir.is_dir() else []
    checks.append(
        Check("index", not shards, f"shards left (in use): {shards}" if shards else "no shard left")
    )
    return Verification(checks)
