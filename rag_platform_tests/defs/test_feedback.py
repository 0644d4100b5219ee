"""Feedback as data with real Dagster runs.

The default-suite test runs the ``tenant_feedback`` job (``golden_candidates``), a review with
the CLI, and a run of ``source_documents`` + ``golden_set`` holding the accepted candidate, on
a tenant with no index (no embedding model). The slow one goes end to end: a published tenant,
queries rated through the real API, candidates with the retrieved chunks' text, and the next
pipeline run's ``index_evaluation`` scoring the accepted candidate."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from rag_platform.cli import app as cli_app
from rag_platform.lib.models import make_doc_id
from rag_platform.lib.store import MetadataStore, QueryLogEntry
from rag_platform.runner import dagster_instance, load_definitions, materialize_tenant
from rag_platform.settings import Settings
from rag_platform_tests.conftest import TenantWriter, scifact_tenant
from serving.main import create_app

TENANT = "fb"


def test_candidates_job_review_and_golden_set_run(
    rag_home: Settings, write_tenants: TenantWriter
) -> None:
    write_tenants(scifact_tenant(TENANT, limit=30))
    store = MetadataStore.from_settings(rag_home)
    store.migrate()
    store.upsert_tenant(TENANT)
    low = QueryLogEntry(
        tenant=TENANT,
        key_id="aaaaaaaaaaaa",
        question_masked="q <EMAIL_ADDRESS>",
        hit_chunk_ids=["c1", "c2"],
        endpoint="query",
    )
    high = QueryLogEntry(tenant=TENANT, key_id="aaaaaaaaaaaa", question_masked="fine")
    store.log_queries([low, high])
    store.add_feedback(low.query_id, TENANT, "aaaaaaaaaaaa", 2, "answer", "missed it")
    store.add_feedback(low.query_id, TENANT, "bbbbbbbbbbbb", 4, "answer", "")
    store.add_feedback(high.query_id, TENANT, "aaaaaaaaaaaa", 3, "answer", "")

    instance = dagster_instance(rag_home)
    instance.add_dynamic_partitions("tenants", [TENANT])
    defs = load_definitions()
    run = defs.resolve_job_def("tenant_feedback").execute_in_process(
        partition_key=TENANT, instance=instance
    )
    assert run.success
    [mat] = run.asset_materializations_for_node("golden_candidates")
    assert {k: mat.metadata[k].value for k in ("low_rated", "added", "pending")} == {
        "low_rated": 1,  # the lowest rating counts: 2
        "added": 1,
        "pending": 1,
    }
    [candidate] = store.golden_candidates.find(TENANT)
    assert (candidate.question, candidate.rating) == ("q <EMAIL_ADDRESS>", 2)
    assert [c["chunk_id"] for c in candidate.retrieved] == ["c1", "c2"]

    relevant = make_doc_id(TENANT, "corpus", "4983")  # the first SciFact abstract
    accepted = CliRunner().invoke(
        cli_app,
        [
            "golden",
            "accept",
            "--tenant",
            TENANT,
            "--candidate",
            candidate.candidate_id,
            "--doc-id",
            relevant,
            "--doc-id",
            "00000000-0000-4000-8000-000000000000",
        ],
    )
    assert accepted.exit_code == 0, accepted.output
    result = defs.resolve_job_def("tenant_pipeline").execute_in_process(
        partition_key=TENANT,
        instance=instance,
        asset_selection=[dg.AssetKey("source_documents"), dg.AssetKey("golden_set")],
    )
    assert result.success
    golden = result.output_for_node("golden_set")
    [question] = golden["questions"]
    assert question["question"] == "q <EMAIL_ADDRESS>" and question["question_type"] == "feedback"
    # relevance to a document that is not in the sources is dropped
    assert question["relevant_doc_ids"] == {relevant: 1}
    [gmat] = result.asset_materializations_for_node("golden_set")
    assert gmat.metadata["from_feedback"].value == 1
    store.dispose()


@pytest.mark.slow
def test_low_rated_queries_become_golden_questions_of_the_next_gate(
    rag_home: Settings, write_tenants: TenantWriter
) -> None:
    write_tenants(scifact_tenant(TENANT, limit=30))
    first = materialize_tenant(TENANT, rag_home)
    assert first.success and first.published
    assert first.metadata["golden_set"]["questions"] == 0  # no golden set configured

    store = MetadataStore.from_settings(rag_home)
    _, key = store.create_api_key(TENANT, ["all"])
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(rag_home)) as api:
        bad = api.post(
            "/v1/query", json={"query": "vitamin D and bone density", "top_k": 3}, headers=auth
        )
        good = api.post("/v1/query", json={"query": "stem cells", "top_k": 3}, headers=auth)
        assert bad.status_code == good.status_code == 200
        for body, rating, comment in ((bad, 1, "wrong study"), (good, 5, "")):
            r = api.post(
                "/v1/feedback",
                json={"query_id": body.json()["query_id"], "rating": rating, "comment": comment},
                headers=auth,
            )
            assert r.status_code == 201, r.text
    bad_hits = [h["chunk_id"] for h in bad.json()["hits"]]

    instance = dagster_instance(rag_home)
    job = load_definitions().resolve_job_def("tenant_feedback")
    run = job.execute_in_process(partition_key=TENANT, instance=instance)
    assert run.success
    [materialization] = run.asset_materializations_for_node("golden_candidates")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert (meta["low_rated"], meta["added"], meta["pending"]) == (1, 1, 1)
    again = job.execute_in_process(partition_key=TENANT, instance=instance)
    [rerun] = again.asset_materializations_for_node("golden_candidates")
    assert rerun.metadata["added"].value == 0  # one candidate per query, ever

    cli = CliRunner()
    listed = cli.invoke(
        cli_app, ["golden", "candidates", "--tenant", TENANT, "--status", "pending"]
    )
    assert listed.exit_code == 0, listed.output
    [candidate] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert candidate["question"] == "vitamin D and bone density"
    assert (candidate["rating"], candidate["comment"]) == (1, "wrong study")
    assert [c["chunk_id"] for c in candidate["retrieved"]] == bad_hits
    assert all(c["doc_id"] and c["text"] for c in candidate["retrieved"])
    relevant = candidate["retrieved"][-1]["doc_id"]  # the reviewer picks the right document
    refused = cli.invoke(
        cli_app, ["golden", "accept", "--tenant", TENANT, "--candidate", candidate["candidate_id"]]
    )
    assert refused.exit_code == 2 and "needs relevant" in refused.output
    accepted = cli.invoke(
        cli_app,
        [
            "golden",
            "accept",
            "--tenant",
            TENANT,
            "--candidate",
            candidate["candidate_id"],
            "--doc-id",
            relevant,
        ],
    )
    assert accepted.exit_code == 0, accepted.output
    assert json.loads(accepted.stdout.splitlines()[-1])["status"] == "accepted"

    second = materialize_tenant(TENANT, rag_home)
    assert second.success, second.failed_checks
    golden = second.metadata["golden_set"]
    assert (golden["questions"], golden["from_feedback"]) == (1, 1)
    evaluation = second.metadata["index_evaluation"]
    assert evaluation["questions"] == 1 and not evaluation["reused"]  # scored, not reused
    assert 0.0 <= evaluation["recall_at_10"] <= 1.0
    store.dispose()
