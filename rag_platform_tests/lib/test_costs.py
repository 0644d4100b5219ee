"""Cost rollups priced by the price table (defaults and YAML overrides)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_platform.lib.costs import BYTES_PER_GB, USAGE_KINDS, PriceTable, rollup_costs
from rag_platform.settings import Settings


def line(rollup: dict, kind: str) -> dict:
    return next(x for x in rollup["lines"] if x["kind"] == kind)


class TestPriceTable:
    def test_yaml_overrides_defaults(self, tmp_path: Path) -> None:
        path = tmp_path / "prices.yaml"
        path.write_text("compute_per_second: 0.001\nstorage_per_gb_month: 0.3\n")
        prices = PriceTable.from_yaml(path)
        assert prices.compute_per_second == 0.001 and prices.storage_per_gb_month == 0.3
        assert prices.embedding_per_1k_tokens == PriceTable().embedding_per_1k_tokens

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("compute_per_secnd: 1\n", "compute_per_secnd"),
            ("compute_per_second: -1\n", "compute_per_second"),
            ("- 1\n- 2\n", "mapping"),
        ],
    )
    def test_bad_yaml_is_refused(self, tmp_path: Path, text: str, message: str) -> None:
        path = tmp_path / "prices.yaml"
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            PriceTable.from_yaml(path)

    def test_load_looks_in_rag_home(self, rag_home: Settings) -> None:
        assert PriceTable.load(rag_home.home) == PriceTable()
        (rag_home.home / "prices.yaml").write_text("llm_prompt_per_1k_tokens: 0.0025\n")
        assert PriceTable.load(rag_home.home).llm_prompt_per_1k_tokens == 0.0025
        with pytest.raises(FileNotFoundError):
            PriceTable.from_yaml(rag_home.home / "missing.yaml")


class TestRollupCosts:
    def test_hand_computed_lines_and_total(self) -> None:
        prices = PriceTable(
            embedding_per_1k_tokens=0.0001,
            compute_per_second=0.01,
            storage_per_gb_month=0.3,
            llm_prompt_per_1k_tokens=0.002,
            llm_completion_per_1k_tokens=0.006,
        )
        usage = {
            "embedding_tokens": 2_000_000,
            "compute_seconds": 120,
            "storage_bytes": 5 * BYTES_PER_GB,
            "llm_prompt_tokens": 10_000,
            "llm_completion_tokens": 500,
        }
        rollup = rollup_costs(usage, prices)
        # 2,000 k tokens x 0.0001 = 0.20; 120 s x 0.01 = 1.20; 5 GB-days x 0.3/30 = 0.05;
        # 10 k x 0.002 = 0.02; 0.5 k x 0.006 = 0.003
        assert line(rollup, "embedding_tokens")["cost_usd"] == pytest.approx(0.20)
        assert line(rollup, "compute_seconds")["cost_usd"] == pytest.approx(1.20)
        storage = line(rollup, "storage_bytes")
        assert storage["quantity"] == pytest.approx(5.0) and storage["unit"] == "GB-day"
        assert storage["unit_price_usd"] == pytest.approx(0.01)
        assert storage["cost_usd"] == pytest.approx(0.05)
        assert line(rollup, "llm_completion_tokens")["cost_usd"] == pytest.approx(0.003)
        assert rollup["total_usd"] == pytest.approx(0.20 + 1.20 + 0.05 + 0.02 + 0.003)
        assert rollup["currency"] == "USD"

    def test_missing_kinds_count_zero(self) -> None:
        rollup = rollup_costs({"compute_seconds": 3600, "queries": 250}, PriceTable())
        assert [x["kind"] for x in rollup["lines"]] == list(USAGE_KINDS)
        assert line(rollup, "queries")["quantity"] == pytest.approx(0.25)  # no per-query fee
        assert rollup["total_usd"] == pytest.approx(0.048)  # one vCPU-hour at the default
        assert line(rollup, "embedding_tokens")["cost_usd"] == 0.0

    def test_bad_usage_is_refused(self) -> None:
        with pytest.raises(ValueError, match="unknown usage kind"):
            rollup_costs({"gpu_seconds": 1.0}, PriceTable())
        with pytest.raises(ValueError, match="compute_seconds"):
            rollup_costs({"compute_seconds": -5.0}, PriceTable())
