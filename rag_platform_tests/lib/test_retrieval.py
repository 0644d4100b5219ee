"""The Retriever over a real Qdrant Edge shard of 40 SciFact abstracts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from rag_platform.lib.embedding import SparseEncoder, SparseVector, get_embedder
from rag_platform.lib.index.edge import EdgeIndexReader, EdgeIndexWriter
from rag_platform.lib.models import Hit, SearchFilters
from rag_platform.lib.retrieval import RetrievalResult, Retriever
from rag_platform.lib.tenants import RetrievalSettings
from rag_platform_tests.lib.test_index import TENANT, load_docs, make_points

ALL = SearchFilters(acl_groups=("all",))


@pytest.fixture(scope="module")
def docs() -> list[dict[str, str]]:
    return load_docs()


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory, docs: list[dict[str, str]]):
    path = tmp_path_factory.mktemp("retr") / "v1"
    with EdgeIndexWriter.create(path, 384) as w:
        w.upsert(make_points(docs))
    r = EdgeIndexReader(path)
    yield r
    r.close()


@pytest.fixture()
def retriever(reader: EdgeIndexReader) -> Retriever:
    return Retriever(reader, get_embedder(), SparseEncoder(), RetrievalSettings(), TENANT)


class _LeakyIndex:
    """An index that returns hits a correct filter would never let through."""

    def __init__(self, hits: list[Hit]) -> None:
        self.hits = hits

    def search(
        self,
        dense: np.ndarray,
        sparse: SparseVector,
        filters: SearchFilters,
        tenant: str,
        settings: RetrievalSettings,
        limit: int,
    ) -> list[Hit]:
        return self.hits[:limit]


class TestRetriever:
    def test_finds_the_document_a_question_is_about(
        self, retriever: Retriever, docs: list[dict[str, str]]
    ) -> None:
        target = docs[5]  # visible to "all" (5 % 4 != 0)
        result = retriever.retrieve(target["title"], 5, ALL)
        assert isinstance(result, RetrievalResult)
        assert result.hits[0].uri == f"scifact:{target['id']}"
        assert len(result.hits) == 5 and result.dropped == 0
        assert result.embed_ms > 0 and result.search_ms > 0
        top3 = retriever.search(target["title"], 3, ALL)
        assert top3[0] == result.hits[0]  # further ranks may swap on tied fused scores
        assert [h.score for h in top3] == pytest.approx([h.score for h in result.hits[:3]])

    def test_hidden_document_never_returned_without_its_group(
        self, retriever: Retriever, docs: list[dict[str, str]]
    ) -> None:
        hidden = docs[8]  # "secret" only
        insider = retriever.search(hidden["title"], 10, SearchFilters(acl_groups=("secret",)))
        assert insider[0].uri == f"scifact:{hidden['id']}"
        assert all(h.acl_groups == ["secret"] for h in insider)
        outsider = retriever.search(hidden["title"], 10, ALL)
        assert len(outsider) == 10
        assert f"scifact:{hidden['id']}" not in {h.uri for h in outsider}

    def test_every_fusion_mode_runs_through_the_same_path(
        self, reader: EdgeIndexReader, docs: list[dict[str, str]]
    ) -> None:
        for fusion in ("rrf", "dbsf", "convex", "dense", "sparse"):
            r = Retriever(
                reader, get_embedder(), SparseEncoder(), RetrievalSettings(fusion=fusion), TENANT
            )
            hits = r.search(docs[1]["title"], 3, ALL)
            assert hits[0].uri == f"scifact:{docs[1]['id']}", fusion

    def test_relevance_is_the_dense_cosine_of_the_best_visible_chunk_for_every_fusion(
        self, reader: EdgeIndexReader, docs: list[dict[str, str]]
    ) -> None:
        embedder = get_embedder()
        question = docs[5]["title"]
        dense = Retriever(
            reader, embedder, SparseEncoder(), RetrievalSettings(fusion="dense"), TENANT
        )
        best = dense.retrieve(question, 1, ALL).hits[0].score  # the index's cosine
        for fusion in ("rrf", "dbsf", "convex", "dense", "sparse"):
            r = Retriever(
                reader, embedder, SparseEncoder(), RetrievalSettings(fusion=fusion), TENANT
            )
            result = r.retrieve(question, 5, ALL, relevance=True)
            assert result.relevance == pytest.approx(best, abs=1e-5), fusion
            assert r.retrieve(question, 5, ALL).relevance is None  # only when asked
        assert 0.5 < best <= 1.0
        off_topic = dense.retrieve("Which NFL team won Super Bowl 50?", 5, ALL, relevance=True)
        assert off_topic.relevance is not None and off_topic.relevance < best - 0.3
        # the hidden document (group "secret") does not count for a principal without it
        hidden = docs[8]["title"]
        inside = dense.retrieve(hidden, 1, SearchFilters(acl_groups=("secret",)), relevance=True)
        outside = dense.retrieve(hidden, 1, ALL, relevance=True)
        assert inside.relevance is not None and outside.relevance is not None
        assert outside.relevance < inside.relevance

    def test_post_check_drops_foreign_and_invisible_hits(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        ok = Hit(chunk_id="a", doc_id="d", tenant=TENANT, text="t", score=3, acl_groups=["all"])
        foreign = Hit(
            chunk_id="b", doc_id="d", tenant="other", text="t", score=2, acl_groups=["all"]
        )
        hidden = Hit(
            chunk_id="c", doc_id="d", tenant=TENANT, text="t", score=1, acl_groups=["secret"]
        )
        r = Retriever(
            _LeakyIndex([foreign, ok, hidden]),
            get_embedder(),
            SparseEncoder(),
            RetrievalSettings(),
            TENANT,
        )
        with caplog.at_level(logging.WARNING, logger="rag_platform.lib.retrieval"):
            result = r.retrieve("anything", 10, ALL)
        assert [h.chunk_id for h in result.hits] == ["a"]
        assert result.dropped == 2
        assert "tenant" in caplog.text and "ACL" in caplog.text

    def test_bad_requests(self, retriever: Retriever) -> None:
        with pytest.raises(ValueError, match="query"):
            retriever.retrieve("  ", 5, ALL)
        with pytest.raises(ValueError, match="top_k"):
            retriever.retrieve("cancer", 0, ALL)
        with pytest.raises(ValueError, match="acl_groups"):
            retriever.retrieve("cancer", 5, SearchFilters(acl_groups=()))
        with pytest.raises(ValueError, match="tenant"):
            Retriever(retriever.reader, get_embedder(), SparseEncoder(), RetrievalSettings(), "")

    def test_stopword_only_query_still_uses_the_dense_branch(self, retriever: Retriever) -> None:
        hits = retriever.search("what is it about", 4, ALL)
        assert len(hits) == 4


def test_reader_is_closed_after_use(tmp_path: Path, docs: list[dict[str, str]]) -> None:
    path = tmp_path / "v1"
    with EdgeIndexWriter.create(path, 384) as w:
        w.upsert(make_points(docs[:4]))
    r = EdgeIndexReader(path)
    retriever = Retriever(r, get_embedder(), SparseEncoder(), RetrievalSettings(), TENANT)
    assert retriever.search(docs[1]["title"], 1, ALL)
    r.close()
    with pytest.raises(RuntimeError, match="closed"):
        retriever.search(docs[1]["title"], 1, ALL)
