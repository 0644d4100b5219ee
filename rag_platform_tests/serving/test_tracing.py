"""Tracing of the query API: spans per stage, the W3C trace context of the request, the trace id
in the JSON logs and the query log; export over OTLP/HTTP to a real receiver."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from rag_platform.lib import tracing
from rag_platform_tests.serving.conftest import TENANT_A, World, build_world
from rag_platform_tests.serving.factories import bearer
from rag_platform_tests.utils.tracing import OtlpReceiver, by_name, exporting_to, recorded_spans
from serving.main import create_app
from serving.observability import json_formatter, request_id_filter

STAGES = {"rag.cache.lookup", "rag.retrieval", "rag.embedding", "rag.index.search"}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recorded_spans() as exporter:
        yield exporter


def traceparent() -> tuple[str, str, str]:
    """A fresh sampled ``traceparent`` and its trace id and parent span id."""
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def query(client: TestClient, world: World, text: str, **extra: object) -> dict:
    headers = {**bearer(world.keys["a_reader"]), **extra.pop("headers", {})}  # type: ignore[dict-item]
    r = client.post("/v1/query", json={"query": text, "top_k": 3, **extra}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json() if not extra.get("stream") else {"text": r.text}


class TestQuerySpans:
    def test_the_request_continues_the_callers_trace_with_a_span_per_stage(
        self, client: TestClient, world: World, spans: InMemorySpanExporter
    ) -> None:
        header, trace_id, parent_id = traceparent()
        question = f"{world.docs[TENANT_A][3].title} {uuid.uuid4().hex[:6]}"  # never cached
        body = query(client, world, question, headers={"traceparent": header})
        got = spans.get_finished_spans()
        (server,) = by_name(got, "POST /v1/query")
        assert server.kind == SpanKind.SERVER
        assert tracing.trace_id_of(server) == trace_id
        assert server.parent is not None and server.parent.is_remote
        assert f"{server.parent.span_id:016x}" == parent_id
        assert server.attributes["http.route"] == "/v1/query"
        assert server.attributes["http.response.status_code"] == 200
        assert server.attributes["rag.tenant"] == TENANT_A
        assert server.attributes["rag.query_id"] == body["query_id"]
        names = {s.name for s in got if tracing.trace_id_of(s) == trace_id}
        assert STAGES | {"rag.generation"} <= names
        by_id = {s.context.span_id: s for s in got}
        for name, parent in [
            ("rag.cache.lookup", "POST /v1/query"),
            ("rag.retrieval", "POST /v1/query"),
            ("rag.embedding", "rag.retrieval"),
            ("rag.index.search", "rag.retrieval"),
            ("rag.generation", "POST /v1/query"),
        ]:
            (span,) = [s for s in by_name(got, name) if tracing.trace_id_of(s) == trace_id]
            assert span.parent is not None and by_id[span.parent.span_id].name == parent, name
        (lookup,) = by_name(got, "rag.cache.lookup")
        assert lookup.attributes["rag.cache.hit"] is False
        (retrieval,) = by_name(got, "rag.retrieval")
        assert retrieval.attributes["rag.hits"] == len(body["hits"]) > 0
        assert retrieval.attributes["rag.index_version"] == body["index_version"]
        (generation,) = by_name(got, "rag.generation")
        assert generation.attributes["rag.answer.mode"] == "extractive"
        assert generation.attributes["gen_ai.usage.input_tokens"] == 0
        assert generation.attributes["rag.citations"] == len(body["citations"])

    def test_the_trace_id_reaches_the_query_log_and_the_json_logs(
        self, client: TestClient, world: World, spans: InMemorySpanExporter
    ) -> None:
        header, trace_id, _ = traceparent()
        out = io.StringIO()
        handler = logging.StreamHandler(out)
        handler.setFormatter(json_formatter())
        handler.addFilter(request_id_filter())
        access = logging.getLogger("serving.access")
        access.addHandler(handler)
        try:
            body = query(
                client, world, "aspirin and heart attacks", headers={"traceparent": header}
            )
        finally:
            access.removeHandler(handler)
        assert client.app.state.serving.flush_query_log()  # type: ignore[attr-defined]
        row = world.store.get_query(body["query_id"])
        assert row is not None and row.trace_id == trace_id
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        (line,) = [x for x in lines if x.get("route") == "/v1/query"]
        assert line["trace_id"] == trace_id
        (server,) = by_name(spans.get_finished_spans(), "POST /v1/query")
        assert line["span_id"] == f"{server.context.span_id:016x}"

    def test_without_or_with_a_malformed_traceparent_a_new_trace_starts(
        self, client: TestClient, world: World, spans: InMemorySpanExporter
    ) -> None:
        query(client, world, "a first question")
        query(client, world, "a second question", headers={"traceparent": "00-zz-01"})
        servers = by_name(spans.get_finished_spans(), "POST /v1/query")
        assert len(servers) == 2
        assert all(s.parent is None for s in servers)
        ids = {tracing.trace_id_of(s) for s in servers}
        assert len(ids) == 2 and "" not in ids

    def test_a_cache_hit_has_no_retrieval_span(
        self, client: TestClient, world: World, spans: InMemorySpanExporter
    ) -> None:
        question = f"cached question {uuid.uuid4().hex[:6]}"
        query(client, world, question)
        spans.clear()
        assert query(client, world, question)["cached"] is True
        got = spans.get_finished_spans()
        (lookup,) = by_name(got, "rag.cache.lookup")
        assert lookup.attributes["rag.cache.hit"] is True
        assert not by_name(got, "rag.retrieval") and not by_name(got, "rag.generation")

    def test_a_stream_ends_its_generation_span_inside_the_server_span(
        self, client: TestClient, world: World, spans: InMemorySpanExporter
    ) -> None:
        header, trace_id, _ = traceparent()
        question = f"{world.docs[TENANT_A][5].title} {uuid.uuid4().hex[:6]}"
        text = query(client, world, question, stream=True, headers={"traceparent": header})["text"]
        assert "event: done" in text
        got = [s for s in spans.get_finished_spans() if tracing.trace_id_of(s) == trace_id]
        (server,) = by_name(got, "POST /v1/query")
        (generation,) = by_name(got, "rag.generation")
        assert generation.parent is not None
        assert generation.parent.span_id == server.context.span_id
        assert generation.end_time is not None and server.end_time is not None
        assert generation.end_time <= server.end_time
        assert generation.status.status_code != StatusCode.ERROR
        assert "rag.client_disconnected" not in generation.attributes

    def test_scrapes_and_liveness_probes_make_no_spans(
        self, client: TestClient, spans: InMemorySpanExporter
    ) -> None:
        assert client.get("/metrics").status_code == 200
        assert client.get("/health/live").status_code == 200
        assert spans.get_finished_spans() == ()

    def test_a_4xx_is_not_an_error_span(
        self, client: TestClient, spans: InMemorySpanExporter
    ) -> None:
        r = client.post("/v1/query", json={"query": "x"}, headers=bearer("not-a-key"))
        assert r.status_code == 401
        (server,) = by_name(spans.get_finished_spans(), "POST /v1/query")
        assert server.attributes["http.response.status_code"] == 401
        assert server.status.status_code != StatusCode.ERROR


class TestOtlpExport:
    def test_off_by_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            monkeypatch.delenv(name, raising=False)
        assert tracing.export_endpoint() is None
        provider = tracing.build_provider("rag-platform-api")
        assert provider._active_span_processor._span_processors == ()  # nothing exported

    def test_the_standard_variables_choose_the_endpoint(self) -> None:
        assert tracing.export_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == (
            "http://c:4318/v1/traces"
        )
        both = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:9999/traces",
        }
        assert tracing.export_endpoint(both) == "http://t:9999/traces"
        assert tracing.export_endpoint({**both, "OTEL_SDK_DISABLED": "true"}) is None
        assert tracing.export_endpoint({**both, "OTEL_TRACES_EXPORTER": "none"}) is None

    def test_api_requests_reach_a_real_otlp_http_receiver(
        self, fast_tmp: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        own = build_world(fast_tmp)  # its own shards: a shard opens in one app at a time
        header, trace_id, parent_id = traceparent()
        with OtlpReceiver() as receiver, exporting_to(receiver, monkeypatch, "rag-api-test"):
            with TestClient(create_app(own.settings)) as c:
                body = query(c, own, "aspirin", headers={"traceparent": header})
                assert tracing.flush()
            got = receiver.wait_for(
                lambda s: any(x.trace_id == trace_id and x.name == "POST /v1/query" for x in s)
            )
        own.store.dispose()
        mine = [s for s in got if s.trace_id == trace_id]
        assert {s.service_name for s in mine} == {"rag-api-test"}
        (server,) = [s for s in mine if s.name == "POST /v1/query"]
        assert server.parent_span_id == parent_id
        assert server.kind == 2  # SPAN_KIND_SERVER in the OTLP protobuf
        assert server.attributes["rag.query_id"] == body["query_id"]
        assert server.attributes["http.response.status_code"] == 200
        assert {s.name for s in mine} >= STAGES
        span_ids = {s.span_id for s in mine}
        assert all(s.parent_span_id in span_ids for s in mine if s is not server)
