"""The index-backend interface: the Qdrant server backend (through qdrant-client local mode,
the server API's stand-in: no Qdrant server binary installs here) against the Edge backend on
the same 40 SciFact points, and the server's versions, alias and garbage collection."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from rag_platform.lib.index.backend import EdgeBackend, open_backend
from rag_platform.lib.index.edge import IndexPoint, IndexUnavailableError
from rag_platform.lib.index.server import ServerBackend, alias_name, collection_name
from rag_platform.lib.models import SearchFilters, make_doc_id
from rag_platform.lib.tenants import RetrievalSettings
from rag_platform.settings import Settings
from rag_platform_tests.lib.test_index import TENANT, make_points, query_vectors

QUERIES = (
    "vitamin D deficiency and bone density",
    "cells and proteins in disease",
    "gene expression in cancer tumours",
)
EVERYONE = ("all", "secret")


@pytest.fixture(scope="module")
def other_points(docs: list[dict[str, str]]) -> list[IndexPoint]:
    return make_points(docs[:10], tenant="other")


@pytest.fixture(scope="module")
def backends(
    tmp_path_factory: pytest.TempPathFactory,
    points: list[IndexPoint],
    other_points: list[IndexPoint],
) -> tuple[EdgeBackend, ServerBackend]:
    """Both backends holding version ``v1`` of :data:`TENANT` with the same points (and 10
    points of tenant ``other`` in the same version, to check the tenant filter)."""
    root = tmp_path_factory.mktemp("backends")
    edge = EdgeBackend(root / "indexes")
    client = QdrantClient(path=str(root / "qdrant"))
    server = ServerBackend(client)
    for backend in (edge, server):
        writer = backend.create_writer(TENANT, "v1", 384)
        assert writer.upsert([*points, *other_points], batch_size=16) == 50
        assert writer.count() == 50
        writer.close()
    yield edge, server
    edge.close()
    client.close()


def _both(
    backends: tuple[EdgeBackend, ServerBackend],
    query: str,
    filters: SearchFilters,
    settings: RetrievalSettings,
    limit: int,
    tenant: str = TENANT,
) -> tuple[list[str], list[str]]:
    """The chunk ids each backend's reader of ``v1`` returns for the same search."""
    dense, sparse = query_vectors(query)
    found = []
    for backend in backends:
        reader = backend.open_reader(TENANT, "v1", backend.location(TENANT, "v1"))
        try:
            hits = reader.search(dense, sparse, filters, tenant, settings, limit)
        finally:
            reader.close()
        found.append([h.chunk_id for h in hits])
    return found[0], found[1]


class TestServerAgainstEdge:
    @pytest.mark.parametrize("fusion", ["rrf", "dbsf", "convex", "dense", "sparse"])
    def test_same_hits_for_the_same_query(
        self, backends: tuple[EdgeBackend, ServerBackend], fusion: str
    ) -> None:
        settings = RetrievalSettings(fusion=fusion, dense_prefetch=40, sparse_prefetch=40)
        for query in QUERIES:
            for groups in (("all",), ("secret",), EVERYONE):
                filters = SearchFilters(acl_groups=groups)
                edge_ids, server_ids = _both(backends, query, filters, settings, 10)
                # BM25 alone finds nothing when no visible document has a query term
                assert edge_ids or fusion == "sparse", (fusion, query, groups)
                assert server_ids == edge_ids, (fusion, query, groups)

    def test_same_hits_under_user_filters(
        self, backends: tuple[EdgeBackend, ServerBackend], docs: list[dict[str, str]]
    ) -> None:
        settings = RetrievalSettings(dense_prefetch=40, sparse_prefetch=40)
        wanted = make_doc_id(TENANT, "scifact", docs[5]["id"])
        for filters in (
            SearchFilters(acl_groups=EVERYONE, source_ids=("scifact-b",)),
            SearchFilters(acl_groups=("all",), mime_types=("application/pdf",)),
            SearchFilters(acl_groups=EVERYONE, doc_ids=(wanted,)),
            SearchFilters(
                acl_groups=EVERYONE,
                updated_after=datetime(2020, 1, 3, tzinfo=UTC),
                updated_before=datetime(2020, 1, 4),
            ),
        ):
            edge_ids, server_ids = _both(backends, QUERIES[1], filters, settings, 40)
            assert edge_ids, filters
            assert sorted(server_ids) == sorted(edge_ids), filters
        # erased documents (exclude_doc_ids) never match, on both
        excluded = (wanted, make_doc_id(TENANT, "scifact", docs[6]["id"]))
        for filters in (
            SearchFilters(acl_groups=EVERYONE, exclude_doc_ids=excluded),
            SearchFilters(acl_groups=EVERYONE, doc_ids=excluded, exclude_doc_ids=excluded[:1]),
        ):
            edge_ids, server_ids = _both(backends, QUERIES[1], filters, settings, 50)
            assert edge_ids and sorted(server_ids) == sorted(edge_ids), filters
        full, _ = _both(backends, QUERIES[1], SearchFilters(acl_groups=EVERYONE), settings, 50)
        without, _ = _both(
            backends,
            QUERIES[1],
            SearchFilters(acl_groups=EVERYONE, exclude_doc_ids=excluded),
            settings,
            50,
        )
        assert len(without) == len(full) - 2
        # the tenant filter: the other tenant's 10 points only, on both
        everyone = SearchFilters(acl_groups=EVERYONE)
        edge_other, server_other = _both(backends, QUERIES[1], everyone, settings, 50, "other")
        assert len(edge_other) == 10
        assert sorted(server_other) == sorted(edge_other)

    def test_same_counts_and_payloads(self, backends: tuple[EdgeBackend, ServerBackend]) -> None:
        seen = []
        for backend in backends:
            reader = backend.open_reader(TENANT, "v1", backend.location(TENANT, "v1"))
            try:
                seen.append((reader.count(), reader.count("other"), dict(reader.payloads())))
            finally:
                reader.close()
        assert seen[0][:2] == seen[1][:2] == (50, 10)
        assert seen[0][2] == seen[1][2]

    def test_same_points_by_id(self, backends: tuple[EdgeBackend, ServerBackend]) -> None:
        found = []
        for backend in backends:
            reader = backend.open_reader(TENANT, "v1", backend.location(TENANT, "v1"))
            try:
                ids = sorted(reader.payloads())[:3]
                points = reader.get_points(
                    [pid for pid, _ in ids] + ["00000000-0000-4000-8000-000000000000"]
                )
            finally:
                reader.close()
            found.append({p.id: p for p in points})
        edge, server = found
        assert len(edge) == 3 and edge.keys() == server.keys()
        for pid, point in edge.items():
            assert point.payload == server[pid].payload
            assert abs(float(point.dense @ server[pid].dense) - 1.0) < 1e-4
            assert point.sparse.indices == server[pid].sparse.indices


class TestServerBackend:
    def test_versions_publish_by_alias_and_garbage_collection(
        self, tmp_path: Path, points: list[IndexPoint], docs: list[dict[str, str]]
    ) -> None:
        backend = ServerBackend(QdrantClient(":memory:"))
        assert backend.available()
        for version, n in (("v1", 10), ("v2", 20), ("v3", 40)):
            with backend.create_writer(TENANT, version, 384) as writer:
                writer.upsert(points[:n])
        assert backend.location(TENANT, "v1") == collection_name(TENANT, "v1") == "kb_acme_v1"
        with pytest.raises(FileExistsError):
            backend.create_writer(TENANT, "v1", 384)
        assert backend.size_bytes("kb_acme_v1") is None
        assert backend.exists("kb_acme_v2") and not backend.exists("kb_acme_v9")
        with pytest.raises(FileNotFoundError):
            backend.publish(TENANT, "v9")

        backend.publish(TENANT, "v2")
        assert backend.alias_target(TENANT) == "kb_acme_v2"
        with backend.acquire(TENANT, "v2", "kb_acme_v2") as reader:
            assert reader.collection == alias_name(TENANT) == "kb_acme"  # through the alias
            assert reader.count() == 20
        backend.publish(TENANT, "v3")  # one atomic alias switch
        assert backend.alias_target(TENANT) == "kb_acme_v3"
        with backend.acquire(TENANT, "v3", "kb_acme_v3") as reader:
            assert reader.collection == "kb_acme" and reader.count() == 40
            dense, sparse = query_vectors(docs[0]["text"])  # docs[0] is "secret" only
            hits = reader.search(
                dense,
                sparse,
                SearchFilters(acl_groups=("secret",)),
                TENANT,
                RetrievalSettings(),
                3,
            )
            assert hits[0].uri == f"scifact:{docs[0]['id']}"
        # the store rolled back to v2 without the alias: the API reads v2's own collection
        with backend.acquire(TENANT, "v2", "kb_acme_v2") as reader:
            assert reader.collection == "kb_acme_v2" and reader.count() == 20
        with pytest.raises(IndexUnavailableError), backend.acquire(TENANT, "v9", "kb_acme_v9"):
            pass
        with pytest.raises(IndexUnavailableError):
            backend.open_reader(TENANT, "v9", "kb_acme_v9")

        assert not backend.delete(TENANT, "v3")  # the alias target is never dropped
        assert backend.collect_garbage(TENANT, keep={"v2"}) == ["v1"]  # v3: the alias target
        assert not backend.exists("kb_acme_v1") and backend.exists("kb_acme_v3")
        assert backend.delete(TENANT, "v2") and not backend.delete(TENANT, "v2")
        backend.close()

    def test_rollback_moves_the_alias_with_the_store(
        self, tmp_path: Path, points: list[IndexPoint]
    ) -> None:
        from rag_platform.lib.index.versions import IndexVersions
        from rag_platform.lib.store import MetadataStore

        store = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}")
        store.migrate()
        backend = ServerBackend(QdrantClient(":memory:"))
        versions = IndexVersions(store, backend, tmp_path / "reports", versions_kept=3)
        for version, n in (("v1", 10), ("v2", 20)):
            with backend.create_writer(TENANT, version, 384) as writer:
                writer.upsert(points[:n])
            location = backend.location(TENANT, version)
            store.register_version(TENANT, version, location, n, n, "cfg")
            store.mark_version_built(TENANT, version)
            versions.publish(TENANT, version)
        assert backend.alias_target(TENANT) == "kb_acme_v2"
        assert versions.rollback(TENANT).version == "v1"
        assert backend.alias_target(TENANT) == "kb_acme_v1"  # both read paths switched
        with backend.acquire(TENANT, "v1", "kb_acme_v1") as reader:
            assert reader.collection == "kb_acme" and reader.count() == 10
        backend.close()
        store.dispose()

    def test_open_backend_picks_by_the_qdrant_url(self, tmp_path: Path) -> None:
        edge = open_backend(Settings(home=tmp_path / "home"))
        assert isinstance(edge, EdgeBackend) and edge.kind == "edge"
        assert edge.index_dir == tmp_path / "home" / "indexes"
        folder = str(tmp_path / "qdrant")
        local = open_backend(Settings(home=tmp_path / "home", qdrant_url=folder))
        assert isinstance(local, ServerBackend) and local.kind == "server"
        # local mode allows one client per folder: every backend of the process shares it
        again = open_backend(Settings(home=tmp_path / "home", qdrant_url=folder))
        assert isinstance(again, ServerBackend) and again.client is local.client
        remote = open_backend(
            Settings(qdrant_url="https://127.0.0.1:1", qdrant_api_key="k"), pool=None
        )
        assert isinstance(remote, ServerBackend)
        assert type(remote.client._client).__name__ == "QdrantRemote"
        assert not remote.available()  # nothing listens on port 1
