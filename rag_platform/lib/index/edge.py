"""The embedded vector index: one Qdrant Edge shard directory per index version.

Each point is one chunk: a named dense vector ``dense`` (cosine), a named sparse vector ``bm25``
(Qdrant's BM25 with ``Modifier.Idf``) and a payload. The point id is the chunk id (a UUID), so
re-upserting a chunk replaces it.

Only one process may open a shard directory (the engine locks its write-ahead log), and there
is no read-only open: the writer (a pipeline run) builds a *new* version directory, and readers
(the API process) open published versions only. While a writer or reader has a version open it
holds a shared ``fcntl.flock`` on ``<version>.readers.lock`` beside the directory, so garbage
collection (:func:`rag_platform.lib.index.versions.gc_versions`) never deletes a version in
use.

Filters run *inside* every prefetch of the Qdrant query (tenant, ACL groups, user filters), so
the ``limit`` hits returned are all visible to the principal.
"""

from __future__ import annotations

import fcntl
import math
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeSparseVectorParams,
    EdgeVectorParams,
    Expression,
    FieldCondition,
    Filter,
    Formula,
    Fusion,
    MatchAny,
    MatchValue,
    Modifier,
    PayloadSchemaType,
    Point,
    Prefetch,
    Query,
    QueryRequest,
    RangeFloat,
    ScrollRequest,
    UpdateOperation,
)
from qdrant_edge import SparseVector as EdgeSparseVector

from rag_platform.lib.embedding import SparseVector
from rag_platform.lib.models import Hit, SearchFilters
from rag_platform.lib.tenants import RetrievalSettings

#: Name of the dense vector in every shard.
DENSE_VECTOR = "dense"
#: Name of the BM25 sparse vector in every shard.
SPARSE_VECTOR = "bm25"

#: Payload keys every point must carry.
REQUIRED_PAYLOAD_KEYS = ("tenant", "doc_id", "chunk_id", "text", "acl_groups")

#: Payload fields indexed for filtering (keyword match or float range).
PAYLOAD_INDEXES: dict[str, PayloadSchemaType] = {
    "tenant": PayloadSchemaType.Keyword,
    "acl_groups": PayloadSchemaType.Keyword,
    "doc_id": PayloadSchemaType.Keyword,
    "source_id": PayloadSchemaType.Keyword,
    "mime_type": PayloadSchemaType.Keyword,
    "updated_ts": PayloadSchemaType.Float,
}


class IndexUnavailableError(RuntimeError):
    """The engine cannot open a version (missing files, or another process holds it)."""


@dataclass
class IndexPoint:
    """One chunk to index.

    Attributes:
        id: the chunk id (a UUID string); also the Qdrant point id.
        dense: float32 embedding, shape ``(dim,)``, L2-normalised.
        sparse: BM25 document vector.
        payload: see :func:`make_payload` for the keys.
    """

    id: str
    dense: np.ndarray
    sparse: SparseVector
    payload: dict[str, Any]


def _to_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def make_payload(
    *,
    tenant: str,
    doc_id: str,
    chunk_id: str,
    ordinal: int,
    text: str,
    title: str = "",
    uri: str = "",
    source_id: str = "",
    mime_type: str = "",
    heading_path: list[str] | None = None,
    page: int | None = None,
    acl_groups: list[str] | None = None,
    updated_at: datetime | str | None = None,
    content_hash: str = "",
) -> dict[str, Any]:
    """Builds a point payload with the keys the index and the API rely on.

    ``content_hash`` is the chunk's SHA-256 (of the text it was embedded from), for lineage.

    ``updated_at`` is stored twice: as an ISO-8601 string (``updated_at``, for display) and as
    epoch seconds (``updated_ts``, float, for range filters). A naive datetime is taken as UTC.

    Raises:
        ValueError: ``updated_at`` is a string that is not ISO-8601.
    """
    iso: str | None = None
    ts: float | None = None
    if isinstance(updated_at, str):
        try:
            updated_at = datetime.fromisoformat(updated_at)
        except ValueError as exc:
            raise ValueError(f"updated_at is not ISO-8601: {updated_at!r}") from exc
    if isinstance(updated_at, datetime):
        dt = _to_utc(updated_at)
        iso, ts = dt.isoformat(), dt.timestamp()
    return {
        "tenant": tenant,
        "doc_id": doc_id,
        "chunk_id": chunk_id,
        "ordinal": int(ordinal),
        "text": text,
        "title": title,
        "uri": uri,
        "source_id": source_id,
        "mime_type": mime_type,
        "heading_path": list(heading_path or []),
        "page": page,
        "acl_groups": list(acl_groups if acl_groups is not None else ["all"]),
        "updated_at": iso,
        "updated_ts": ts,
        "content_hash": content_hash,
    }


# -- version locks ---------------------------------------------------------------------------
def shard_lock_path(shard_path: Path) -> Path:
    """The lock file of a version directory: ``<parent>/<version>.readers.lock``."""
    return shard_path.parent / f"{shard_path.name}.readers.lock"


class ShardLock:
    """A shared (or exclusive) ``fcntl.flock`` on a version's lock file.

    Shared locks are held by every open reader and writer; garbage collection deletes a version
    only when it can take the exclusive lock without blocking. ``flock`` locks belong to the open
    file description, so this works between threads of one process as between processes.
    """

    def __init__(self, shard_path: Path, exclusive: bool = False, blocking: bool = True) -> None:
        self.path = shard_lock_path(shard_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if not blocking:
            flags |= fcntl.LOCK_NB
        try:
            fcntl.flock(self._fd, flags)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise

    def release(self) -> None:
        """Releases the lock (idempotent)."""
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


# -- conversions -----------------------------------------------------------------------------
def _dense_list(dense: np.ndarray, dim: int | None = None) -> list[float]:
    arr = np.asarray(dense, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"dense vector must be 1-d, got shape {arr.shape}")
    if dim is not None and arr.shape[0] != dim:
        raise ValueError(f"dense vector has dimension {arr.shape[0]}, index expects {dim}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("dense vector contains NaN or infinity")
    return arr.tolist()


def _edge_sparse(sparse: SparseVector) -> EdgeSparseVector:
    return EdgeSparseVector(list(sparse.indices), [float(v) for v in sparse.values])


def build_filter(filters: SearchFilters, tenant: str) -> Filter:
    """The Qdrant filter for a principal: tenant AND any ACL group AND the user filters.

    ``updated_after`` / ``updated_before`` are inclusive bounds on ``updated_ts``; naive
    datetimes are taken as UTC. Points without ``updated_at`` never match a date filter.
    ``exclude_doc_ids`` becomes a ``must_not`` condition: those documents never match.

    Raises:
        ValueError: ``tenant`` is empty or ``filters.acl_groups`` is empty (a principal without
            groups can see nothing, so the query is refused rather than run unfiltered).
    """
    if not tenant:
        raise ValueError("tenant is required for every index query")
    if not filters.acl_groups:
        raise ValueError("filters.acl_groups is empty: a principal needs at least one ACL group")
    must: list[Any] = [
        FieldCondition(key="tenant", match=MatchValue(tenant)),
        FieldCondition(key="acl_groups", match=MatchAny(list(filters.acl_groups))),
    ]
    for key, values in (
        ("source_id", filters.source_ids),
        ("mime_type", filters.mime_types),
        ("doc_id", filters.doc_ids),
    ):
        if values is not None:
            if not values:
                raise ValueError(f"filter on {key} has an empty list of values")
            must.append(FieldCondition(key=key, match=MatchAny(list(values))))
    if filters.updated_after is not None or filters.updated_before is not None:
        gte = _to_utc(filters.updated_after).timestamp() if filters.updated_after else None
        lte = _to_utc(filters.updated_before).timestamp() if filters.updated_before else None
        if gte is not None and lte is not None and gte > lte:
            raise ValueError("updated_after is later than updated_before")
        must.append(FieldCondition(key="updated_ts", range=RangeFloat(gte=gte, lte=lte)))
    if filters.exclude_doc_ids:
        excluded = FieldCondition(key="doc_id", match=MatchAny(list(filters.exclude_doc_ids)))
        return Filter(must=must, must_not=[excluded])
    return Filter(must=must)


def payload_to_hit(payload: dict[str, Any], score: float, point_id: Any = None) -> Hit:
    """Converts a point payload (and its fused score) to a :class:`Hit`."""
    return Hit(
        chunk_id=str(payload.get("chunk_id") or point_id),
        doc_id=str(payload.get("doc_id", "")),
        tenant=str(payload.get("tenant", "")),
        text=str(payload.get("text", "")),
        score=float(score),
        title=str(payload.get("title") or ""),
        uri=str(payload.get("uri") or ""),
        source_id=str(payload.get("source_id") or ""),
        heading_path=list(payload.get("heading_path") or []),
        page=payload.get("page"),
        acl_groups=list(payload.get("acl_groups") or []),
        updated_at=payload.get("updated_at"),
    )


# -- writer ----------------------------------------------------------------------------------
class EdgeIndexWriter:
    """Builds one new index version (a shard directory). Use :meth:`create`.

    Not thread-safe: one writer per version, in one thread.
    """

    def __init__(self, shard: EdgeShard, path: Path, dim: int, lock: ShardLock) -> None:
        self._shard: EdgeShard | None = shard
        self.path = path
        self.dim = dim
        self._lock = lock

    @classmethod
    def create(cls, path: Path, dim: int) -> EdgeIndexWriter:
        """Creates an empty shard at ``path`` with payload indexes on the filter fields.

        Args:
            path: the version directory (created; its parent too).
            dim: dense vector dimension.

        Raises:
            FileExistsError: ``path`` exists and is not empty (it may hold a shard).
            ValueError: ``dim`` < 1.
        """
        path = Path(path)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(f"{path} is not empty: a version directory is written once")
        lock = ShardLock(path)
        try:
            config = EdgeConfig(
                vectors={DENSE_VECTOR: EdgeVectorParams(size=dim, distance=Distance.Cosine)},
                sparse_vectors={SPARSE_VECTOR: EdgeSparseVectorParams(modifier=Modifier.Idf)},
            )
            shard = EdgeShard.create(str(path), config)
            for field_name, schema in PAYLOAD_INDEXES.items():
                shard.update(UpdateOperation.create_field_index(field_name, schema))
        except BaseException:
            lock.release()
            raise
        return cls(shard, path, dim, lock)

    @property
    def shard(self) -> EdgeShard:
        if self._shard is None:
            raise RuntimeError(f"index writer for {self.path} is closed")
        return self._shard

    def upsert(self, points: Sequence[IndexPoint], batch_size: int = 512) -> int:
        """Inserts or replaces points (by id).

        Returns:
            The number of points written.

        Raises:
            ValueError: a point lacks a required payload key, has acl_groups not a list, an id
                that is not a UUID, or a dense vector of the wrong shape / non-finite values.
                Nothing of the offending batch is written.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        written = 0
        for start in range(0, len(points), batch_size):
            batch = [self._to_point(p) for p in points[start : start + batch_size]]
            self.shard.update(UpdateOperation.upsert_points(batch))
            written += len(batch)
        return written

    def _to_point(self, p: IndexPoint) -> Point:
        missing = [k for k in REQUIRED_PAYLOAD_KEYS if k not in p.payload]
        if missing:
            raise ValueError(f"point {p.id}: payload lacks {missing}")
        groups = p.payload["acl_groups"]
        if not isinstance(groups, list):  # [] is valid: no reader group sees the point
            raise ValueError(f"point {p.id}: acl_groups must be a list")
        try:
            uuid.UUID(str(p.id))
        except ValueError as exc:
            raise ValueError(f"point id {p.id!r} is not a UUID") from exc
        try:
            dense = _dense_list(p.dense, self.dim)
        except ValueError as exc:
            raise ValueError(f"point {p.id}: {exc}") from exc
        return Point(
            str(p.id),
            {DENSE_VECTOR: dense, SPARSE_VECTOR: _edge_sparse(p.sparse)},
            p.payload,
        )

    def delete(self, ids: Sequence[str]) -> None:
        """Deletes points by id (missing ids are ignored)."""
        if ids:
            self.shard.update(UpdateOperation.delete_points([str(i) for i in ids]))

    def count(self) -> int:
        """Number of points written so far."""
        return int(self.shard.count(CountRequest(exact=True)))

    def close(self, optimize: bool = True) -> None:
        """Flushes, runs the segment optimizer (builds the HNSW graph and payload indexes of
        the final segments, so readers search fast) and closes the shard. Idempotent."""
        if self._shard is None:
            return
        try:
            self._shard.flush()
            if optimize:
                self._shard.optimize()
                self._shard.flush()
        finally:
            self._shard.close()
            self._shard = None
            self._lock.release()

    def __enter__(self) -> EdgeIndexWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- reader ----------------------------------------------------------------------------------
class EdgeIndexReader:
    """Searches one published index version. Thread-safe: the engine releases the GIL.

    Args:
        path: an existing version directory written by :class:`EdgeIndexWriter`.
        hold_lock: take the shared ``<version>.readers.lock`` while open (default).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IndexUnavailableError: the engine cannot open the shard (e.g. another process has it open).
    """

    def __init__(self, path: Path, hold_lock: bool = True) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"index version not found: {self.path}")
        self._lock = ShardLock(self.path) if hold_lock else None
        try:
            self._shard: EdgeShard | None = EdgeShard.load(str(self.path))
        except Exception as exc:
            if self._lock is not None:
                self._lock.release()
            raise IndexUnavailableError(f"cannot open index {self.path}: {exc}") from exc
        self._close_lock = threading.Lock()

    @property
    def shard(self) -> EdgeShard:
        shard = self._shard
        if shard is None:
            raise RuntimeError(f"index reader for {self.path} is closed")
        return shard

    @property
    def closed(self) -> bool:
        return self._shard is None

    def search(
        self,
        dense: np.ndarray,
        sparse: SparseVector,
        filters: SearchFilters,
        tenant: str,
        settings: RetrievalSettings,
        limit: int,
    ) -> list[Hit]:
        """Hybrid search with the principal's filter inside every prefetch.

        Fusion per ``settings.fusion``:

        - ``rrf``: reciprocal rank fusion (Cormack et al., SIGIR 2009) of a dense prefetch
          (``dense_prefetch`` candidates) and a BM25 prefetch (``sparse_prefetch``), with
          ``rrf_k`` and per-branch weights ``[dense_weight, sparse_weight]``. Qdrant computes
          ``sum_i w_i / (w_i * (k - 1) + rank_i)`` with 1-based ranks, i.e. plain
          ``1 / (k + rank0)`` when ``w = 1``. A branch with weight 0 is left out.
        - ``dbsf``: distribution-based score fusion (each branch's scores normalised by mean ±
          3 standard deviations, then summed); weights are not applied.
        - ``convex``: a convex combination of normalised scores (Bruch et al., "An Analysis of
          Fusion Functions for Hybrid Retrieval", TOIS 2023), computed by a Qdrant formula
          over the two prefetches: ``dense_weight * cosine + sparse_weight * s / (s +
          sparse_saturation)`` where ``s`` is the BM25 score; a candidate missing from one
          branch scores 0 there.
        - ``dense`` / ``sparse``: one branch alone.

        Args:
            dense: query embedding, shape ``(dim,)``.
            sparse: BM25 query vector (may be empty: the sparse branch then finds nothing).
            filters: principal's ACL groups plus optional user filters.
            tenant: the tenant every hit must belong to.
            settings: fusion and prefetch depths.
            limit: number of hits to return (>= 1).

        Returns:
            Up to ``limit`` hits, best first; ``score`` is the fused score.

        Raises:
            ValueError: bad ``limit``, vector shape or filters.
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        flt = build_filter(filters, tenant)
        dense_q = Query.Nearest(_dense_list(dense), using=DENSE_VECTOR)
        sparse_q = Query.Nearest(_edge_sparse(sparse), using=SPARSE_VECTOR)
        fusion = settings.fusion
        if fusion in ("rrf", "convex"):
            if settings.dense_weight == 0 and settings.sparse_weight == 0:
                raise ValueError(f"{fusion} with both branch weights 0 ranks nothing")
            if settings.dense_weight == 0:
                fusion = "sparse"
            elif settings.sparse_weight == 0:
                fusion = "dense"
        if fusion == "dense":
            request = QueryRequest(limit=limit, query=dense_q, filter=flt, with_payload=True)
        elif fusion == "sparse":
            if not sparse.indices:
                return []
            request = QueryRequest(limit=limit, query=sparse_q, filter=flt, with_payload=True)
        else:
            prefetches = [
                Prefetch(limit=max(settings.dense_prefetch, limit), query=dense_q, filter=flt)
            ]
            if sparse.indices:
                prefetches.append(
                    Prefetch(limit=max(settings.sparse_prefetch, limit), query=sparse_q, filter=flt)
                )
            if fusion == "rrf":
                weights: list[float] | None = [settings.dense_weight, settings.sparse_weight][
                    : len(prefetches)
                ]
                if weights is not None and all(math.isclose(w, 1.0) for w in weights):
                    weights = None
                fuse: Any = Fusion.Rrf(k=settings.rrf_k, weights=weights)
            elif fusion == "dbsf":
                fuse = Fusion.Dbsf()
            elif fusion == "convex":
                fuse = _convex_formula(settings)
            else:  # pragma: no cover - guarded by the settings model
                raise ValueError(f"unknown fusion {fusion!r}")
            request = QueryRequest(
                limit=limit, prefetches=prefetches, query=fuse, filter=flt, with_payload=True
            )
        points = self.shard.query(request)
        return [payload_to_hit(p.payload or {}, p.score, p.id) for p in points]

    def count(self, tenant: str | None = None) -> int:
        """Number of points (of one tenant when given)."""
        flt = None
        if tenant is not None:
            flt = Filter(must=[FieldCondition(key="tenant", match=MatchValue(tenant))])
        return int(self.shard.count(CountRequest(exact=True, filter=flt)))

    def scroll(
        self, batch_size: int = 1000, with_vectors: bool = False
    ) -> Iterator[IndexPoint | tuple[str, dict[str, Any]]]:
        """Iterates over every point, in id order.

        Yields:
            ``(id, payload)`` pairs, or :class:`IndexPoint` (vectors included, for carrying
            unchanged chunks into a new version) when ``with_vectors``.
        """
        offset: Any = None
        while True:
            records, offset = self.shard.scroll(
                ScrollRequest(
                    offset=offset, limit=batch_size, with_payload=True, with_vector=with_vectors
                )
            )
            for r in records:
                payload = dict(r.payload or {})
                if with_vectors:
                    yield record_to_point(r, payload)
                else:
                    yield str(r.id), payload
            if offset is None or not records:
                return

    def payloads(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every point's ``(id, payload)``, in id order, streamed (no vectors)."""
        for item in self.scroll():
            if isinstance(item, tuple):
                yield item

    def all_ids(self) -> list[str]:
        """Every point id (chunk id) in the version."""
        return [item[0] for item in self.scroll() if isinstance(item, tuple)]

    def get_points(self, ids: Sequence[str]) -> list[IndexPoint]:
        """Points by id with vectors and payload (missing ids are skipped)."""
        if not ids:
            return []
        records = self.shard.retrieve([str(i) for i in ids], with_payload=True, with_vector=True)
        return [record_to_point(r, dict(r.payload or {})) for r in records]

    def close(self) -> None:
        """Closes the shard and releases the version lock. Idempotent."""
        with self._close_lock:
            shard, self._shard = self._shard, None
            if shard is not None:
                try:
                    shard.close()
                finally:
                    if self._lock is not None:
                        self._lock.release()

    def __enter__(self) -> EdgeIndexReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _convex_formula(settings: RetrievalSettings) -> Formula:
    dense_score = Expression.Variable("$score[0]")
    sparse_score = Expression.Variable("$score[1]")
    saturated = Expression.Div(
        sparse_score,
        Expression.Sum([sparse_score, Expression.Constant(settings.sparse_saturation)]),
        0.0,
    )
    return Formula(
        Expression.Sum(
            [
                Expression.Mult([Expression.Constant(settings.dense_weight), dense_score]),
                Expression.Mult([Expression.Constant(settings.sparse_weight), saturated]),
            ]
        ),
        defaults={"$score[0]": 0.0, "$score[1]": 0.0},
    )


def record_to_point(record: Any, payload: dict[str, Any]) -> IndexPoint:
    """An :class:`IndexPoint` from a retrieved Qdrant record (Edge or qdrant-client) whose
    ``vector`` maps the vector names to a dense list and a sparse ``indices``/``values`` pair."""
    vectors = record.vector or {}
    dense = np.asarray(vectors.get(DENSE_VECTOR, []), dtype=np.float32)
    sp = vectors.get(SPARSE_VECTOR)
    sparse = (
        SparseVector(list(sp.indices), [float(v) for v in sp.values])
        if sp is not None
        else SparseVector()
    )
    return IndexPoint(id=str(record.id), dense=dense, sparse=sparse, payload=payload)
