"""The scale-out index: a Qdrant server (or cluster) through ``qdrant-client``.

Same interface as :mod:`rag_platform.lib.index.edge`: one collection per index version
(``kb_<tenant>_<version>``) and one alias per tenant (``kb_<tenant>``) that publishing swaps
atomically. Tested with ``QdrantClient(":memory:")``, which qdrant-client keeps congruent with
the server API.
"""

from __future__ import annotations

import math
import uuid
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from rag_platform.lib.embedding import SparseVector
from rag_platform.lib.index.edge import (
    DENSE_VECTOR,
    REQUIRED_PAYLOAD_KEYS,
    SPARSE_VECTOR,
    IndexPoint,
    _dense_list,
    _to_utc,
    payload_to_hit,
)
from rag_platform.lib.models import Hit, SearchFilters
from rag_platform.lib.tenants import RetrievalSettings

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

    def close(self) -> None:
        """The client is shared; nothing to release per reader."""
