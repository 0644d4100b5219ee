"""Golden-set evaluation of an index version: retrieval metrics (trec_eval), answer metrics (ragas),
reports (HTML / Markdown / JSON with plots) and the publishing gate.

Importing this package is cheap: pytrec_eval, ragas, matplotlib and Jinja2 load on first use.
"""

from rag_platform.lib.evaluation.gate import REGRESSION_METRICS, GateResult, check_gate
from rag_platform.lib.evaluation.golden import (
    GoldenQuestion,
    GoldenSet,
    load_golden_set,
    resolve_relevance,
)
from rag_platform.lib.evaluation.metrics import RetrievalEvaluation, evaluate_retrieval
from rag_platform.lib.evaluation.report import ReportPaths, load_history, write_report

__all__ = [
    "REGRESSION_METRICS",
    "GateResult",
    "GoldenQuestion",
    "GoldenSet",
    "ReportPaths",
    "RetrievalEvaluation",
    "check_gate",
    "evaluate_retrieval",
    "load_golden_set",
    "load_history",
    "resolve_relevance",
    "write_report",
]
