"""The publishing gate: thresholds and regression against the published version."""

from __future__ import annotations

import math

import pytest

from rag_platform.lib.evaluation.gate import check_gate

PUBLISHED = {"ndcg@10": 0.72, "recall@100": 0.95, "mrr": 0.68}


class TestCheckGate:
    def test_passes_when_at_least_as_good(self) -> None:
        new = {"ndcg@10": 0.73, "recall@100": 0.95, "mrr": 0.67, "recall@10": 0.85}
        result = check_gate(new, {"ndcg@10": 0.6, "recall@10": 0.8}, 0.02, PUBLISHED, "v7")
        assert result.passed and result.reasons == []
        assert result.compared_to == "v7"
        assert result.deltas["ndcg@10"] == pytest.approx(0.01)
        assert result.deltas["mrr"] == pytest.approx(-0.01)

    def test_fails_below_threshold_naming_metric_value_and_limit(self) -> None:
        result = check_gate(
            {"ndcg@10": 0.55, "recall@100": 0.9, "mrr": 0.5}, {"ndcg@10": 0.6}, 0.02, None, None
        )
        assert not result.passed
        assert result.reasons == ["ndcg@10 = 0.5500 is below the threshold 0.6000"]
        assert result.compared_to is None and result.deltas == {}

    def test_fails_on_regression_beyond_max(self) -> None:
        new = {"ndcg@10": 0.69, "recall@100": 0.95, "mrr": 0.66}
        result = check_gate(new, {}, 0.02, PUBLISHED, "v7")
        assert not result.passed
        assert len(result.reasons) == 1
        reason = result.reasons[0]
        assert reason.startswith("ndcg@10 = 0.6900 dropped 0.0300 below v7 (0.7200)")
        assert "0.0200" in reason
        # mrr dropped exactly the allowed 0.02: that passes
        assert result.deltas["mrr"] == pytest.approx(-0.02)

    def test_missing_or_nan_metrics_fail_closed(self) -> None:
        result = check_gate(
            {"ndcg@10": math.nan, "mrr": 0.7},
            {"ndcg@10": 0.5, "recal@10": 0.5},
            0.02,
            PUBLISHED,
            "v7",
        )
        assert not result.passed
        assert "ndcg@10: missing from the evaluation (threshold 0.5000)" in result.reasons
        assert "recal@10: missing from the evaluation (threshold 0.5000)" in result.reasons
        assert any(r.startswith("recall@100: missing") for r in result.reasons)

    def test_published_summary_without_a_metric_is_not_compared(self) -> None:
        result = check_gate(
            {"ndcg@10": 0.7, "recall@100": 0.5, "mrr": 0.7}, {}, 0.02, {"ndcg@10": 0.7}, "v1"
        )
        assert result.passed and set(result.deltas) == {"ndcg@10"}

    def test_negative_max_regression_is_refused(self) -> None:
        with pytest.raises(ValueError, match="max_regression"):
            check_gate({}, {}, -0.1, None, None)
