"""Online experiments of retrieval settings: deterministic assignment and the per-variant
report.

Assignment: a principal (API key id) of a tenant with an enabled ``experiment`` gets the
variant whose cumulative share interval holds ``u = int(sha256("tenant:experiment:key_id")[:16],
16) / 2**64`` (uniform in [0, 1)). The same principal always gets the same variant of one
experiment, and a new experiment id reshuffles everyone. Each query-log row records the
``experiment`` and ``variant`` it ran under.

Report (:func:`experiment_report`): the query log of the experiment joined with the feedback,
per variant: queries, rated queries and mean rating (a query's mean rating), refusal rate (an
answer without any citation: nothing retrieved supported it) and latency (mean, p50, p95).
Significance, with scipy.stats: ratings and latencies by the two-sided Mann-Whitney U test
(two variants; Kruskal-Wallis H for more), refusals by Pearson's chi-square test of
independence on the variant x refused table (``chi2_contingency``, Yates-corrected for 2x2).
A difference is called significant when p < ``alpha`` (0.05); a test needs at least 2
observations per variant (else its p-value is null and the reason is given).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from rag_platform.lib.store import MetadataStore, QueryLogEntry
from rag_platform.lib.tenants import RetrievalSettings, TenantConfig

#: Significance level of the report's tests.
ALPHA = 0.05
#: Endpoints whose rows have an answer (a refusal is possible).
ANSWER_ENDPOINTS = ("query", "conversation")


@dataclass(frozen=True)
class Assignment:
    """The variant a principal runs under.

    Attributes:
        experiment: the experiment's id (``""`` outside an experiment).
        variant: the variant's name (``""`` outside an experiment).
        retrieval: the retrieval settings to use.
    """

    experiment: str
    variant: str
    retrieval: RetrievalSettings


def bucket(tenant: str, experiment: str, principal: str) -> float:
    """The principal's point in [0, 1): the first 64 bits of SHA-256 of
    ``tenant:experiment:principal`` over 2**64."""
    digest = hashlib.sha256(f"{tenant}:{experiment}:{principal}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(tenant: TenantConfig | None, principal: str, default: RetrievalSettings) -> Assignment:
    """The variant of ``principal`` in the tenant's experiment, or the tenant's settings.

    Args:
        tenant: the tenant's configuration; None for a tenant not in the registry.
        principal: the API key id.
        default: the settings outside an experiment (the tenant's ``retrieval``).
    """
    exp = tenant.experiment if tenant is not None else None
    if exp is None or not exp.enabled or tenant is None:
        return Assignment("", "", default)
    u = bucket(tenant.id, exp.id, principal)
    upper = 0.0
    chosen = exp.variants[-1]
    for v in exp.variants:
        upper += v.share
        if u < upper:
            chosen = v
            break
    return Assignment(exp.id, chosen.name, tenant.variant_retrieval(chosen.name))


def is_refusal(entry: QueryLogEntry) -> bool:
    """Whether a logged answer is a refusal: answered (200) with no citation at all."""
    return entry.status_code == 200 and not entry.cited_chunk_ids


def _p(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _test_groups(groups: dict[str, list[float]], what: str) -> dict[str, Any]:
    from scipy import stats

    named = {k: v for k, v in groups.items()}
    small = [k for k, v in named.items() if len(v) < 2]
    name = "mann-whitney-u" if len(named) == 2 else "kruskal-wallis-h"
    if len(named) < 2 or small:
        return {
            "test": name,
            "statistic": None,
            "p_value": None,
            "significant": False,
            "note": f"too few {what} in {small or 'variants'} (need 2 per variant)",
        }
    samples = list(named.values())
    if all(len(set(s)) == 1 for s in samples) and len({s[0] for s in samples}) == 1:
        return {
            "test": name,
            "statistic": None,
            "p_value": 1.0,
            "significant": False,
            "note": "all values equal",
        }
    if len(samples) == 2:
        res = stats.mannwhitneyu(samples[0], samples[1], alternative="two-sided")
    else:
        res = stats.kruskal(*samples)
    p = float(res.pvalue)
    return {
        "test": name,
        "statistic": round(float(res.statistic), 4),
        "p_value": round(p, 6),
        "significant": bool(p < ALPHA),
    }


def _test_refusals(counts: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """``counts``: variant -> (refused, answered)."""
    from scipy import stats

    table = [[r, n - r] for r, n in counts.values()]
    out: dict[str, Any] = {"test": "chi-square", "statistic": None, "p_value": None}
    if len(table) < 2 or any(n < 2 for _, n in counts.values()):
        return {**out, "significant": False, "note": "too few answers (need 2 per variant)"}
    column_totals = [sum(row[i] for row in table) for i in (0, 1)]
    if 0 in column_totals:
        return {**out, "p_value": 1.0, "significant": False, "note": "no variation in refusals"}
    res = stats.chi2_contingency(table)
    p = float(res.pvalue)
    return {
        **out,
        "statistic": round(float(res.statistic), 4),
        "p_value": round(p, 6),
        "significant": bool(p < ALPHA),
    }


def experiment_report(
    store: MetadataStore,
    tenant: TenantConfig,
    experiment: str | None = None,
    since: datetime | None = None,
) -> dict[str, Any]:
    """Per-variant outcomes of an experiment and whether they differ significantly.

    Args:
        store: the metadata store.
        tenant: the tenant.
        experiment: the experiment id; default the tenant's configured experiment.
        since: only queries at or after this time.

    Returns:
        ``{"tenant", "experiment", "alpha", "variants": {name: {queries, rated, mean_rating,
        answers, refusals, refusal_rate, latency_ms_mean, latency_ms_p50, latency_ms_p95}},
        "tests": {"rating", "refusal_rate", "latency"}, "significant"}``; ``significant`` names
        the measures whose difference is significant.

    Raises:
        ValueError: no experiment given and none configured.
    """
    exp_id = experiment or (tenant.experiment.id if tenant.experiment else None)
    if not exp_id:
        raise ValueError(f"tenant {tenant.id!r} has no experiment; give --experiment")
    rows = [q for q in store.list_queries(tenant.id, since=since) if q.experiment == exp_id]
    ratings: dict[str, list[int]] = {}
    for f in store.list_feedback(tenant.id):
        ratings.setdefault(f.query_id, []).append(f.rating)
    names = [v.name for v in tenant.experiment.variants] if tenant.experiment else []
    names += sorted({q.variant for q in rows} - set(names))
    per: dict[str, dict[str, list[Any]]] = {
        n: {"ratings": [], "latency": [], "refused": []} for n in names
    }
    for q in rows:
        bucket_ = per[q.variant]
        if q.query_id in ratings:
            bucket_["ratings"].append(float(np.mean(ratings[q.query_id])))
        if q.status_code == 200:
            bucket_["latency"].append(q.latency_ms)
        if q.endpoint in ANSWER_ENDPOINTS:
            bucket_["refused"].append(is_refusal(q))
    variants: dict[str, dict[str, Any]] = {}
    for n, b in per.items():
        queries = sum(1 for q in rows if q.variant == n)
        answers, refusals = len(b["refused"]), sum(b["refused"])
        variants[n] = {
            "queries": queries,
            "rated": len(b["ratings"]),
            "mean_rating": round(float(np.mean(b["ratings"])), 4) if b["ratings"] else None,
            "answers": answers,
            "refusals": refusals,
            "refusal_rate": round(refusals / answers, 4) if answers else None,
            "latency_ms_mean": round(float(np.mean(b["latency"])), 3) if b["latency"] else None,
            "latency_ms_p50": _p(b["latency"], 50),
            "latency_ms_p95": _p(b["latency"], 95),
        }
    active = [n for n in names if variants[n]["queries"]] or names
    tests = {
        "rating": _test_groups({n: per[n]["ratings"] for n in active}, "ratings"),
        "refusal_rate": _test_refusals(
            {n: (sum(per[n]["refused"]), len(per[n]["refused"])) for n in active}
        ),
        "latency": _test_groups({n: per[n]["latency"] for n in active}, "latencies"),
    }
    for t in tests.values():
        if t["p_value"] is not None and math.isnan(t["p_value"]):
            t["p_value"], t["significant"] = None, False
    return {
        "tenant": tenant.id,
        "experiment": exp_id,
        "alpha": ALPHA,
        "queries": len(rows),
        "variants": variants,
        "tests": tests,
        "significant": [k for k, t in tests.items() if t["significant"]],
    }
