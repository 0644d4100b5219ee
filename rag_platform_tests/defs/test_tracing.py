"""Every asset materialization is a span: real Dagster runs of the real assets, exported over
OTLP/HTTP to a receiver on loopback, and in memory."""

from __future__ import annotations

import uuid

import dagster as dg
import pytest
from opentelemetry.trace import StatusCode

from rag_platform.defs.partitions import TENANTS
from rag_platform.defs.tracing import materialization_span, run_trace_context
from rag_platform.lib import tracing
from rag_platform.runner import PIPELINE_JOB, dagster_instance, load_definitions, materialize_tenant
from rag_platform_tests.conftest import scifact_tenant
from rag_platform_tests.utils.tracing import OtlpReceiver, by_name, exporting_to, recorded_spans


def test_a_run_continues_its_traceparent_tag_or_takes_its_run_id_as_trace_id() -> None:
    run_id = str(uuid.uuid4())
    ctx = run_trace_context(run_id, {})
    from opentelemetry import trace

    parent = trace.get_current_span(ctx).get_span_context()
    assert f"{parent.trace_id:032x}" == run_id.replace("-", "")
    tag = f"00-{'ab' * 16}-{'cd' * 8}-01"
    parent = trace.get_current_span(run_trace_context(run_id, {"traceparent": tag}))
    assert f"{parent.get_span_context().trace_id:032x}" == "ab" * 16
    bad = trace.get_current_span(run_trace_context(run_id, {"traceparent": "garbage"}))
    assert f"{bad.get_span_context().trace_id:032x}" == run_id.replace("-", "")


def test_source_documents_materialization_is_exported_over_otlp_http(
    rag_home, write_tenants, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tenants(scifact_tenant("sci", limit=7))
    instance = dagster_instance(rag_home)
    instance.add_dynamic_partitions(TENANTS, ["sci"])
    job = load_definitions().resolve_job_def(PIPELINE_JOB)
    with OtlpReceiver() as receiver, exporting_to(receiver, monkeypatch, "rag-pipeline-test"):
        result = job.execute_in_process(
            partition_key="sci",
            instance=instance,
            asset_selection=[dg.AssetKey("source_documents")],
        )
        assert result.success
        got = receiver.wait_for(lambda s: any(x.name == "materialize source_documents" for x in s))
    (span,) = [s for s in got if s.name == "materialize source_documents"]
    assert span.service_name == "rag-pipeline-test"
    assert span.trace_id == result.run_id.replace("-", "")
    assert span.attributes["rag.tenant"] == "sci"
    assert span.attributes["dagster.run_id"] == result.run_id
    assert span.attributes["dagster.asset_key"] == "source_documents"
    assert span.attributes["dagster.job_name"] == PIPELINE_JOB
    assert span.attributes["rag.metadata.documents"] == 7
    assert span.attributes["rag.metadata.added"] == 7
    assert span.attributes["rag.metadata.deleted"] == 0
    assert span.status_code != 2  # STATUS_CODE_ERROR


def test_a_failing_materialization_is_an_error_span() -> None:
    @dg.asset
    @materialization_span
    def broken(context) -> dg.Output[int]:  # type: ignore[no-untyped-def]
        raise RuntimeError("the source is gone")

    @dg.asset
    @materialization_span
    def fine(context) -> dg.Output[int]:  # type: ignore[no-untyped-def]
        return dg.Output(3, metadata={"rows": 3, "ratio": 0.5, "note": "text", "flag": True})

    with recorded_spans() as spans:
        ok = dg.materialize([fine])
        failed = dg.materialize([broken], raise_on_error=False)
    assert ok.success and not failed.success
    (good,) = by_name(spans.get_finished_spans(), "materialize fine")
    assert good.attributes["rag.metadata.rows"] == 3
    assert good.attributes["rag.metadata.ratio"] == 0.5
    assert "rag.metadata.note" not in good.attributes
    assert "rag.metadata.flag" not in good.attributes
    assert tracing.trace_id_of(good) == ok.run_id.replace("-", "")
    (bad,) = by_name(spans.get_finished_spans(), "materialize broken")
    assert bad.status.status_code == StatusCode.ERROR
    assert [e.name for e in bad.events] == ["exception"]
    assert "the source is gone" in bad.events[0].attributes["exception.message"]


@pytest.mark.slow
def test_every_asset_of_a_tenant_run_is_a_span_of_one_trace(rag_home, write_tenants) -> None:
    write_tenants(scifact_tenant("sci", limit=5))
    with recorded_spans() as spans:
        summary = materialize_tenant("sci", rag_home)
    assert summary.success and summary.published
    mine = [s for s in spans.get_finished_spans() if s.name.startswith("materialize ")]
    assert {s.name.removeprefix("materialize ") for s in mine} >= {
        "source_documents",
        "parsed_documents",
        "masked_documents",
        "chunks",
        "chunk_embeddings",
        "search_index",
        "index_evaluation",
        "published_index",
    }
    assert {tracing.trace_id_of(s) for s in mine} == {summary.run_id.replace("-", "")}
    assert {s.attributes["rag.tenant"] for s in mine} == {"sci"}
    (chunks,) = by_name(mine, "materialize chunks")
    assert chunks.attributes["rag.metadata.chunks"] == summary.chunks > 0
