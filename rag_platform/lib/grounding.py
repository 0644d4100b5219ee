"""Grounding: refuse a question the documents cannot answer, from a calibrated relevance threshold.

The *relevance* of a retrieval is the dense cosine similarity of the question and the best
chunk the principal may see (:attr:`rag_platform.lib.retrieval.RetrievalResult.relevance`). It
does not depend on the tenant's fusion: RRF scores are rank-derived (``1/(k+rank)``), DBSF
scores are normalised per query, and neither says whether the best hit is any good; a cosine
of one fixed embedding model does. A retrieval whose relevance is below the tenant's
``grounding.min_score`` is answered by :data:`REFUSAL_TEXT` with ``grounded: false``, the
answerer not called.

The threshold is calibrated on the golden set (every golden question is answerable): the
evaluation records the ``auto_quantile`` quantile of the golden questions' relevance on the new
index version (:func:`calibrate_min_score`), so at most that share of answerable questions like
the golden ones is refused; a tenant's ``min_score: auto`` uses the published version's value.
Refusal precision and recall (:func:`refusal_scores`) are measured on questions whose gold
passage was removed from the corpus (README, "Grounding and refusal").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rag_platform.lib.models import Answer
from rag_platform.lib.tenants import GroundingSettings

#: The answer of a refused question.
REFUSAL_TEXT = "Not found in the documents: no retrieved passage answers this question."

#: Why a question was refused.
RefusalReason = Literal["no_hits", "low_relevance", "injection"]


@dataclass(frozen=True)
class GroundingDecision:
    """Whether a question is answered from its hits.

    Attributes:
        grounded: False when the question is refused.
        relevance: the retrieval's relevance (dense cosine of the best visible chunk); None
            when nothing was retrieved or it was not measured.
        min_score: the threshold applied (None: no threshold).
        reason: why it was refused (None when grounded).
    """

    grounded: bool
    relevance: float | None
    min_score: float | None
    reason: RefusalReason | None = None


def resolve_min_score(
    settings: GroundingSettings, version_details: Mapping[str, Any] | None
) -> float | None:
    """The threshold for a tenant: its ``min_score``, or with ``"auto"`` the calibrated
    ``details["grounding"]["min_score"]`` of the published version (None when not calibrated)."""
    if settings.min_score != "auto":
        return settings.min_score
    calibrated = ((version_details or {}).get("grounding") or {}).get("min_score")
    return float(calibrated) if isinstance(calibrated, int | float) else None


def decide(
    has_hits: bool,
    relevance: float | None,
    min_score: float | None,
    injection_refused: bool = False,
) -> GroundingDecision:
    """The refusal decision for one retrieval.

    Args:
        has_hits: whether any chunk is visible to the principal.
        relevance: the retrieval's relevance (None: not measured, never refused for it).
        min_score: the threshold (None: none).
        injection_refused: the question itself was flagged and the tenant refuses such.

    Returns:
        The :class:`GroundingDecision`.
    """
    if injection_refused:
        return GroundingDecision(False, relevance, min_score, "injection")
    if not has_hits:
        return GroundingDecision(False, relevance, min_score, "no_hits")
    if min_score is not None and relevance is not None and relevance < min_score:
        return GroundingDecision(False, relevance, min_score, "low_relevance")
    return GroundingDecision(True, relevance, min_score)


def refusal(mode: str) -> Answer:
    """The refusal answer (no citations, no tokens) in the answerer's ``mode``."""
    return Answer(text=REFUSAL_TEXT, citations=[], mode=mode)


def calibrate_min_score(relevances: Sequence[float], quantile: float) -> float | None:
    """The threshold that refuses the ``quantile`` share of answerable questions.

    Args:
        relevances: the relevance of each golden (answerable) question.
        quantile: share of them allowed below the threshold, in [0, 0.5].

    Returns:
        The ``quantile`` quantile of ``relevances`` (linear interpolation, numpy's default),
        rounded to 4 decimals; None without finite values.

    Raises:
        ValueError: ``quantile`` outside [0, 0.5].
    """
    if not 0.0 <= quantile <= 0.5:
        raise ValueError("quantile must be between 0 and 0.5")
    values = [float(v) for v in relevances if v is not None and math.isfinite(v)]
    if not values:
        return None
    return round(float(np.quantile(np.asarray(values), quantile)), 4)


@dataclass(frozen=True)
class RefusalScores:
    """Refusal precision and recall with unanswerable questions as the positive class.

    Attributes:
        precision: refused unanswerable / refused (1.0 when nothing was refused).
        recall: refused unanswerable / unanswerable (0.0 without unanswerable questions).
        refused: questions refused.
        unanswerable: unanswerable questions.
        questions: all questions.
    """

    precision: float
    recall: float
    refused: int
    unanswerable: int
    questions: int


def refusal_scores(refused: Sequence[bool], unanswerable: Sequence[bool]) -> RefusalScores:
    """Precision and recall of ``refused`` against the truth ``unanswerable`` (same order).

    Raises:
        ValueError: the sequences differ in length.
    """
    if len(refused) != len(unanswerable):
        raise ValueError("refused and unanswerable must have the same length")
    tp = sum(1 for r, u in zip(refused, unanswerable, strict=True) if r and u)
    n_refused = sum(1 for r in refused if r)
    n_unanswerable = sum(1 for u in unanswerable if u)
    return RefusalScores(
        precision=tp / n_refused if n_refused else 1.0,
        recall=tp / n_unanswerable if n_unanswerable else 0.0,
        refused=n_refused,
        unanswerable=n_unanswerable,
        questions=len(refused),
    )
