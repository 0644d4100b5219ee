"""The one assembly of the query path: ``build_answerer`` and ``build_retriever``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rag_platform.lib.answer import ExtractiveAnswerer, LLMAnswerer
from rag_platform.lib.embedding import SparseEncoder, get_embedder
from rag_platform.lib.index.edge import EdgeIndexReader
from rag_platform.lib.models import SearchFilters
from rag_platform.lib.rag import build_answerer, build_retriever, embedding_token_counter
from rag_platform.lib.tenants import RetrievalSettings
from rag_platform.settings import Settings
from rag_platform_tests.serving.factories import build_shard, chunk_ids, scifact_docs


class TestBuildAnswerer:
    def test_extractive_without_an_llm_endpoint(self) -> None:
        answerer = build_answerer(Settings(llm_base_url=None, llm_model="m"), get_embedder())
        assert isinstance(answerer, ExtractiveAnswerer) and answerer.mode == "extractive"

    def test_llm_from_the_five_settings(self) -> None:
        llm = build_answerer(
            Settings(
                llm_base_url="http://127.0.0.1:9/v1",
                llm_model="m",
                llm_api_key="sk",
                llm_timeout_seconds=7,
                llm_max_tokens=64,
            ),
            get_embedder(),
        )
        assert isinstance(llm, LLMAnswerer) and llm.mode == "llm"
        assert (llm.url, llm.model, llm.api_key, llm.max_tokens) == (
            "http://127.0.0.1:9/v1/chat/completions",
            "m",
            "sk",
            64,
        )
        assert llm._client.timeout.read == 7
        # streams without usage fall back to the embedding tokenizer's count
        assert llm.count_tokens is not None and llm.count_tokens("vitamin d deficiency") == 3
        llm.close()

    def test_embedding_token_counter_counts_word_pieces(self) -> None:
        count = embedding_token_counter(get_embedder())
        assert count("") == 0 and count("rickets") >= 1


class TestBuildRetriever:
    def test_retrieves_from_an_open_version(self, tmp_path: Path) -> None:
        docs = scifact_docs(0, 10)
        path = tmp_path / "v1"
        build_shard(path, "acme", docs)
        with EdgeIndexReader(path) as reader:
            retriever = build_retriever(
                reader, "acme", RetrievalSettings(), get_embedder(), SparseEncoder()
            )
            result = retriever.retrieve(docs[2].title, 3, SearchFilters(acl_groups=("all",)))
        assert result.hits and result.hits[0].doc_id == chunk_ids("acme", docs[2])[0]
        assert all(h.tenant == "acme" for h in result.hits)
        assert isinstance(result.query_vector, np.ndarray)
