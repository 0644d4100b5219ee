"""The refusal decision, the threshold calibration and the refusal metrics."""

from __future__ import annotations

import pytest

from rag_platform.lib.grounding import (
    REFUSAL_TEXT,
    calibrate_min_score,
    decide,
    refusal,
    refusal_scores,
    resolve_min_score,
)
from rag_platform.lib.tenants import GroundingSettings


def test_decide_refuses_below_the_threshold_and_without_hits() -> None:
    assert decide(True, 0.62, 0.4).grounded
    low = decide(True, 0.31, 0.4)
    assert (low.grounded, low.reason, low.relevance, low.min_score) == (
        False,
        "low_relevance",
        0.31,
        0.4,
    )
    assert decide(False, None, 0.4).reason == "no_hits"
    assert decide(True, 0.1, None).grounded  # no threshold: never refused for relevance
    assert decide(True, None, 0.4).grounded  # relevance not measured: not refused for it
    assert decide(True, 0.9, 0.4, injection_refused=True).reason == "injection"


def test_refusal_answer_has_no_citations() -> None:
    answer = refusal("llm")
    assert (answer.text, answer.citations, answer.mode) == (REFUSAL_TEXT, [], "llm")
    assert "not found in the documents" in REFUSAL_TEXT.lower()


def test_calibration_takes_the_quantile_of_the_answerable_relevances() -> None:
    relevances = [i / 100 for i in range(1, 101)]  # 0.01 .. 1.00
    threshold = calibrate_min_score(relevances, 0.05)
    assert threshold is not None and threshold == pytest.approx(0.0595)
    refused = sum(1 for r in relevances if r < threshold)
    assert refused == 5  # the quantile's share of answerable questions is refused
    assert calibrate_min_score([], 0.05) is None
    assert calibrate_min_score([float("nan"), 0.5], 0.0) == 0.5
    with pytest.raises(ValueError):
        calibrate_min_score(relevances, 0.9)


def test_resolve_min_score_auto_reads_the_version_details() -> None:
    auto = GroundingSettings()
    assert auto.min_score == "auto"
    assert resolve_min_score(auto, {"grounding": {"min_score": 0.42}}) == 0.42
    assert resolve_min_score(auto, {}) is None
    assert resolve_min_score(auto, None) is None
    fixed = GroundingSettings(min_score=0.3)
    assert resolve_min_score(fixed, {"grounding": {"min_score": 0.42}}) == 0.3
    assert (
        resolve_min_score(GroundingSettings(min_score=None), {"grounding": {"min_score": 1}})
        is None
    )
    with pytest.raises(ValueError):
        GroundingSettings(min_score=1.5)


def test_refusal_scores_count_unanswerable_as_positive() -> None:
    refused = [True, True, False, False, True]
    unanswerable = [True, False, True, False, True]
    s = refusal_scores(refused, unanswerable)
    assert (s.precision, s.recall) == pytest.approx((2 / 3, 2 / 3))
    assert (s.refused, s.unanswerable, s.questions) == (3, 3, 5)
    none = refusal_scores([False, False], [True, False])
    assert (none.precision, none.recall) == (1.0, 0.0)
    with pytest.raises(ValueError):
        refusal_scores([True], [True, False])
