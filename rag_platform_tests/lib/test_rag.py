"""The one assembly of the query path: ``build_answerer`` and ``build_retriever``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rag_platform.lib.answer import ExtractiveAnswerer, LLMAnswerer
from rag_platform.lib.embedding import (
    DEFAULT_MODEL_NAME,
    OnnxInt8Embedder,
    SparseEncoder,
    get_embedder,
)
from rag_platform.lib.index.edge import EdgeIndexReader
from rag_platform.lib.models import SearchFilters
from rag_platform.lib.rag import (
    build_answerer,
    build_embedder,
    build_retriever,
    embedding_token_counter,
)
from rag_platform.lib.routing import RoutedAnswerer
from rag_platform.lib.tenants import BreakerConfig, GenerationConfig, ModelRoute, RetrievalSettings
from rag_platform.settings import Settings
from rag_platform_tests.serving.factories import build_shard, chunk_ids, scifact_docs


class TestBuildEmbedder:
    def test_the_settings_backend_or_the_one_an_index_version_recorded(
        self, tmp_path: Path
    ) -> None:
        onnx_settings = Settings(embedding_backend="onnx-int8", models_dir=tmp_path)
        torch_settings = Settings(embedding_backend="torch", models_dir=tmp_path)
        onnx = build_embedder(onnx_settings)
        assert isinstance(onnx, OnnxInt8Embedder) and onnx.models_dir == tmp_path
        assert build_embedder(torch_settings) is get_embedder()
        recorded = {"embedding": f"{DEFAULT_MODEL_NAME}@onnx-int8"}
        assert build_embedder(torch_settings, recorded) is onnx
        assert build_embedder(onnx_settings, {"embedding": DEFAULT_MODEL_NAME}) is get_embedder()
        # a version built before identities were recorded holds PyTorch vectors
        assert build_embedder(onnx_settings, {"run_id": "r"}) is get_embedder()

    def test_models_dir_defaults_under_rag_home(self, tmp_path: Path) -> None:
        settings = Settings(home=tmp_path)
        assert settings.embedding_backend == "auto"  # int8 ONNX on CPU, torch with CUDA
        assert settings.resolved_models_dir == tmp_path / "models"


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

    def test_a_tenant_generation_block_routes_over_its_models_or_the_platform_endpoint(
        self,
    ) -> None:
        platform = Settings(
            llm_base_url="http://127.0.0.1:9/v1", llm_model="m", llm_api_key="sk", llm_max_retries=2
        )
        routed = build_answerer(platform, get_embedder(), generation=GenerationConfig())
        assert isinstance(routed, RoutedAnswerer) and routed.mode == "llm"
        (route,) = routed.routes
        assert (route.name, route.answerer.api_key, route.max_retries) == ("m", "sk", 2)
        own = GenerationConfig(
            models=[
                ModelRoute(name="a", base_url="http://127.0.0.1:9", model="x"),
                ModelRoute(name="b", base_url="http://127.0.0.1:9", model="y", timeout_seconds=3),
            ],
            breaker=BreakerConfig(fail_max=5),
        )
        mine = build_answerer(platform, get_embedder(), generation=own)
        assert isinstance(mine, RoutedAnswerer)
        assert [(r.name, r.answerer.model, r.answerer.api_key) for r in mine.routes] == [
            ("a", "x", None),  # the platform's key is not sent to a tenant's own endpoints
            ("b", "y", None),
        ]
        assert mine.routes[1].answerer._client.timeout.read == 3
        assert {r.breaker.fail_max for r in mine.routes} == {5}
        nothing = Settings(llm_base_url=None, llm_model=None)
        plain = build_answerer(nothing, get_embedder(), generation=GenerationConfig())
        assert isinstance(plain, ExtractiveAnswerer)
        routed.close()
        mine.close()

    def test_embedding_token_counter_counts_word_pieces(self) -> None:
        count = embedding_token_counter()
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
