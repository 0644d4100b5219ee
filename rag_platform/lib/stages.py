"""The pipeline stages as plain functions over pandas frames, with per-tenant content caches.

Each stage keys its work by content hash, so re-running a tenant whose sources did not change
reuses every parsed, masked, chunked and embedded result (DESIGN.md: "re-syncing unchanged sources
re-processes nothing downstream"). The Dagster assets in ``rag_platform.defs`` call these
functions; nothing here imports Dagster.

Frames (one row per document unless noted):

- sources: doc_id, tenant, source_id, native_id, uri, title, mime_type, content (bytes|None),
  text (str|None), content_hash, acl_groups (list[str]), updated_at (ISO str), metadata (JSON str),
  change ("added" | "changed" | "unchanged").
- parsed / masked: doc_id, tenant, source_id, uri, title, mime_type, content_hash, acl_groups,
  updated_at, sections (JSON list of {text, heading_path, page}); masked adds masked_hash.
- chunks (one row per chunk): chunk_id, doc_id, tenant, ordinal, text, embedding_text,
  token_count, content_hash, heading_path, page, title, uri, source_id, mime_type, acl_groups,
  updated_at.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rag_platform.lib.models import ParsedDocument, Section, make_doc_id
from rag_platform.lib.tenants import ChunkingConfig, PIIPolicy, TenantConfig

log = logging.getLogger(__name__)

#: Bump when parsing output changes, so cached parses are recomputed.
PARSER_VERSION = "1"
#: Bump when the index payload or point layout changes.
INDEX_SCHEMA_VERSION = "1"

SOURCE_COLUMNS = [
    "doc_id",
    "tenant",
    "source_id",
    "native_id",
    "uri",
    "title",
    "mime_type",
    "content",
    "text",
    "content_hash",
    "acl_groups",
    "updated_at",
    "metadata",
    "change",
]
DOC_COLUMNS = [
    "doc_id",
    "tenant",
    "source_id",
    "uri",
    "title",
    "mime_type",
    "content_hash",
    "acl_groups",
    "updated_at",
    "sections",
]
CHUNK_COLUMNS = [
    "chunk_id",
    "doc_id",
    "tenant",
    "ordinal",
    "text",
    "embedding_text",
    "token_count",
    "content_hash",
    "heading_path",
    "page",
    "title",
    "uri",
    "source_id",
    "mime_type",
    "acl_groups",
    "updated_at",
]


def config_hash(obj: Any) -> str:
    """Short SHA-256 of a pydantic model or JSON-serialisable object (16 hex chars)."""
    data = obj.model_dump(mode="json") if hasattr(obj, "model_dump") else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Content caches
# --------------------------------------------------------------------------------------------


class StageCache:
    """A key → JSON-value cache persisted as one Parquet file per tenant and stage.

    ``save`` keeps only the keys used in the current run, so entries of deleted or edited
    documents are pruned and the file never grows without bound. Writes are atomic (temp file,
    then rename).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._old: dict[str, str] = {}
        self._new: dict[str, str] = {}
        if path.exists():
            try:
                frame = pd.read_parquet(path)
                self._old = dict(zip(frame["key"], frame["value"], strict=True))
            except Exception as exc:  # a corrupt cache is rebuilt, never fatal
                log.warning("discarding unreadable cache %s: %s", path, exc)

    def get(self, key: str) -> Any | None:
        raw = self._new.get(key) or self._old.get(key)
        if raw is None:
            return None
        self._new[key] = raw
        return json.loads(raw)

    def put(self, key: str, value: Any) -> None:
        self._new[key] = json.dumps(value)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame({"key": list(self._new), "value": list(self._new.values())})
        _atomic_write(self.path, lambda p: frame.to_parquet(p, index=False))


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------------------------
# Stage results
# --------------------------------------------------------------------------------------------


@dataclass
class StageStats:
    """Counts and wall time of one stage run (seconds)."""

    processed: int = 0
    reused: int = 0
    failed: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "extra"}, **self.extra}


@dataclass
class Quarantined:
    """A document the pipeline could not process, with the reason."""

    doc_id: str
    uri: str
    stage: str
    reason: str


# --------------------------------------------------------------------------------------------
# source_documents
# --------------------------------------------------------------------------------------------


@dataclass
class SyncResult:
    frame: pd.DataFrame
    added: list[str]
    changed: list[str]
    deleted: list[str]
    acl_changed: list[str]
    problems: list[tuple[str, str, str]]  # (source_id, item, reason)
    seconds: float


def _acl_key(groups: Iterable[str]) -> str:
    return ",".join(sorted(set(groups)))


def sync_sources(tenant: TenantConfig, manifest_path: Path) -> SyncResult:
    """Runs every connector of the tenant and diffs the result against the previous sync.

    Args:
        tenant: the tenant's registry entry.
        manifest_path: Parquet file with the previous sync's (doc_id, content_hash, acl); it is
            rewritten with this sync's documents.

    Returns:
        The documents frame (``SOURCE_COLUMNS``) and the change set. A source whose connector
        fails as a whole (e.g. its folder is gone) is reported in ``problems`` and its previous
        documents are kept, never silently deleted.
    """
    from rag_platform.lib.connectors import build_connector

    start = time.perf_counter()
    previous: dict[str, tuple[str, str, str]] = {}
    if manifest_path.exists():
        old = pd.read_parquet(manifest_path)
        previous = {
            r.doc_id: (r.content_hash, r.acl, r.source_id) for r in old.itertuples(index=False)
        }
    rows: list[dict[str, Any]] = []
    problems: list[tuple[str, str, str]] = []
    failed_sources: set[str] = set()
    seen: set[str] = set()
    for source in tenant.sources:
        try:
            connector = build_connector(source, tenant.default_acl_groups)
            for doc in connector.list_documents():
                doc_id = make_doc_id(tenant.id, source.id, doc.native_id)
                if doc_id in seen:
                    problems.append((source.id, doc.native_id, "duplicate document id"))
                    continue
                seen.add(doc_id)
                rows.append(
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
            problems.extend((source.id, item, reason) for item, reason in connector.problems)
        except Exception as exc:  # one broken source never drops the others
            log.exception("source %s of tenant %s failed", source.id, tenant.id)
            problems.append((source.id, "*", f"{type(exc).__name__}: {exc}"))
            failed_sources.add(source.id)

    added, changed, acl_changed = [], [], []
    for row in rows:
        prev = previous.get(row["doc_id"])
        if prev is None:
            row["change"] = "added"
            added.append(row["doc_id"])
        elif prev[0] != row["content_hash"]:
            row["change"] = "changed"
            changed.append(row["doc_id"])
        else:
            row["change"] = "unchanged"
            if prev[1] != _acl_key(row["acl_groups"]):
                acl_changed.append(row["doc_id"])
    current = {r["doc_id"] for r in rows}
    deleted = [
        d for d, (_, _, src) in previous.items() if d not in current and src not in failed_sources
    ]
    kept_from_failed = {d: v for d, v in previous.items() if v[2] in failed_sources}

    frame = pd.DataFrame(rows, columns=SOURCE_COLUMNS)
    manifest = pd.DataFrame(
        [(r["doc_id"], r["content_hash"], _acl_key(r["acl_groups"]), r["source_id"]) for r in rows]
        + [(d, v[0], v[1], v[2]) for d, v in kept_from_failed.items()],
        columns=["doc_id", "content_hash", "acl", "source_id"],
    )
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(manifest_path, lambda p: manifest.to_parquet(p, index=False))
    return SyncResult(
        frame, added, changed, deleted, acl_changed, problems, time.perf_counter() - start
    )


# --------------------------------------------------------------------------------------------
# parsed_documents
# --------------------------------------------------------------------------------------------


def _sections_to_json(sections: list[Section]) -> list[dict[str, Any]]:
    return [
        {"text": s.text, "heading_path": list(s.heading_path), "page": s.page} for s in sections
    ]


def sections_from_json(raw: str | list[dict[str, Any]]) -> list[Section]:
    items = json.loads(raw) if isinstance(raw, str) else raw
    return [
        Section(text=i["text"], heading_path=list(i.get("heading_path") or []), page=i.get("page"))
        for i in items
    ]


def _doc_row(src: Any, sections_json: str) -> dict[str, Any]:
    return {
        "doc_id": src.doc_id,
        "tenant": src.tenant,
        "source_id": src.source_id,
        "uri": src.uri,
        "title": src.title,
        "mime_type": src.mime_type,
        "content_hash": src.content_hash,
        "acl_groups": list(src.acl_groups),
        "updated_at": src.updated_at,
        "sections": sections_json,
    }


def parse_stage(
    sources: pd.DataFrame, cache: StageCache
) -> tuple[pd.DataFrame, list[Quarantined], StageStats]:
    """Turns source documents into sectioned text; failures are quarantined, never fatal.

    Returns:
        (parsed frame with ``DOC_COLUMNS``, quarantined documents, stats).
    """
    from rag_platform.lib.ingestion.parse import ParseError, parse_document
    from rag_platform.lib.models import SourceDocument

    start = time.perf_counter()
    stats = StageStats()
    rows: list[dict[str, Any]] = []
    quarantined: list[Quarantined] = []
    for src in sources.itertuples(index=False):
        key = f"{src.content_hash}:{src.mime_type}:{PARSER_VERSION}"
        cached = cache.get(key)
        if cached is not None:
            stats.reused += 1
        else:
            doc = SourceDocument(
                source_id=src.source_id,
                native_id=src.native_id,
                uri=src.uri,
                title=src.title,
                mime_type=src.mime_type,
                content=src.content if isinstance(src.content, bytes) else None,
                text=src.text if isinstance(src.text, str) else None,
            )
            try:
                parsed: ParsedDocument = parse_document(doc)
                cached = {"sections": _sections_to_json(parsed.sections)}
            except ParseError as exc:
                cached = {"error": str(exc)}
            except Exception as exc:  # a parser bug on one file must not stop the run
                log.exception("parser crashed on %s", src.uri)
                cached = {"error": f"{type(exc).__name__}: {exc}"}
            cache.put(key, cached)
            stats.processed += 1
        if "error" in cached:
            stats.failed += 1
            quarantined.append(Quarantined(src.doc_id, src.uri, "parse", cached["error"]))
            continue
        rows.append(_doc_row(src, json.dumps(cached["sections"])))
    cache.save()
    stats.seconds = time.perf_counter() - start
    return pd.DataFrame(rows, columns=DOC_COLUMNS), quarantined, stats


# --------------------------------------------------------------------------------------------
# masked_documents
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskerSpec:
    """A picklable recipe for a tenant's ``PIIMasker`` (worker processes build their own)."""

    policy: PIIPolicy
    spacy_model: str

    def __call__(self) -> Any:
        from rag_platform.lib.ingestion.mask import PIIMasker

        return PIIMasker(self.policy, spacy_model=self.spacy_model)


_worker_masker: Any = None


def _init_mask_worker(factory: Callable[[], Any]) -> None:
    global _worker_masker
    _worker_masker = factory()


def _mask_texts(texts: list[str]) -> list[tuple[str, dict[str, int]]]:
    """Masks one document's section texts in a worker process."""
    return [(m.text, dict(m.entity_counts)) for m in _worker_masker.run_batch(texts)]


def mask_stage(
    parsed: pd.DataFrame,
    policy: PIIPolicy,
    cache: StageCache,
    masker_factory: Callable[[], Any],
    workers: int = 1,
) -> tuple[pd.DataFrame, Counter[str], StageStats]:
    """Masks PII in every section with the tenant's Presidio policy.

    ``masker_factory`` is called only when at least one document needs masking (loading spaCy
    costs seconds). With NER on, ``workers`` > 1 and several documents to mask, documents are
    masked in that many worker processes (``spawn``; ``masker_factory`` must then be picklable,
    e.g. a :class:`MaskerSpec`): spaCy NER and Presidio's recognizers are CPU-bound Python, about
    10 s per 10-Q filing on one core. Results are cached per document as they arrive, so an
    interrupted run keeps what was done.

    Returns:
        (masked frame = ``DOC_COLUMNS`` + masked_hash, entity counts by type over all current
        documents, stats).
    """
    start = time.perf_counter()
    stats = StageStats()
    policy_key = config_hash(policy)
    entity_counts: Counter[str] = Counter()
    todo: list[tuple[int, str]] = []
    results: dict[int, dict[str, Any]] = {}
    records = list(parsed.itertuples(index=False))
    for i, doc in enumerate(records):
        key = f"{doc.content_hash}:{policy_key}"
        cached = cache.get(key)
        if cached is not None:
            results[i] = cached
            stats.reused += 1
        else:
            todo.append((i, key))

    def store(
        i: int, key: str, sections: list[Section], masked: list[tuple[str, dict[str, int]]]
    ) -> None:
        counts: Counter[str] = Counter()
        for section, (text, found) in zip(sections, masked, strict=True):
            section.text = text
            counts.update(found)
        value: dict[str, Any] = {"sections": _sections_to_json(sections), "counts": dict(counts)}
        cache.put(key, value)
        results[i] = value
        stats.processed += 1

    if todo:
        pending = []  # documents with text to mask; the others are stored as they are
        for i, key in todo:
            sections = sections_from_json(records[i].sections)
            if policy.enabled and sections:
                pending.append((i, key, sections))
            else:
                store(i, key, sections, [(s.text, {}) for s in sections])
        if pending and workers > 1 and policy.ner and len(pending) > 1:
            children_before = set(mp.active_children())
            try:
                with ProcessPoolExecutor(
                    max_workers=min(workers, len(pending)),
                    mp_context=mp.get_context("spawn"),
                    initializer=_init_mask_worker,
                    initargs=(masker_factory,),
                ) as pool:
                    try:
                        masked_docs = pool.map(
                            _mask_texts, [[s.text for s in d[2]] for d in pending]
                        )
                        for (i, key, sections), masked in zip(pending, masked_docs, strict=True):
                            store(i, key, sections, masked)
                    except BaseException as exc:
                        if not isinstance(exc, BrokenProcessPool):
                            # Interrupted (SIGTERM/SIGINT reach a Dagster step as an exception):
                            # drop the queued documents and stop this pool's workers now, instead
                            # of leaving the pool's exit to mask every remaining document first.
                            pool.shutdown(wait=False, cancel_futures=True)
                            for worker in set(mp.active_children()) - children_before:
                                worker.terminate()
                        raise
            except BrokenProcessPool as exc:  # a worker died (killed, out of memory...)
                log.warning(
                    "masking worker process died (%s); masking the remaining "
                    "documents in this process",
                    exc,
                )
            pending = [d for d in pending if d[0] not in results]
        if pending:
            masker = masker_factory()
            for i, key, sections in pending:
                found = masker.run_batch([s.text for s in sections])
                store(i, key, sections, [(m.text, dict(m.entity_counts)) for m in found])
    rows = []
    for i, doc in enumerate(records):
        value = results[i]
        entity_counts.update(value["counts"])
        sections_json = json.dumps(value["sections"])
        row = _doc_row(doc, sections_json)
        row["masked_hash"] = hashlib.sha256(sections_json.encode()).hexdigest()
        rows.append(row)
    cache.save()
    stats.seconds = time.perf_counter() - start
    return pd.DataFrame(rows, columns=[*DOC_COLUMNS, "masked_hash"]), entity_counts, stats


# --------------------------------------------------------------------------------------------
# chunks
# --------------------------------------------------------------------------------------------


def chunk_stage(
    masked: pd.DataFrame,
    chunking: ChunkingConfig,
    cache: StageCache,
    chunker_factory: Callable[[], Any],
) -> tuple[pd.DataFrame, list[Quarantined], StageStats]:
    """Cuts every masked document into token-bounded chunks.

    The ACL groups, URI and dates come from the current document row, not the cache, so a change
    of permissions at the source reaches the next index without re-chunking or re-embedding.
    A document that yields no chunk is quarantined.
    """
    from rag_platform.lib.ingestion.chunk import embedding_text

    start = time.perf_counter()
    stats = StageStats()
    cfg_key = config_hash(chunking)
    chunker = None
    rows: list[dict[str, Any]] = []
    quarantined: list[Quarantined] = []
    for doc in masked.itertuples(index=False):
        title_key = hashlib.sha256(doc.title.encode()).hexdigest()[:16]
        key = f"{doc.doc_id}:{doc.masked_hash}:{cfg_key}:{title_key}"
        cached = cache.get(key)
        if cached is None:
            if chunker is None:
                chunker = chunker_factory()
            parsed = ParsedDocument(sections=sections_from_json(doc.sections))
            try:
                chunks = chunker.run(doc.doc_id, parsed, doc.title)
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
    cache.save()
    stats.seconds = time.perf_counter() - start
    return pd.DataFrame(rows, columns=CHUNK_COLUMNS), quarantined, stats


# --------------------------------------------------------------------------------------------
# chunk_embeddings
# --------------------------------------------------------------------------------------------


@dataclass
class EmbeddingSet:
    """Dense embeddings keyed by chunk content hash.

    Attributes:
        model: the embedding model's name.
        hashes: (n,) content hashes.
        vectors: (n, d) float32, L2-normalised.
    """

    model: str
    hashes: list[str]
    vectors: np.ndarray

    def lookup(self) -> dict[str, int]:
        return {h: i for i, h in enumerate(self.hashes)}

    def to_bytes(self) -> bytes:
        """The set as an ``.npz`` archive (model, hashes, float32 vectors)."""
        buf = io.BytesIO()
        np.savez(
            buf,
            model=np.array(self.model),
            hashes=np.array(self.hashes, dtype=str),
            vectors=self.vectors.astype(np.float32),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> EmbeddingSet:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(
                str(z["model"]),
                [str(h) for h in z["hashes"]],
                np.asarray(z["vectors"], dtype=np.float32),
            )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_bytes()
        _atomic_write(path, lambda p: p.write_bytes(data))

    @classmethod
    def load(cls, path: Path) -> EmbeddingSet:
        return cls.from_bytes(path.read_bytes())


def model_slug(model: str) -> str:
    return model.replace("/", "__")


def embed_stage(
    chunks: pd.DataFrame,
    cache_path: Path,
    model_name: str,
    embedder_factory: Callable[[], Any],
    checkpoint_every: int = 4096,
) -> tuple[EmbeddingSet, StageStats]:
    """Embeds every chunk whose content hash was never embedded with this model.

    Args:
        chunks: the chunks frame.
        cache_path: the tenant's embedding cache for this model (``.npz``), pruned to the current
            chunks and rewritten.
        model_name: recorded with the cache; a different model never reuses it.
        embedder_factory: returns an object with ``embed_documents(list[str]) -> (n, d) array``;
            called only when something needs embedding.
        checkpoint_every: texts embedded between cache saves, so an interrupted run resumes
            where it stopped instead of starting over.

    Returns:
        (embeddings of the current chunks' distinct content hashes, stats with ``embedded`` =
        chunks embedded now, ``reused``, ``tokens`` embedded, ``chunks_per_s``).
    """
    start = time.perf_counter()
    stats = StageStats()
    cached = None
    if cache_path.exists():
        try:
            cached = EmbeddingSet.load(cache_path)
            if cached.model != model_name:
                cached = None
        except Exception as exc:
            log.warning("discarding unreadable embedding cache %s: %s", cache_path, exc)
    unique = chunks.drop_duplicates("content_hash")
    wanted = unique["content_hash"].tolist()
    have = cached.lookup() if cached is not None else {}
    missing_mask = ~unique["content_hash"].isin(have.keys())
    missing = unique[missing_mask]
    vectors_new = None
    encode_seconds = 0.0
    if len(missing):
        embedder = embedder_factory()
        texts = missing["embedding_text"].tolist()
        hashes = missing["content_hash"].tolist()
        parts: list[np.ndarray] = []
        for start_at in range(0, len(texts), checkpoint_every):
            t0 = time.perf_counter()
            parts.append(embedder.embed_documents(texts[start_at : start_at + checkpoint_every]))
            encode_seconds += time.perf_counter() - t0
            if start_at + checkpoint_every < len(texts):  # checkpoint all but the last slice
                done = start_at + len(parts[-1])
                old_h = cached.hashes if cached is not None else []
                old_v = (
                    cached.vectors
                    if cached is not None
                    else np.zeros((0, parts[0].shape[1]), np.float32)
                )
                EmbeddingSet(model_name, [*old_h, *hashes[:done]], np.vstack([old_v, *parts])).save(
                    cache_path
                )
        vectors_new = np.vstack(parts)
    dim = (
        vectors_new.shape[1]
        if vectors_new is not None
        else cached.vectors.shape[1]
        if cached is not None and len(cached.hashes)
        else 0
    )
    out = np.zeros((len(wanted), dim), dtype=np.float32)
    new_lookup = {h: i for i, h in enumerate(missing["content_hash"].tolist())}
    for j, h in enumerate(wanted):
        if h in new_lookup:
            assert vectors_new is not None
            out[j] = vectors_new[new_lookup[h]]
        else:
            assert cached is not None
            out[j] = cached.vectors[have[h]]
    result = EmbeddingSet(model_name, wanted, out)
    result.save(cache_path)
    stats.processed = len(missing)
    stats.reused = len(wanted) - len(missing)
    stats.seconds = time.perf_counter() - start
    stats.extra = {
        "embedded": int(len(missing)),
        "tokens": int(missing["token_count"].sum()) if len(missing) else 0,
        "encode_seconds": round(encode_seconds, 3),
        "chunks_per_s": round(len(missing) / encode_seconds, 1) if encode_seconds else None,
        "model": model_name,
    }
    return result, stats


# --------------------------------------------------------------------------------------------
# search_index
# --------------------------------------------------------------------------------------------


def index_fingerprint(chunks: pd.DataFrame, model_name: str, extra: str = "") -> str:
    """SHA-256 over everything an index version holds: chunk ids, content, ACL, payload, model.

    Two builds with the same fingerprint would produce the same index, so the second is skipped.
    """
    h = hashlib.sha256()
    h.update(f"{INDEX_SCHEMA_VERSION}|{model_name}|{extra}\n".encode())
    for r in chunks.sort_values("chunk_id").itertuples(index=False):
        h.update(
            f"{r.chunk_id}|{r.content_hash}|{_acl_key(r.acl_groups)}|{r.uri}|{r.title}|"
            f"{r.updated_at}|{r.source_id}|{r.page}\n".encode()
        )
    return h.hexdigest()


def new_version_id() -> str:
    """Sortable, unique index version id (UTC timestamp with microseconds)."""
    return "v" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def build_index(
    chunks: pd.DataFrame,
    embeddings: EmbeddingSet,
    path: Path,
    sparse_encoder: Any,
    batch_size: int = 512,
) -> StageStats:
    """Writes a new Qdrant Edge shard at ``path`` holding every current chunk.

    Each point: id = chunk_id, dense vector from the embedding cache (never recomputed), BM25
    sparse vector of the embedding text, and the payload of DESIGN.md.
    """
    from rag_platform.lib.index.edge import EdgeIndexWriter, IndexPoint, make_payload

    start = time.perf_counter()
    lookup = embeddings.lookup()
    dim = embeddings.vectors.shape[1] if len(embeddings.hashes) else 384
    writer = EdgeIndexWriter.create(path, dim)
    try:
        records = list(chunks.itertuples(index=False))
        for b in range(0, len(records), batch_size):
            batch = records[b : b + batch_size]
            sparse = sparse_encoder.encode_documents([r.embedding_text for r in batch])
            points = [
                IndexPoint(
                    id=r.chunk_id,
                    dense=embeddings.vectors[lookup[r.content_hash]],
                    sparse=sv,
                    payload=make_payload(
                        tenant=r.tenant,
                        doc_id=r.doc_id,
                        chunk_id=r.chunk_id,
                        ordinal=int(r.ordinal),
                        text=r.text,
                        title=r.title,
                        uri=r.uri,
                        source_id=r.source_id,
                        mime_type=r.mime_type,
                        heading_path=list(r.heading_path),
                        page=None if pd.isna(r.page) else int(r.page),
                        acl_groups=list(r.acl_groups),
                        updated_at=r.updated_at or None,
                    ),
                )
                for r, sv in zip(batch, sparse, strict=True)
            ]
            writer.upsert(points)
    finally:
        writer.close()
    return StageStats(processed=len(chunks), seconds=time.perf_counter() - start)


def directory_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (bytes)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
