"""The cost preview's pieces: measured stage rates and their file, and the planner's counts from
the real stage caches (parse, mask, chunk components run on a small SciFact subset)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag_platform.lib.costs import PriceTable
from rag_platform.lib.ingestion.chunk import DocumentChunker
from rag_platform.lib.ingestion.mask import DocumentMasker
from rag_platform.lib.ingestion.parse import DocumentParser
from rag_platform.lib.ingestion.sync import SourceSync
from rag_platform.lib.plan import (
    DEFAULT_RATES,
    IngestPlanner,
    StageRates,
    measured_rates,
)
from rag_platform.lib.tenants import TenantConfig
from rag_platform_tests.conftest import scifact_tenant


class TestStageRates:
    def test_defaults_then_measured_then_merged(self, tmp_path: Path) -> None:
        rates = StageRates(tmp_path)
        assert rates.rates_for("a") == DEFAULT_RATES and rates.questions_for("a") is None
        rates.record("a", {"parse": 40.0, "embed": 30.0}, questions=12)
        rates.record("a", {"embed": 20.0, "mask": 0.0})  # a stage with no work keeps its rate
        got = rates.rates_for("a")
        assert got["parse"] == 40.0 and got["embed"] == 20.0
        assert got["mask"] == DEFAULT_RATES["mask"] and rates.questions_for("a") == 12
        # another tenant without runs takes the last shared rate of any tenant
        assert rates.rates_for("b")["embed"] == 20.0
        rates.record("tiny", {"embed": 0.2}, shared={})  # too few items to share
        assert rates.rates_for("tiny")["embed"] == 0.2 and rates.rates_for("b")["embed"] == 20.0

    def test_unreadable_file_means_defaults(self, tmp_path: Path) -> None:
        (tmp_path / "stage_rates.json").write_text("{not json")
        assert StageRates(tmp_path).rates_for("a") == DEFAULT_RATES

    def test_measured_rates_from_run_metadata(self) -> None:
        metadata = {
            "parsed_documents": {"processed": 10, "seconds": 2.0},
            "masked_documents": {"processed": 0, "seconds": 0.1},  # nothing done: no rate
            "chunk_embeddings": {"embedded": 300, "seconds": 10.0},
            "search_index": {"chunks": 300, "seconds": 0.0, "reused": True},
            "index_evaluation": {"questions": 64, "seconds": 32.0, "reused": True},
        }
        assert measured_rates(metadata) == {"parse": 5.0, "embed": 30.0}
        assert measured_rates(metadata, min_items=20) == {"embed": 30.0}


def _tenant(limit: int) -> TenantConfig:
    return TenantConfig.model_validate(scifact_tenant("sci", limit=limit))


def _ingest(state: Path, tenant: TenantConfig) -> int:
    """Runs sync, parse, mask and chunk (no embedding); returns the chunks."""
    sources = SourceSync(state).run(tenant).frame
    parsed = DocumentParser(state).run(sources).frame
    masked = DocumentMasker(state, tenant.pii).run(parsed).frame
    return len(DocumentChunker(state, tenant.chunking).run(masked).frame)


def _planner(state: Path, questions: int = 0) -> IngestPlanner:
    return IngestPlanner(state, "m", DEFAULT_RATES, PriceTable(), questions=questions)


class TestIngestPlanner:
    def test_counts_follow_the_caches(self, tmp_path: Path) -> None:
        state = tmp_path / "state"
        fresh = _planner(state, questions=10).run(_tenant(12))
        assert (fresh.documents, fresh.to_parse, fresh.to_mask, fresh.to_chunk) == (12, 12, 12, 12)
        assert fresh.to_embed == fresh.to_embed_estimated > 0
        assert set(fresh.seconds_by_stage) == {
            "parse",
            "mask",
            "chunk",
            "embed",
            "index",
            "evaluate",
        }
        assert fresh.estimated_seconds == pytest.approx(sum(fresh.seconds_by_stage.values()))
        assert not state.exists()  # the planner wrote nothing

        chunks = _ingest(state, _tenant(12))
        after = _planner(state).run(_tenant(12))
        assert (after.to_parse, after.to_mask, after.to_chunk) == (0, 0, 0)
        assert after.to_embed == chunks and after.to_embed_estimated == 0  # exact: not embedded
        prices = PriceTable()
        expected = after.embedding_tokens / 1000 * prices.embedding_per_1k_tokens
        expected += after.estimated_seconds * prices.compute_per_second
        assert after.estimated_cost == pytest.approx(expected)

        grown = _planner(state).run(_tenant(15))  # three more abstracts
        assert (grown.to_parse, grown.to_mask, grown.to_chunk) == (3, 3, 3)
        assert grown.to_embed == chunks + grown.to_embed_estimated

        # another PII policy: every document is masked (and so chunked) again, none parsed
        changed = TenantConfig.model_validate(
            {**scifact_tenant("sci", limit=12), "pii": {"ner": False, "entities": ["US_SSN"]}}
        )
        plan = _planner(state).run(changed)
        assert (plan.to_parse, plan.to_mask, plan.to_chunk) == (0, 12, 12)
        assert json.dumps(plan.as_json())  # JSON-ready
