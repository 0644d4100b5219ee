"""Evaluation reports: files, plots, the worst questions, comparison with the published version,
and the history the next run reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rag_platform.lib.evaluation.gate import check_gate
from rag_platform.lib.evaluation.golden import GoldenQuestion, GoldenSet
from rag_platform.lib.evaluation.metrics import evaluate_retrieval
from rag_platform.lib.evaluation.report import load_history, mark_published, write_report
from rag_platform.lib.models import Hit, make_doc_id

DOCS = {n: make_doc_id("t", "src", n) for n in ("alpha", "beta", "gamma", "delta")}
WORST_QUESTION = "Which filing reports the delta segment?"


def evaluation() -> dict[str, Any]:
    golden = GoldenSet(
        [
            GoldenQuestion("good", "What is alpha?", {DOCS["alpha"]: 1}, question_type="lookup"),
            GoldenQuestion("fair", "What about beta?", {DOCS["beta"]: 1}, question_type="lookup"),
            GoldenQuestion("bad", WORST_QUESTION, {DOCS["delta"]: 1}, question_type="multi"),
        ],
        "hand",
        doc_titles={d: f"{n.title()} 10-Q" for n, d in DOCS.items()},
    )
    order = {
        "What is alpha?": ["alpha", "gamma"],
        "What about beta?": ["gamma", "beta"],
        WORST_QUESTION: ["gamma", "alpha"],  # delta never retrieved
    }

    def retrieve(question: str, k: int) -> list[Hit]:
        return [
            Hit(
                chunk_id=f"{n}-0",
                doc_id=DOCS[n],
                tenant="t",
                text=n,
                score=1 - i / 10,
                title=f"{n.title()} 10-Q",
            )
            for i, n in enumerate(order[question])
        ]

    result = evaluate_retrieval(golden, retrieve)
    answers = {
        "summary": {"answer_similarity": 0.71, "context_recall": 0.5},
        "per_question": [
            {
                "qid": "good",
                "question": "What is alpha?",
                "answer": "Alpha is <b>first</b> [1].",
                "context_precision": 1.0,
                "context_recall": 1.0,
                "answer_similarity": 0.9,
                "faithfulness": None,
                "answer_relevancy": None,
                "error": None,
            },
        ],
        "sample_size": 1,
        "population": 3,
        "llm_judged": False,
        "llm_model": None,
        "embedding_model": "all-MiniLM-L6-v2",
        "notes": ["reference answer used as context"],
    }
    return {**result.to_dict(), "answers": answers, "golden_set": golden.name}


HISTORY: list[dict[str, Any]] = [
    {
        "version": "v1",
        "time": "2026-11-01T00:00:00+00:00",
        "published": False,
        "summary": {"ndcg@10": 0.55, "recall@100": 0.60, "mrr": 0.50},
    },
    {
        "version": "v2",
        "time": "2026-11-02T00:00:00+00:00",
        "published": True,
        "summary": {"ndcg@10": 0.80, "recall@100": 0.90, "mrr": 0.75},
        "answers_summary": {"answer_similarity": 0.70},
    },
]


class TestWriteReport:
    def test_files_plots_and_content(self, tmp_path: Path) -> None:
        ev = evaluation()
        gate = check_gate(ev["summary"], {"ndcg@10": 0.5}, 0.02, HISTORY[1]["summary"], "v2")
        ev["gate"] = gate.to_dict()
        paths = write_report("acme", "v3", ev, HISTORY, tmp_path / "v3")

        assert len(paths.plots) == 3
        for plot in paths.plots:
            assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert plot.stat().st_size > 5_000
        html = paths.html.read_text()
        assert WORST_QUESTION in html
        assert html.count("data:image/png;base64,") == 3
        assert "&lt;b&gt;first&lt;/b&gt;" in html  # answers are escaped, not rendered
        assert "FAILED" in html and "not in top 100" in html

        md = paths.markdown.read_text()
        assert "published `v2`" in md and "**Gate: FAILED**" in md
        worst_section = md.split("## Worst")[1]
        first_row = worst_section.splitlines()[4]
        assert WORST_QUESTION in first_row
        assert "Delta 10-Q" in first_row and "Gamma 10-Q" in first_row
        # nDCG@10 here is (1 + 1/log2(3)) / 3 = 0.5436 against 0.80 published: a drop, marked
        ndcg_row = next(line for line in md.splitlines() if line.startswith("| ndcg@10 |"))
        assert "| 0.5436 | 0.8000 | -0.2564 ▼ |" in ndcg_row
        assert "| answer_similarity | 0.7100 | 0.7000 | +0.0100 |" in md
        assert "| multi | 1 |" in md

        record = json.loads(paths.json.read_text())
        assert record["version"] == "v3" and record["compared_to"] == "v2"
        assert record["summary"]["ndcg@10"] == pytest.approx(ev["summary"]["ndcg@10"])
        assert len(record["per_question"]) == 3 and record["gate"]["passed"] is False

    def test_first_report_without_history_and_nested_shape(self, tmp_path: Path) -> None:
        ev = evaluation()
        nested = {
            "summary": ev["summary"],
            "retrieval": {k: v for k, v in ev.items() if k != "answers"},
        }
        paths = write_report("acme", "v1", nested, [], tmp_path / "v1")
        md = paths.markdown.read_text()
        assert "| baseline |" in md and WORST_QUESTION in md
        assert "Answer metrics" not in md
        assert all(p.exists() for p in paths.plots)

    def test_summary_required(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="summary"):
            write_report("acme", "v1", {"per_question": []}, [], tmp_path)


class TestLoadHistory:
    def test_reads_earlier_reports_oldest_first(self, tmp_path: Path) -> None:
        tenant_dir = tmp_path / "acme"
        ev = evaluation()
        write_report(
            "acme", "v2", ev, [], tenant_dir / "v2", created_at=datetime(2026, 11, 2, tzinfo=UTC)
        )
        write_report(
            "acme", "v1", ev, [], tenant_dir / "v1", created_at=datetime(2026, 11, 1, tzinfo=UTC)
        )
        mark_published(tenant_dir / "v1")
        (tenant_dir / "broken").mkdir()
        (tenant_dir / "broken" / "report.json").write_text("{not json")

        history = load_history(tenant_dir)
        assert [h["version"] for h in history] == ["v1", "v2"]
        assert [h["published"] for h in history] == [True, False]
        assert history[0]["summary"]["ndcg@10"] == pytest.approx(ev["summary"]["ndcg@10"])
        assert history[0]["answers_summary"] == {"answer_similarity": 0.71, "context_recall": 0.5}
        assert load_history(tmp_path / "nobody") == []

        # the next report compares with the published v1, not the newer v2
        paths = write_report("acme", "v3", ev, history, tenant_dir / "v3")
        assert json.loads(paths.json.read_text())["compared_to"] == "v1"
        assert "published `v1`" in paths.markdown.read_text()

    def test_reads_a_report_written_straight_into_the_tenant_folder(self, tmp_path: Path) -> None:
        write_report("acme", "v1", evaluation(), [], tmp_path)
        assert [h["version"] for h in load_history(tmp_path)] == ["v1"]
