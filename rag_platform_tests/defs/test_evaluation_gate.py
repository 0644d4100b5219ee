"""Golden-set evaluation gates publishing: a deliberately bad configuration (32-token chunks) is
built, fails the blocking ``evaluation_gate`` check, is not published, and the API keeps serving
the previous version. ``rag-platform eval`` evaluates the published version on demand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from rag_platform.cli import app as cli_app
from rag_platform.lib.store import MetadataStore
from rag_platform.runner import materialize_tenant
from rag_platform_tests.conftest import SCIFACT, scifact_tenant
from serving.main import create_app


def _tenant(**chunking: int) -> dict:
    return scifact_tenant(
        "gated",
        limit=200,
        golden_set={"path": str(SCIFACT), "format": "beir", "split": "train"},
        evaluation={"thresholds": {"ndcg@10": 0.4}, "max_regression": 0.05},
        chunking=chunking or {"max_tokens": 200, "overlap_tokens": 32},
    )


class TestEvaluationGate:
    @pytest.mark.slow  # ~50 s: two real materializations of a SciFact subset
    def test_bad_chunking_is_not_published(self, rag_home, write_tenants) -> None:
        write_tenants(_tenant())
        good = materialize_tenant("gated", rag_home)
        assert good.success and good.published, good.failed_checks
        evaluation = good.metadata["index_evaluation"]
        assert evaluation["questions"] >= 25  # train queries judged on these 200 abstracts
        assert evaluation["ndcg_at_10"] > 0.5
        report = Path(str(evaluation["report"]))
        assert report.exists() and "nDCG" in report.read_text()

        write_tenants(_tenant(max_tokens=32, overlap_tokens=4))
        bad = materialize_tenant("gated", rag_home)
        assert not bad.success
        assert bad.failed_checks == ["evaluation_gate"]
        assert bad.index_version != good.index_version
        assert bad.metadata["index_evaluation"]["ndcg_at_10"] < evaluation["ndcg_at_10"] - 0.05
        assert "published_index" not in bad.metadata

        store = MetadataStore.from_settings(rag_home)
        published = store.get_published_version("gated")
        assert published.version == good.index_version
        # `grounding.min_score: auto`: the evaluation stage calibrated the refusal threshold on
        # the golden questions and stored it with the version the API reads it from
        grounding = published.details["grounding"]
        assert grounding["signal"] == "dense_cosine"
        assert grounding["questions"] == evaluation["questions"]
        assert 0.2 < grounding["min_score"] < 0.9
        rejected = store.get_version("gated", bad.index_version)
        assert rejected is not None and rejected.status == "rejected"
        [failed] = rejected.failed_checks
        assert failed["name"] == "evaluation_gate" and "ndcg@10" in " ".join(failed["reasons"])
        # the good version's receipt: every source document indexed, nothing else
        receipt = store.get_receipt("gated")
        assert receipt is not None and receipt.passed
        assert (receipt.documents, receipt.documents_missing, receipt.orphans) == (200, 0, 0)
        _, key = store.create_api_key("gated", ["all"])
        store.dispose()
        with TestClient(create_app(rag_home)) as client:
            r = client.post(
                "/v1/search",
                headers={"Authorization": f"Bearer {key}"},
                json={"query": "vitamin D and bone density", "top_k": 3},
            )
            assert r.status_code == 200
            assert r.json()["index_version"] == good.index_version
            asked = {
                q: client.post(
                    "/v1/query", headers={"Authorization": f"Bearer {key}"}, json={"query": q}
                ).json()
                for q in (
                    "Does vitamin D supplementation reduce the risk of fractures?",
                    "Which team won the 1998 football world cup final in Paris?",
                )
            }
            on_topic, off_topic = asked.values()
            assert on_topic["grounded"] is True and on_topic["citations"]
            assert on_topic["relevance"] >= grounding["min_score"]
            assert off_topic["grounded"] is False and off_topic["citations"] == []
            assert off_topic["relevance"] < grounding["min_score"]

        # The rejected build cannot be rolled back to from the CLI either; the versions list
        # and the receipt are one JSON line each.
        cli = CliRunner()
        refused = cli.invoke(
            cli_app, ["index", "rollback", "--tenant", "gated", "--version", bad.index_version]
        )
        assert refused.exit_code == 2 and "version_rejected" in refused.output
        listed = [
            json.loads(x)
            for x in cli.invoke(cli_app, ["index", "list", "--tenant", "gated"]).stdout.splitlines()
        ]
        assert {v["version"]: v["status"] for v in listed} == {
            bad.index_version: "rejected",
            good.index_version: "published",
        }
        shown = cli.invoke(cli_app, ["index", "receipt", "--tenant", "gated"])
        assert shown.exit_code == 0, shown.output
        last = json.loads(shown.stdout.splitlines()[-1])
        assert last["version"] == good.index_version
        assert {k: last[k] for k in ("documents_missing", "orphans", "acl_mismatches")} == {
            "documents_missing": 0,
            "orphans": 0,
            "acl_mismatches": 0,
        }
        assert last["documents"] == 200 and last["chunks"] == good.chunks

        # On-demand evaluation of the published (good) version.
        result = CliRunner().invoke(cli_app, ["eval", "--tenant", "gated", "--k", "10"])
        assert result.exit_code == 0, result.output
        line = [x for x in result.stdout.splitlines() if x.strip()][-1]
        metrics = json.loads(line)
        assert {"ndcg@10", "recall@100", "mrr", "queries"} <= set(metrics)
        assert metrics["version"] == good.index_version
        assert abs(metrics["ndcg@10"] - evaluation["ndcg_at_10"]) < 1e-6
