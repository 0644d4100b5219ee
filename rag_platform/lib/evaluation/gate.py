"""The publishing gate: may a new index version replace the published one?

A version passes when every thresholded metric reaches its absolute minimum and none of the
regression metrics (nDCG@10, recall@100, MRR) dropped by more than ``max_regression`` (absolute)
against the published version's summary. The reasons name metric, value and limit, so a failed
Dagster asset check tells an ML team why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Metrics compared with the published version.
REGRESSION_METRICS = ("ndcg@10", "recall@100", "mrr")


@dataclass
class GateResult:
    """The gate's verdict.

    Attributes:
        passed: True when no threshold and no regression rule failed.
        reasons: one line per failed rule (empty when passed).
        compared_to: the published version compared with, or None (first version).
        deltas: regression metric → new minus published value (only metrics both have).
    """

    passed: bool
    reasons: list[str]
    compared_to: str | None
    deltas: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "compared_to": self.compared_to,
            "deltas": dict(self.deltas),
        }


def check_gate(
    summary: Mapping[str, float],
    thresholds: Mapping[str, float],
    max_regression: float,
    published: Mapping[str, float] | None,
    published_version: str | None,
) -> GateResult:
    """Decide whether the evaluated version may be published.

    Args:
        summary: the new version's metric summary (``ndcg@10``, ``recall@100``, ``mrr``...).
        thresholds: metric → minimum value; a thresholded metric missing from ``summary`` (or
            NaN) fails, since a misspelt threshold must not pass silently.
        max_regression: largest allowed absolute drop of a regression metric (e.g. 0.02).
        published: the published version's summary, or None when nothing is published yet.
        published_version: the published version's id, for the reasons and ``compared_to``.

    Returns:
        A :class:`GateResult`.

    Raises:
        ValueError: ``max_regression`` is negative or NaN.
    """
    if math.isnan(max_regression) or max_regression < 0:
        raise ValueError(f"max_regression must be >= 0, got {max_regression}")
    reasons: list[str] = []
    for metric, minimum in sorted(thresholds.items()):
        value = _value(summary, metric)
        if value is None:
            reasons.append(f"{metric}: missing from the evaluation (threshold {minimum:.4f})")
        elif value < minimum:
            reasons.append(f"{metric} = {value:.4f} is below the threshold {minimum:.4f}")

    deltas: dict[str, float] = {}
    if published is not None:
        label = published_version or "the published version"
        for metric in REGRESSION_METRICS:
            before = _value(published, metric)
            if before is None:
                continue  # an older report without this metric: nothing to compare
            value = _value(summary, metric)
            if value is None:
                reasons.append(f"{metric}: missing from the evaluation ({label} has {before:.4f})")
                continue
            deltas[metric] = value - before
            # The small epsilon keeps a drop of exactly max_regression (in decimal) passing.
            if before - value > max_regression + 1e-12:
                reasons.append(
                    f"{metric} = {value:.4f} dropped {before - value:.4f} below {label} "
                    f"({before:.4f}); the largest drop allowed is {max_regression:.4f}"
                )
    return GateResult(
        passed=not reasons,
        reasons=reasons,
        compared_to=published_version if published is not None else None,
        deltas=deltas,
    )


def _value(summary: Mapping[str, float], metric: str) -> float | None:
    value = summary.get(metric)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value
