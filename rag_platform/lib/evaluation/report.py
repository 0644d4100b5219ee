"""Evaluation reports: HTML and Markdown with plots, and a JSON record the next run compares with.

One report per (tenant, index version), written to its own folder (by convention
``Settings.reports_dir / <tenant> / <version>``):

- ``report.json``: everything (summary, per-question values, answers, gate); the next run reads
  the folder's siblings with :func:`load_history` to draw the run-over-run plot and compare.
- ``report.md``: headline table, comparison with the published (or previous) version, the worst
  10 questions with what was retrieved against what was expected. Short enough for Dagster's
  ``MetadataValue.md``.
- ``report.html``: the same and more, self-contained (PNG plots embedded as base64).
- PNG plots (matplotlib, Agg backend): metrics per version over time, metrics per question type,
  distribution of per-question nDCG@10.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Metrics of the headline table, in order (those present in the summary are shown).
HEADLINE = (
    "ndcg@10",
    "recall@10",
    "recall@100",
    "mrr",
    "precision@10",
    "map@100",
    "latency_p50_ms",
    "latency_p95_ms",
)
#: Metrics drawn run over run.
TREND_METRICS = ("ndcg@10", "recall@100", "mrr")
#: Answer metrics shown when the evaluation has them.
ANSWER_METRICS = (
    "context_precision",
    "context_recall",
    "answer_similarity",
    "faithfulness",
    "answer_relevancy",
)
REPORT_JSON = "report.json"
WORST_N = 10

_TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class ReportPaths:
    """Files of one written report."""

    html: Path
    markdown: Path
    json: Path
    plots: list[Path]


def write_report(
    tenant: str,
    version: str,
    evaluation: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    out_dir: Path,
    *,
    published_version: str | None = None,
    created_at: datetime | None = None,
) -> ReportPaths:
    """Write the report of one index version.

    Args:
        tenant: the tenant id.
        version: the evaluated index version.
        evaluation: ``summary`` (metric → value) and ``per_question`` (as
            :class:`~rag_platform.lib.evaluation.metrics.RetrievalEvaluation` gives them; or
            nested as ``retrieval``: ``RetrievalEvaluation.to_dict()``), and optionally
            ``by_question_type``, ``skipped``, ``golden_set`` (name), ``answers`` (the dict of
            :func:`~rag_platform.lib.evaluation.answers.evaluate_answers`), ``gate``
            (``GateResult.to_dict()``) and ``published_version``.
        history: earlier versions, each with ``version``, ``time`` (ISO 8601) and ``summary``,
            optionally ``published`` (bool); as :func:`load_history` returns them.
        out_dir: the folder to write into (created if missing).
        published_version: the version to compare with; default ``evaluation
            ["published_version"]``, else the gate's ``compared_to``,
            else the latest history entry marked published, else the latest earlier entry.
        created_at: timestamp of this evaluation (default now, UTC).

    Returns:
        The written files.

    Raises:
        ValueError: ``evaluation`` has no ``summary`` mapping.
    """
    summary = evaluation.get("summary")
    if not isinstance(summary, Mapping):
        raise ValueError("evaluation needs a 'summary' mapping of metric values")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    created = (created_at or datetime.now(UTC)).isoformat()
    # Retrieval details at the top level, or nested under "retrieval" (RetrievalEvaluation.to_dict)
    nested = evaluation.get("retrieval")
    retrieval: Mapping[str, Any] = nested if isinstance(nested, Mapping) else {}
    per_question = list(evaluation.get("per_question") or retrieval.get("per_question") or [])
    by_type = dict(evaluation.get("by_question_type") or retrieval.get("by_question_type") or {})
    skipped = list(evaluation.get("skipped") or retrieval.get("skipped") or [])
    answers = evaluation.get("answers") or None
    gate = evaluation.get("gate") or None
    published_version = published_version or evaluation.get("published_version")
    earlier = sorted(
        (
            h
            for h in history
            if h.get("version") != version and isinstance(h.get("summary"), Mapping)
        ),
        key=lambda h: str(h.get("time") or ""),
    )
    baseline = _pick_baseline(earlier, published_version or (gate or {}).get("compared_to"))

    plots = [
        _plot_trend(earlier, version, created, summary, out_dir / "metrics_over_versions.png"),
        _plot_by_type(by_type, summary, out_dir / "by_question_type.png"),
        _plot_distribution(per_question, out_dir / "ndcg_distribution.png"),
    ]
    worst = sorted(
        per_question,
        key=lambda q: (q["metrics"].get("ndcg@10", 0.0), q["metrics"].get("recall@100", 0.0)),
    )[:WORST_N]
    headline = _headline_rows(summary, baseline)
    answer_rows = _answer_rows(answers, baseline)
    context = {
        "tenant": tenant,
        "version": version,
        "created_at": created,
        "golden_set": evaluation.get("golden_set") or "",
        "questions": len(per_question),
        "skipped": len(skipped),
        "gate": gate,
        "baseline": baseline,
        "headline": headline,
        "answer_rows": answer_rows,
        "answers": answers,
        "by_type": by_type,
        "type_metrics": [m for m in ("ndcg@10", "recall@10", "recall@100", "mrr") if m in summary],
        "worst": worst,
        "per_question": sorted(per_question, key=lambda q: q["metrics"].get("ndcg@10", 0.0)),
        "plots": [
            {"title": title, "name": p.name, "b64": base64.b64encode(p.read_bytes()).decode()}
            for title, p in zip(
                (
                    "Metrics per version",
                    "Metrics per question type",
                    "Distribution of per-question nDCG@10",
                ),
                plots,
                strict=True,
            )
        ],
    }

    html_path = out_dir / "report.html"
    html_path.write_text(_render_html(context), encoding="utf-8")
    md_path = out_dir / "report.md"
    md_path.write_text(render_markdown(context), encoding="utf-8")
    json_path = out_dir / REPORT_JSON
    record = {
        "tenant": tenant,
        "version": version,
        "time": created,
        "golden_set": context["golden_set"],
        "summary": dict(summary),
        "by_question_type": by_type,
        "per_question": per_question,
        "skipped": skipped,
        "answers": answers,
        "gate": gate,
        "compared_to": baseline["version"] if baseline else None,
        "published": False,
        "history_versions": [h.get("version") for h in earlier],
    }
    json_path.write_text(json.dumps(_jsonable(record), indent=1), encoding="utf-8")
    return ReportPaths(html=html_path, markdown=md_path, json=json_path, plots=plots)


def load_history(reports_dir_for_tenant: Path) -> list[dict[str, Any]]:
    """The summaries of earlier reports of one tenant, oldest first.

    Reads every ``<reports_dir_for_tenant>/*/report.json`` (one folder per version, the layout
    :func:`write_report` expects) and a ``report.json`` directly in the folder, if any; an
    unreadable or malformed file is logged and skipped, a missing folder gives an empty list.

    Returns:
        ``[{"version", "time", "summary", "answers_summary", "published", "gate"}, ...]``
        sorted by ``time``.
    """
    folder = Path(reports_dir_for_tenant)
    if not folder.is_dir():
        return []
    entries: list[dict[str, Any]] = []
    candidates = [folder / REPORT_JSON] if (folder / REPORT_JSON).exists() else []
    for path in [*candidates, *folder.glob(f"*/{REPORT_JSON}")]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("summary"), dict):
                raise ValueError("no summary")
        except (OSError, ValueError) as exc:
            logger.warning("skipping unreadable evaluation report %s: %s", path, exc)
            continue
        answers = data.get("answers") or {}
        entries.append(
            {
                "version": str(data.get("version") or path.parent.name),
                "time": str(data.get("time") or ""),
                "summary": {k: v for k, v in data["summary"].items() if v is not None},
                "answers_summary": dict(answers.get("summary") or {}),
                "published": bool(data.get("published", False)),
                "gate": data.get("gate"),
            }
        )
    return sorted(entries, key=lambda e: e["time"])


def mark_published(report_dir: Path) -> None:
    """Record in a report's JSON that its version was published (history then compares with it).

    Raises:
        FileNotFoundError: the folder holds no ``report.json``.
    """
    path = Path(report_dir) / REPORT_JSON
    data = json.loads(path.read_text(encoding="utf-8"))
    data["published"] = True
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


# Rendering ---------------------------------------------------------------------------------


def render_markdown(context: Mapping[str, Any]) -> str:
    """The Markdown report (for Dagster ``MetadataValue.md``) from the report context."""
    lines = [f"# Evaluation of `{context['tenant']}` index version `{context['version']}`", ""]
    lines.append(
        f"Golden set **{context['golden_set'] or 'n/a'}**: {context['questions']} judged "
        f"questions ({context['skipped']} without relevant documents skipped); "
        f"{context['created_at']}."
    )
    gate = context.get("gate")
    if gate:
        verdict = "PASSED" if gate.get("passed") else "FAILED"
        lines += [
            "",
            f"**Gate: {verdict}**"
            + (f" (compared with `{gate['compared_to']}`)" if gate.get("compared_to") else ""),
        ]
        lines += [f"- {_md(r)}" for r in gate.get("reasons") or []]
    baseline = context.get("baseline")
    base_label = f"{baseline['label']} `{baseline['version']}`" if baseline else "baseline"
    lines += [
        "",
        "## Headline",
        "",
        f"| metric | this version | {base_label} | change |",
        "|---|---:|---:|---:|",
    ]
    for row in list(context["headline"]) + list(context["answer_rows"]):
        lines.append(f"| {row['metric']} | {row['value']} | {row['baseline']} | {row['delta']} |")
    answers = context.get("answers")
    if answers:
        lines += [
            "",
            f"Answer metrics on a sample of {answers.get('sample_size')} of "
            f"{answers.get('population')} questions (ragas; LLM-judged: "
            f"{'yes' if answers.get('llm_judged') else 'no'}).",
        ]
        lines += [f"- {_md(n)}" for n in answers.get("notes") or []]
    if context["by_type"]:
        metrics = context["type_metrics"]
        lines += [
            "",
            "## By question type",
            "",
            "| type | questions | " + " | ".join(metrics) + " |",
            "|---|---:|" + "---:|" * len(metrics),
        ]
        for qtype, values in context["by_type"].items():
            cells = " | ".join(_fmt(values.get(m)) for m in metrics)
            lines.append(f"| {_md(qtype)} | {int(values.get('questions', 0))} | {cells} |")
    lines += [
        "",
        f"## Worst {len(context['worst'])} questions (by nDCG@10)",
        "",
        "| # | question | nDCG@10 | recall@100 | first relevant | retrieved (top 3) | expected |",
        "|---:|---|---:|---:|---:|---|---|",
    ]
    for i, q in enumerate(context["worst"], start=1):
        retrieved = (
            "; ".join(
                ("✔ " if r.get("relevant") else "") + _short(r.get("title") or r["doc_id"], 40)
                for r in q.get("retrieved", [])[:3]
            )
            or "(nothing)"
        )
        expected = "; ".join(
            _short(e.get("title") or e["doc_id"], 40) + (f" @{e['rank']}" if e.get("rank") else "")
            for e in q.get("expected", [])[:3]
        )
        if len(q.get("expected", [])) > 3:
            expected += f"; +{len(q['expected']) - 3} more"
        lines.append(
            f"| {i} | {_md(_short(q['question'], 90))} | {_fmt(q['metrics'].get('ndcg@10'))} | "
            f"{_fmt(q['metrics'].get('recall@100'))} | {q.get('first_relevant_rank') or '—'} | "
            f"{_md(retrieved)} | {_md(expected)} |"
        )
    return "\n".join(lines) + "\n"


def _render_html(context: Mapping[str, Any]) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(_TEMPLATES)),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["short"] = _short
    return env.get_template("report.html.j2").render(**context)


# Comparison rows ---------------------------------------------------------------------------


def _pick_baseline(
    earlier: Sequence[Mapping[str, Any]], wanted: str | None
) -> dict[str, Any] | None:
    if not earlier:
        return None
    chosen: Mapping[str, Any] | None = None
    label = "published"
    if wanted:
        chosen = next((h for h in reversed(earlier) if h.get("version") == wanted), None)
    if chosen is None:
        chosen = next((h for h in reversed(earlier) if h.get("published")), None)
    if chosen is None:
        chosen, label = earlier[-1], "previous"
    return {
        "version": str(chosen.get("version")),
        "time": chosen.get("time"),
        "label": label,
        "summary": dict(chosen.get("summary") or {}),
        "answers_summary": dict(chosen.get("answers_summary") or {}),
    }


def _headline_rows(
    summary: Mapping[str, Any], baseline: Mapping[str, Any] | None
) -> list[dict[str, str]]:
    base = (baseline or {}).get("summary") or {}
    return [
        _row(m, summary.get(m), base.get(m), lower_is_better=m.startswith("latency"))
        for m in HEADLINE
        if m in summary
    ]


def _answer_rows(
    answers: Mapping[str, Any] | None, baseline: Mapping[str, Any] | None
) -> list[dict[str, str]]:
    if not answers:
        return []
    current = answers.get("summary") or {}
    base = (baseline or {}).get("answers_summary") or {}
    return [_row(m, current.get(m), base.get(m)) for m in ANSWER_METRICS if m in current]


def _row(metric: str, value: Any, before: Any, lower_is_better: bool = False) -> dict[str, str]:
    delta = ""
    if _finite(value) and _finite(before):
        d = float(value) - float(before)
        worse = d > 0 if lower_is_better else d < 0
        delta = f"{d:+.4f}" + (" ▼" if worse and abs(d) > 1e-9 else "")
    return {"metric": metric, "value": _fmt(value), "baseline": _fmt(before), "delta": delta}


# Plots -------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _plot_trend(
    earlier: Sequence[Mapping[str, Any]],
    version: str,
    created: str,
    summary: Mapping[str, Any],
    path: Path,
) -> Path:
    plt = _pyplot()
    points = [(str(h.get("version")), h.get("summary") or {}) for h in earlier]
    points.append((version, summary))
    labels = [v if len(v) <= 16 else v[:15] + "…" for v, _ in points]
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=100)
    xs = list(range(len(points)))
    for metric in TREND_METRICS:
        ys = [float(s[metric]) if _finite(s.get(metric)) else math.nan for _, s in points]
        ax.plot(xs, ys, marker="o", label=metric)
    ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("score")
    ax.set_title(f"Metrics per index version (latest {version}, {created[:10]})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_by_type(
    by_type: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any], path: Path
) -> Path:
    plt = _pyplot()
    groups = dict(by_type) if by_type else {"all questions": summary}
    metrics = [m for m in ("ndcg@10", "recall@10", "recall@100", "mrr") if m in summary]
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=100)
    width = 0.8 / max(len(metrics), 1)
    for i, metric in enumerate(metrics):
        ys = [float(v.get(metric, math.nan)) for v in groups.values()]
        ax.bar([x + i * width for x in range(len(groups))], ys, width=width, label=metric)
    names = [
        f"{g} (n={int(v['questions'])})" if "questions" in v and by_type else g
        for g, v in groups.items()
    ]
    ax.set_xticks(
        [x + width * (len(metrics) - 1) / 2 for x in range(len(groups))],
        [_short(n, 34) for n in names],
        fontsize=8,
    )
    ax.set_ylim(0.0, 1.15)  # headroom for the legend above the bars
    ax.set_title("Metrics per question type", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=len(metrics))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_distribution(per_question: Sequence[Mapping[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    values = [
        float(q["metrics"]["ndcg@10"])
        for q in per_question
        if _finite(q.get("metrics", {}).get("ndcg@10"))
    ]
    fig, ax = plt.subplots(figsize=(7.5, 3.2), dpi=100)
    ax.hist(values, bins=[i / 10 for i in range(11)], color="#4C72B0", edgecolor="white")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("nDCG@10 of a question")
    ax.set_ylabel("questions")
    ax.set_title(f"Distribution of per-question nDCG@10 ({len(values)} questions)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# Small helpers -----------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any) -> str:
    if not _finite(value):
        return "—"
    return f"{float(value):.1f}" if abs(float(value)) >= 10 else f"{float(value):.4f}"


def _short(text: Any, n: int) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _jsonable(value: Any) -> Any:
    """NaN and infinities become None so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, int | str | bool) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return str(value)
