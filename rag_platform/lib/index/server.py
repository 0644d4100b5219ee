"""The scale-out index: a Qdrant server (or cluster) through ``qdrant-client``.

Same interface as :mod:`rag_platform.lib.index.edge`: one collection per index version
(``kb_<tenant>_<version>``) and one alias per tenant (``kb_<tenant>``) that publishing swaps
atomically; :class:`ServerBackend` is the
:class:`~rag_platform.lib.index.backend.IndexBackend` over them. Any number of processes may
read a collection (no shard lock), so the API can run as N processes. Tested with qdrant-client
local mode (``QdrantClient(":memory:")`` or ``QdrantClient(path=...)``), which qdrant-client
keeps congruent with the server API; no real server was run here.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
from qdrant_client import QdrantClient, models

from rag_platform.lib.embedding import SparseVector
from rag_platform.lib.index.edge import (
    DENSE_VECTOR,
    REQUIRED_PAYLOAD_KEYS,
    SPARSE_VECTOR,
    IndexPoint,
    IndexUnavailableError,
    _dense_list,
    _to_utc,
    payload_to_hit,
    record_to_point,
)
from rag_platform.lib.models import Hit, SearchFilters
from rag_platform.lib.tenants import RetrievalSettings

logger = logging.getLogger(__name__)

_KEYWORD_FIELDS = ("tenant", "acl_groups", "doc_id", "source_id", "mime_type")


def collection_name(tenant: str, version: str) -> str:
    """``kb_<tenant>_<version>``."""
    return f"kb_{tenant}_{version}"


def alias_name(tenant: str) -> str:
    """``kb_<tenant>``: the published version of a tenant."""
    return f"kb_{tenant}"


def _sparse(sp: SparseVector) -> models.SparseVector:
    return models.SparseVector(indices=list(sp.indices), values=[float(v) for v in sp.values])


def build_server_filter(filters: SearchFilters, tenant: str) -> models.Filter:
    """The qdrant-client filter equivalent of :func:`rag_platform.lib.index.edge.build_filter`.

    Raises:
        ValueError: empty tenant or ACL groups, empty user filter lists, inverted date range.
    """
    if not tenant:
        raise ValueError("tenant is required for every index query")
    if not filters.acl_groups:
        raise ValueError("filters.acl_groups is empty: a principal needs at least one ACL group")
    must: list[Any] = [
        models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant)),
        models.FieldCondition(
            key="acl_groups", match=models.MatchAny(any=list(filters.acl_groups))
        ),
    ]
    for key, values in (
        ("source_id", filters.source_ids),
        ("mime_type", filters.mime_types),
        ("doc_id", filters.doc_ids),
    ):
        if values is not None:
            if not values:
                raise ValueError(f"filter on {key} has an empty list of values")
            must.append(models.FieldCondition(key=key, match=models.MatchAny(any=list(values))))
    if filters.updated_after is not None or filters.updated_before is not None:
        gte = _to_utc(filters.updated_after).timestamp() if filters.updated_after else None
        lte = _to_utc(filters.updated_before).timestamp() if filters.updated_before else None
        if gte is not None and lte is not None and gte > lte:
            raise ValueError("updated_after is later than updated_before")
        must.append(models.FieldCondition(key="updated_ts", range=models.Range(gte=gte, lte=lte)))
    if filters.exclude_doc_ids:
        excluded = models.FieldCondition(
            key="doc_id", match=models.MatchAny(any=list(filters.exclude_doc_ids))
        )
        return models.Filter(must=must, must_not=[excluded])
    return models.Filter(must=must)


class ServerIndexWriter:
    """Builds one index version as a new collection. Use :meth:`create`."""

    def __init__(self, client: QdrantClient, collection: str, dim: int) -> None:
        self.client = client
        self.collection = collection
        self.dim = dim

    @classmethod
    def create(cls, client: QdrantClient, tenant: str, version: str, dim: int) -> ServerIndexWriter:
        """Creates ``kb_<tenant>_<version>`` with dense + BM25 (IDF) vectors and payload indexes.

        Raises:
            FileExistsError: the collection already exists (a version is written once).
        """
        name = collection_name(tenant, version)
        if client.collection_exists(name):
            raise FileExistsError(f"collection {name} already exists")
        client.create_collection(
            name,
            vectors_config={
                DENSE_VECTOR: models.VectorParams(size=dim, distance=models.Distance.COSINE)
            },
            sparse_vectors_config={
                SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)
            },
        )
        with warnings.catch_warnings():
            # local mode (tests) warns that payload indexes have no effect there
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            for field in _KEYWORD_FIELDS:
                client.create_payload_index(name, field, models.PayloadSchemaType.KEYWORD)
            client.create_payload_index(name, "updated_ts", models.PayloadSchemaType.FLOAT)
        return cls(client, name, dim)

    def upsert(self, points: Sequence[IndexPoint], batch_size: int = 512) -> int:
        """Inserts or replaces points; same validation as the Edge writer.

        Raises:
            ValueError: missing payload keys, acl_groups not a list, non-UUID id, bad dense vector.
        """
        written = 0
        for start in range(0, len(points), batch_size):
            batch = []
            for p in points[start : start + batch_size]:
                missing = [k for k in REQUIRED_PAYLOAD_KEYS if k not in p.payload]
                if missing:
                    raise ValueError(f"point {p.id}: payload lacks {missing}")
                if not isinstance(p.payload["acl_groups"], list):  # [] is valid: no reader
                    raise ValueError(f"point {p.id}: acl_groups must be a list")
                try:
                    uuid.UUID(str(p.id))
                except ValueError as exc:
                    raise ValueError(f"point id {p.id!r} is not a UUID") from exc
                batch.append(
                    models.PointStruct(
                        id=str(p.id),
                        vector={
                            DENSE_VECTOR: _dense_list(p.dense, self.dim),
                            SPARSE_VECTOR: _sparse(p.sparse),
                        },
                        payload=p.payload,
                    )
                )
            self.client.upsert(self.collection, batch, wait=True)
            written += len(batch)
        return written

    def count(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def close(self) -> None:
        """Nothing to flush: the server persists on ``wait=True`` upserts."""

    def __enter__(self) -> ServerIndexWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish(client: QdrantClient, tenant: str, version: str) -> None:
    """Points the alias ``kb_<tenant>`` at ``kb_<tenant>_<version>`` in one atomic request.

    Raises:
        FileNotFoundError: the version's collection does not exist.
    """
    name = collection_name(tenant, version)
    if not client.collection_exists(name):
        raise FileNotFoundError(f"collection {name} does not exist")
    alias = alias_name(tenant)
    ops: list[Any] = []
    existing = {a.alias_name for a in client.get_aliases().aliases}
    if alias in existing:
        ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
    ops.append(
        models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=name, alias_name=alias)
        )
    )
    client.update_collection_aliases(change_aliases_operations=ops)


def _convex_formula(settings: RetrievalSettings) -> models.FormulaQuery:
    """``dense_weight * $score[0] + sparse_weight * $score[1] / ($score[1] + saturation)``."""
    saturated = models.DivExpression(
        div=models.DivParams(
            left="$score[1]",
            right=models.SumExpression(sum=["$score[1]", settings.sparse_saturation]),
            by_zero_default=0.0,
        )
    )
    return models.FormulaQuery(
        formula=models.SumExpression(
            sum=[
                models.MultExpression(mult=[settings.dense_weight, "$score[0]"]),
                models.MultExpression(mult=[settings.sparse_weight, saturated]),
            ]
        ),
        defaults={"$score[0]": 0.0, "$score[1]": 0.0},
    )


class ServerIndexReader:
    """Searches a collection or alias with the same semantics as the Edge reader.

    Args:
        client: a connected ``QdrantClient``.
        collection: a collection name or a tenant alias (``kb_<tenant>``).
    """

    def __init__(self, client: QdrantClient, collection: str) -> None:
        self.client = client
        self.collection = collection

    def search(
        self,
        dense: np.ndarray,
        sparse: SparseVector,
        filters: SearchFilters,
        tenant: str,
        settings: RetrievalSettings,
        limit: int,
    ) -> list[Hit]:
        """See :meth:`rag_platform.lib.index.edge.EdgeIndexReader.search`.

        Raises:
            ValueError: bad ``limit`` or filters.
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        flt = build_server_filter(filters, tenant)
        dense_q = _dense_list(dense)
        fusion = settings.fusion
        if fusion in ("rrf", "convex"):
            if settings.dense_weight == 0 and settings.sparse_weight == 0:
                raise ValueError(f"{fusion} with both branch weights 0 ranks nothing")
            if settings.dense_weight == 0:
                fusion = "sparse"
            elif settings.sparse_weight == 0:
                fusion = "dense"
        common: dict[str, Any] = {"limit": limit, "with_payload": True}
        if fusion == "dense":
            res = self.client.query_points(
                self.collection, query=dense_q, using=DENSE_VECTOR, query_filter=flt, **common
            )
        elif fusion == "sparse":
            if not sparse.indices:
                return []
            res = self.client.query_points(
                self.collection,
                query=_sparse(sparse),
                using=SPARSE_VECTOR,
                query_filter=flt,
                **common,
            )
        else:
            prefetch = [
                models.Prefetch(
                    query=dense_q,
                    using=DENSE_VECTOR,
                    filter=flt,
                    limit=max(settings.dense_prefetch, limit),
                )
            ]
            if sparse.indices:
                prefetch.append(
                    models.Prefetch(
                        query=_sparse(sparse),
                        using=SPARSE_VECTOR,
                        filter=flt,
                        limit=max(settings.sparse_prefetch, limit),
                    )
                )
            query: Any
            if fusion == "rrf":
                weights: list[float] | None = [settings.dense_weight, settings.sparse_weight][
                    : len(prefetch)
                ]
                if all(math.isclose(w, 1.0) for w in weights or []):
                    weights = None
                query = models.RrfQuery(rrf=models.Rrf(k=settings.rrf_k, weights=weights))
            elif fusion == "dbsf":
                query = models.FusionQuery(fusion=models.Fusion.DBSF)
            elif fusion == "convex":
                query = _convex_formula(settings)
            else:
                raise ValueError(f"fusion {fusion!r} is not supported by the server backend")
            res = self.client.query_points(
                self.collection, prefetch=prefetch, query=query, query_filter=flt, **common
            )
        return [payload_to_hit(p.payload or {}, p.score, p.id) for p in res.points]

    def count(self, tenant: str | None = None) -> int:
        flt = None
        if tenant is not None:
            flt = models.Filter(
                must=[models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant))]
            )
        return int(self.client.count(self.collection, count_filter=flt, exact=True).count)

    def all_ids(self) -> list[str]:
        ids: list[str] = []
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                self.collection, limit=1000, offset=offset, with_payload=False
            )
            ids.extend(str(r.id) for r in records)
            if offset is None:
                return ids

    def points(self, batch_size: int = 256) -> Iterator[IndexPoint]:
        """Every point with its dense and sparse vectors and payload, in id order, streamed
        (what a backup exports and :meth:`ServerIndexWriter.upsert` takes back)."""
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                self.collection,
                limit=batch_size,
                offset=offset,
                with_payload=True,
                with_vectors=True,
            )
            for r in records:
                vectors = r.vector if isinstance(r.vector, dict) else {}
                dense, sparse = vectors.get(DENSE_VECTOR), vectors.get(SPARSE_VECTOR)
                yield IndexPoint(
                    id=str(r.id),
                    dense=np.asarray(dense, dtype=np.float32),
                    sparse=SparseVector(
                        indices=list(getattr(sparse, "indices", [])),
                        values=list(getattr(sparse, "values", [])),
                    ),
                    payload=dict(r.payload or {}),
                )
            if offset is None or not records:
                return

    def get_points(self, ids: Sequence[str]) -> list[IndexPoint]:
        """Points by id with vectors and payload (missing ids are skipped)."""
        if not ids:
            return []
        records = self.client.retrieve(
            self.collection, ids=[str(i) for i in ids], with_payload=True, with_vectors=True
        )
        return [record_to_point(r, dict(r.payload or {})) for r in records]

    def payloads(self, batch_size: int = 1000) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every point's ``(id, payload)``, in id order, streamed (no vectors)."""
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                self.collection, limit=batch_size, offset=offset, with_payload=True
            )
            for r in records:
                yield str(r.id), dict(r.payload or {})
            if offset is None or not records:
                return

    def close(self) -> None:
        """The client is shared; nothing to release per reader."""

    def __enter__(self) -> ServerIndexReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ServerBackend:
    """Index versions as collections of a Qdrant server, published by the tenant's alias.

    Args:
        client: a ``QdrantClient`` (remote, or local mode in tests); shared, never closed here.
    """

    kind: Literal["edge", "server"] = "server"

    def __init__(self, client: QdrantClient) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._readers: dict[str, tuple[str, ServerIndexReader]] = {}

    def location(self, tenant: str, version: str) -> str:
        """The collection name ``kb_<tenant>_<version>``."""
        return collection_name(tenant, version)

    def create_writer(self, tenant: str, version: str, dim: int) -> ServerIndexWriter:
        """A new collection (see :meth:`ServerIndexWriter.create`).

        Raises:
            FileExistsError: the collection exists.
        """
        return ServerIndexWriter.create(self.client, tenant, version, dim)

    def open_reader(self, tenant: str, version: str, location: str) -> ServerIndexReader:
        """A reader of the version's own collection (not the alias).

        Raises:
            IndexUnavailableError: the collection does not exist.
        """
        if not self.client.collection_exists(location):
            raise IndexUnavailableError(f"collection {location} does not exist")
        return ServerIndexReader(self.client, location)

    def alias_target(self, tenant: str) -> str | None:
        """The collection the alias ``kb_<tenant>`` points at, if any."""
        alias = alias_name(tenant)
        for a in self.client.get_aliases().aliases:
            if a.alias_name == alias:
                return str(a.collection_name)
        return None

    @contextmanager
    def acquire(self, tenant: str, version: str, location: str) -> Iterator[ServerIndexReader]:
        """The API's reader of the published ``version``: through the alias ``kb_<tenant>``
        when it points at the version's collection (checked once per version and process), so a
        query runs on the old collection or the new one, never a mix; through the collection
        itself when the store published a version the alias does not point at (a rollback made
        in the store alone).

        Raises:
            IndexUnavailableError: the collection does not exist.
        """
        with self._lock:
            held = self._readers.get(tenant)
            reader = held[1] if held is not None and held[0] == version else None
        if reader is None:
            if not self.client.collection_exists(location):
                raise IndexUnavailableError(f"collection {location} does not exist")
            target = self.alias_target(tenant)
            name = alias_name(tenant) if target == location else location
            reader = ServerIndexReader(self.client, name)
            with self._lock:
                self._readers[tenant] = (version, reader)
        yield reader

    def publish(self, tenant: str, version: str) -> None:
        """Switches ``kb_<tenant>`` to ``kb_<tenant>_<version>`` (see :func:`publish`).

        Raises:
            FileNotFoundError: the collection does not exist.
        """
        publish(self.client, tenant, version)

    def delete(self, tenant: str, version: str) -> bool:
        """Drops the version's collection; never the one the tenant's alias points at."""
        name = collection_name(tenant, version)
        if not self.client.collection_exists(name) or self.alias_target(tenant) == name:
            return False
        self.client.delete_collection(name)
        return True

    def collect_garbage(self, tenant: str, keep: set[str]) -> list[str]:
        """Drops the tenant's collections (``kb_<tenant>_*``; tenant ids hold no ``_``) whose
        version is not in ``keep``, never the alias target.

        A reader of another process still querying a dropped collection gets an error; only
        versions neither published nor kept for rollback are dropped.
        """
        prefix = collection_name(tenant, "")
        target = self.alias_target(tenant)
        deleted: list[str] = []
        for c in self.client.get_collections().collections:
            name = str(c.name)
            version = name[len(prefix) :]
            if not name.startswith(prefix) or version in keep or name == target:
                continue
            self.client.delete_collection(name)
            deleted.append(version)
        return sorted(deleted)

    def size_bytes(self, location: str) -> int | None:
        """Unknown: the server reports no collection size through its API."""
        return None

    def exists(self, location: str) -> bool:
        """Whether the collection exists."""
        return bool(self.client.collection_exists(location))

    def available(self) -> bool:
        """Whether the server answers a collection listing."""
        try:
            self.client.get_collections()
        except Exception as exc:
            logger.warning("qdrant server unreachable: %s", type(exc).__name__)
            return False
        return True

    def release_tenant(self, tenant: str) -> None:
        """Forgets the tenant's reader (the next request checks the alias again)."""
        with self._lock:
            self._readers.pop(tenant, None)

    def close(self) -> None:
        """Forgets every reader; the shared client stays open for the process."""
        with self._lock:
            self._readers.clear()
