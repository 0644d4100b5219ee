"""Qdrant Edge shards and the shard pool, on real shards of 40 SciFact abstracts (the version
lifecycle is tested in lib/index/test_versions.py)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from rag_platform.lib.embedding import SparseEncoder, SparseVector, get_embedder
from rag_platform.lib.index.edge import (
    EdgeIndexReader,
    EdgeIndexWriter,
    IndexPoint,
    IndexUnavailableError,
    make_payload,
)
from rag_platform.lib.index.pool import ShardPool
from rag_platform.lib.models import SearchFilters, make_chunk_id, make_doc_id, sha256_hex
from rag_platform.lib.tenants import RetrievalSettings
from rag_platform.settings import get_settings

SCIFACT = get_settings().data_dir / "scifact"
TENANT = "acme"
N_DOCS = 40


def load_docs(n: int = N_DOCS) -> list[dict[str, str]]:
    """The first ``n`` SciFact abstracts as ``{id, title, text}`` (text = title + ". " + body)."""
    docs = []
    with open(SCIFACT / "corpus.jsonl") as f:
        for line in f:
            row = json.loads(line)
            docs.append(
                {"id": row["_id"], "title": row["title"], "text": f"{row['title']}. {row['text']}"}
            )
            if len(docs) == n:
                break
    return docs


def acl_for(i: int) -> list[str]:
    """Every 4th document is visible only to ``secret``; the rest to ``all``."""
    return ["secret"] if i % 4 == 0 else ["all"]


def make_points(
    docs: list[dict[str, str]], tenant: str = TENANT, dense: np.ndarray | None = None
) -> list[IndexPoint]:
    """Index points with real embeddings and BM25 vectors; doc i is dated 2020-01-(i+1)."""
    if dense is None:
        dense = get_embedder().embed_documents([d["text"] for d in docs])
    sparse = SparseEncoder().encode_documents([d["text"] for d in docs])
    points = []
    for i, (d, vec, sp) in enumerate(zip(docs, dense, sparse, strict=True)):
        doc_id = make_doc_id(tenant, "scifact", d["id"])
        chunk_id = make_chunk_id(doc_id, 0, sha256_hex(d["text"]))
        payload = make_payload(
            tenant=tenant,
            doc_id=doc_id,
            chunk_id=chunk_id,
            ordinal=0,
            text=d["text"],
            title=d["title"],
            uri=f"scifact:{d['id']}",
            source_id="scifact-a" if i % 2 == 0 else "scifact-b",
            mime_type="text/plain" if i % 3 else "application/pdf",
            heading_path=[d["title"]],
            page=1,
            acl_groups=acl_for(i),
            updated_at=datetime(2020, 1, 1 + (i % 28), tzinfo=UTC),
        )
        points.append(IndexPoint(id=chunk_id, dense=vec, sparse=sp, payload=payload))
    return points


def build_shard(path: Path, points: list[IndexPoint]) -> Path:
    writer = EdgeIndexWriter.create(path, 384)
    writer.upsert(points, batch_size=16)
    writer.close()
    return path


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory, points: list[IndexPoint]) -> Path:
    return build_shard(tmp_path_factory.mktemp("idx") / "v1", points)


@pytest.fixture()
def reader(shard: Path):
    r = EdgeIndexReader(shard)
    yield r
    r.close()


def query_vectors(text: str) -> tuple[np.ndarray, SparseVector]:
    return get_embedder().embed_query(text), SparseEncoder().encode_query(text)


class TestEdgeIndexWriter:
    def test_writes_every_point_and_refuses_an_existing_shard(
        self, tmp_path: Path, points: list[IndexPoint]
    ) -> None:
        path = build_shard(tmp_path / "v1", points)
        with pytest.raises(FileExistsError):
            EdgeIndexWriter.create(path, 384)
        with EdgeIndexReader(path) as r:
            assert r.count() == N_DOCS
            assert sorted(r.all_ids()) == sorted(p.id for p in points)

    def test_upsert_is_idempotent_by_chunk_id(
        self, tmp_path: Path, points: list[IndexPoint]
    ) -> None:
        with EdgeIndexWriter.create(tmp_path / "v1", 384) as w:
            w.upsert(points[:10])
            w.upsert(points[:10])
            assert w.count() == 10

    def test_rejects_bad_points_with_a_reason(
        self, tmp_path: Path, points: list[IndexPoint]
    ) -> None:
        p = points[1]
        with EdgeIndexWriter.create(tmp_path / "v1", 384) as w:
            with pytest.raises(ValueError, match="dimension"):
                w.upsert([IndexPoint(p.id, p.dense[:10], p.sparse, p.payload)])
            with pytest.raises(ValueError, match="acl_groups"):
                w.upsert([IndexPoint(p.id, p.dense, p.sparse, {**p.payload, "acl_groups": "all"})])
            with pytest.raises(ValueError, match="lacks"):
                w.upsert([IndexPoint(p.id, p.dense, p.sparse, {"text": "x"})])
            with pytest.raises(ValueError, match="UUID"):
                w.upsert([IndexPoint("doc-1", p.dense, p.sparse, p.payload)])
            nan = p.dense.copy()
            nan[0] = np.nan
            with pytest.raises(ValueError, match="NaN"):
                w.upsert([IndexPoint(p.id, nan, p.sparse, p.payload)])
            assert w.count() == 0

    def test_carried_over_points_keep_vectors_and_payload(
        self, reader: EdgeIndexReader, points: list[IndexPoint]
    ) -> None:
        got = reader.get_points([points[3].id])
        assert len(got) == 1
        assert np.allclose(got[0].dense, points[3].dense, atol=1e-6)
        assert got[0].sparse.indices == points[3].sparse.indices
        assert got[0].payload["doc_id"] == points[3].payload["doc_id"]
        assert got[0].payload["updated_ts"] == points[3].payload["updated_ts"]


class TestEdgeIndexReader:
    def test_acl_filter_runs_inside_the_query(
        self, reader: EdgeIndexReader, docs: list[dict[str, str]]
    ) -> None:
        # Query with the exact text of a secret document: it ranks first for a principal
        # holding the group, and a principal without it still gets top_k *other* visible hits.
        secret = docs[0]["text"]
        dense, sparse = query_vectors(secret)
        settings = RetrievalSettings()
        insider = reader.search(
            dense, sparse, SearchFilters(acl_groups=("all", "secret")), TENANT, settings, 5
        )
        assert insider[0].uri == f"scifact:{docs[0]['id']}"
        outsider = reader.search(
            dense, sparse, SearchFilters(acl_groups=("all",)), TENANT, settings, 5
        )
        assert len(outsider) == 5
        assert all(h.acl_groups == ["all"] for h in outsider)
        assert f"scifact:{docs[0]['id']}" not in {h.uri for h in outsider}
        # The full visible set is 30 of 40: asking for 40 returns exactly the visible ones.
        everything = reader.search(
            dense,
            sparse,
            SearchFilters(acl_groups=("all",)),
            TENANT,
            settings.model_copy(update={"dense_prefetch": 40}),
            40,
        )
        assert len(everything) == N_DOCS - N_DOCS // 4

    def test_tenant_filter(
        self, tmp_path: Path, docs: list[dict[str, str]], points: list[IndexPoint]
    ) -> None:
        dense = np.stack([p.dense for p in points[:10]])
        other = make_points(docs[:10], tenant="other", dense=dense)
        for p in other:  # distinct ids so both tenants' copies coexist
            p.id = make_chunk_id(p.payload["doc_id"], 1, "x")
            p.payload["chunk_id"] = p.id
        path = build_shard(tmp_path / "mixed", points[:10] + other)
        with EdgeIndexReader(path) as r:
            dense_q, sparse_q = query_vectors(docs[1]["text"])
            filters = SearchFilters(acl_groups=("all", "secret"))
            hits = r.search(dense_q, sparse_q, filters, "other", RetrievalSettings(), 20)
            assert len(hits) == 10
            assert {h.tenant for h in hits} == {"other"}
            assert r.count("other") == 10 and r.count() == 20

    def test_user_filters(self, reader: EdgeIndexReader, docs: list[dict[str, str]]) -> None:
        dense, sparse = query_vectors("cells and proteins in disease")
        s = RetrievalSettings(dense_prefetch=40, sparse_prefetch=40)
        base = ("all", "secret")
        by_source = reader.search(
            dense, sparse, SearchFilters(acl_groups=base, source_ids=("scifact-b",)), TENANT, s, 40
        )
        assert len(by_source) == 20 and {h.source_id for h in by_source} == {"scifact-b"}
        pdfs = reader.search(
            dense,
            sparse,
            SearchFilters(acl_groups=base, mime_types=("application/pdf",)),
            TENANT,
            s,
            40,
        )
        assert len(pdfs) == len([i for i in range(N_DOCS) if i % 3 == 0])
        wanted = make_doc_id(TENANT, "scifact", docs[5]["id"])
        one_doc = reader.search(
            dense, sparse, SearchFilters(acl_groups=base, doc_ids=(wanted,)), TENANT, s, 10
        )
        assert [h.doc_id for h in one_doc] == [wanted]
        dated = reader.search(
            dense,
            sparse,
            SearchFilters(
                acl_groups=base,
                updated_after=datetime(2020, 1, 3, tzinfo=UTC),
                updated_before=datetime(2020, 1, 4),  # naive: taken as UTC, bounds inclusive
            ),
            TENANT,
            s,
            40,
        )
        days = sorted({h.updated_at for h in dated})
        assert days == ["2020-01-03T00:00:00+00:00", "2020-01-04T00:00:00+00:00"]
        assert len(dated) == 4  # i % 28 in {2, 3}: i = 2, 3, 30, 31

    def test_rrf_fuses_ranks_of_both_branches(self, reader: EdgeIndexReader) -> None:
        dense, sparse = query_vectors("vitamin D deficiency and bone density")
        f = SearchFilters(acl_groups=("all", "secret"))
        d = reader.search(dense, sparse, f, TENANT, RetrievalSettings(fusion="dense"), 40)
        s = reader.search(dense, sparse, f, TENANT, RetrievalSettings(fusion="sparse"), 40)
        k = 60
        expected: dict[str, float] = {}
        for ranking in (d, s):
            for rank, h in enumerate(ranking):
                expected[h.chunk_id] = expected.get(h.chunk_id, 0.0) + 1.0 / (k + rank)
        fused = reader.search(
            dense,
            sparse,
            f,
            TENANT,
            RetrievalSettings(
                fusion="rrf",
                rrf_k=k,
                dense_weight=1.0,
                sparse_weight=1.0,
                dense_prefetch=40,
                sparse_prefetch=40,
            ),
            40,
        )
        assert len(fused) == len(expected)
        for h in fused:
            assert h.score == pytest.approx(expected[h.chunk_id], rel=1e-4)
        assert [h.score for h in fused] == sorted((h.score for h in fused), reverse=True)
        # Weighting the sparse branch pulls the top BM25 hit to the top of the fusion.
        heavy = reader.search(
            dense,
            sparse,
            f,
            TENANT,
            RetrievalSettings(fusion="rrf", rrf_k=2, dense_weight=1.0, sparse_weight=5.0),
            5,
        )
        assert heavy[0].chunk_id == s[0].chunk_id

    def test_convex_fusion_combines_normalised_scores(self, reader: EdgeIndexReader) -> None:
        dense, sparse = query_vectors("insulin resistance in obesity")
        f = SearchFilters(acl_groups=("all", "secret"))
        d = {
            h.chunk_id: h.score
            for h in reader.search(dense, sparse, f, TENANT, RetrievalSettings(fusion="dense"), 40)
        }
        s = {
            h.chunk_id: h.score
            for h in reader.search(dense, sparse, f, TENANT, RetrievalSettings(fusion="sparse"), 40)
        }
        settings = RetrievalSettings(
            fusion="convex",
            dense_weight=0.7,
            sparse_weight=1.3,
            sparse_saturation=4.0,
            dense_prefetch=40,
            sparse_prefetch=40,
        )
        fused = reader.search(dense, sparse, f, TENANT, settings, 40)
        assert len(fused) == N_DOCS
        for h in fused:
            bm25 = s.get(h.chunk_id, 0.0)
            expected = 0.7 * d[h.chunk_id] + 1.3 * bm25 / (bm25 + 4.0)
            assert h.score == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert [h.score for h in fused] == sorted((h.score for h in fused), reverse=True)

    def test_dbsf_and_bad_arguments(self, reader: EdgeIndexReader) -> None:
        dense, sparse = query_vectors("tumour suppressor genes")
        f = SearchFilters(acl_groups=("all",))
        hits = reader.search(dense, sparse, f, TENANT, RetrievalSettings(fusion="dbsf"), 7)
        assert len(hits) == 7 and all(h.acl_groups == ["all"] for h in hits)
        with pytest.raises(ValueError, match="acl_groups"):
            reader.search(
                dense, sparse, SearchFilters(acl_groups=()), TENANT, RetrievalSettings(), 5
            )
        with pytest.raises(ValueError, match="limit"):
            reader.search(dense, sparse, f, TENANT, RetrievalSettings(), 0)
        with pytest.raises(ValueError, match="tenant"):
            reader.search(dense, sparse, f, "", RetrievalSettings(), 5)

    def test_second_open_of_a_shard_is_refused(self, shard: Path, reader: EdgeIndexReader) -> None:
        with pytest.raises(IndexUnavailableError):
            EdgeIndexReader(shard)
        with pytest.raises(FileNotFoundError):
            EdgeIndexReader(shard.parent / "missing")


class TestShardPool:
    @pytest.fixture()
    def versions(self, tmp_path: Path, points: list[IndexPoint]) -> Path:
        tenant_dir = tmp_path / TENANT
        # v1 holds the first 20 documents, v2 all 40: a query can tell which it ran on.
        build_shard(tenant_dir / "v1", points[:20])
        build_shard(tenant_dir / "v2", points)
        return tenant_dir

    def test_searches_while_switching_versions_see_one_version(self, versions: Path) -> None:
        pool = ShardPool()
        dense, sparse = query_vectors("gene expression in cancer")
        f = SearchFilters(acl_groups=("all", "secret"))
        s = RetrievalSettings(dense_prefetch=50, sparse_prefetch=50)
        current = {"version": "v1"}
        errors: list[BaseException] = []
        seen: dict[str, int] = {"v1": 0, "v2": 0}
        stop = time.monotonic() + 3.0

        def worker() -> None:
            try:
                while time.monotonic() < stop:
                    version = current["version"]
                    with pool.acquire(TENANT, version, versions / version) as r:
                        n1 = len(r.search(dense, sparse, f, TENANT, s, 50))
                        n2 = r.count()
                    # one query sees one version: both reads agree, never a mix
                    assert (n1, n2) in {(20, 20), (40, 40)}, (n1, n2)
                    seen["v1" if n2 == 20 else "v2"] += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for i in range(6):
            time.sleep(0.4)
            current["version"] = "v2" if i % 2 == 0 else "v1"
        for t in threads:
            t.join()
        assert not errors, errors
        assert seen["v1"] > 0 and seen["v2"] > 0
        # Only the current version stays open once everything is released.
        assert set(pool.open_versions(TENANT)) == {pool.current_version(TENANT)}
        pool.close_all()
        assert pool.open_versions(TENANT) == {}

    def test_old_version_closes_when_its_last_query_ends(self, versions: Path) -> None:
        pool = ShardPool()
        with pool.acquire(TENANT, "v1", versions / "v1") as old:
            with pool.acquire(TENANT, "v2", versions / "v2") as new:
                assert not old.closed and new.count() == 40
                assert old.count() == 20  # in-flight query finishes on the old version
            assert pool.open_versions(TENANT) == {"v1": 1, "v2": 0}
        assert old.closed
        assert pool.open_versions(TENANT) == {"v2": 0}
        pool.close_all()


class TestServerIndex:
    """The scale-out backend through qdrant-client local mode (the server API's stand-in)."""

    def test_versions_alias_and_filters(
        self, points: list[IndexPoint], docs: list[dict[str, str]]
    ) -> None:
        from qdrant_client import QdrantClient

        from rag_platform.lib.index.server import (
            ServerIndexReader,
            ServerIndexWriter,
            alias_name,
            publish,
        )

        client = QdrantClient(":memory:")
        with ServerIndexWriter.create(client, TENANT, "v1", 384) as w:
            w.upsert(points[:20])
        with ServerIndexWriter.create(client, TENANT, "v2", 384) as w:
            w.upsert(points)
        with pytest.raises(FileExistsError):
            ServerIndexWriter.create(client, TENANT, "v1", 384)
        reader = ServerIndexReader(client, alias_name(TENANT))
        publish(client, TENANT, "v1")
        assert reader.count() == 20
        publish(client, TENANT, "v2")
        assert reader.count() == 40 and len(reader.all_ids()) == 40

        dense, sparse = query_vectors(docs[0]["text"])  # docs[0] is "secret" only
        for fusion in ("rrf", "dbsf", "convex", "dense", "sparse"):
            s = RetrievalSettings(fusion=fusion)
            insider = reader.search(
                dense, sparse, SearchFilters(acl_groups=("secret",)), TENANT, s, 5
            )
            assert insider[0].uri == f"scifact:{docs[0]['id']}", fusion
            outsider = reader.search(
                dense, sparse, SearchFilters(acl_groups=("all",)), TENANT, s, 5
            )
            assert len(outsider) == 5, fusion
            assert all(h.acl_groups == ["all"] for h in outsider), fusion
        assert (
            reader.search(
                dense, sparse, SearchFilters(acl_groups=("all",)), "other", RetrievalSettings(), 5
            )
            == []
        )
        pdfs = reader.search(
            dense,
            sparse,
            SearchFilters(acl_groups=("all", "secret"), mime_types=("application/pdf",)),
            TENANT,
            RetrievalSettings(),
            40,
        )
        assert len(pdfs) == 14
