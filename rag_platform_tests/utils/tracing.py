"""Tracing test helpers: the SDK's in-memory exporter, and a real OTLP/HTTP receiver on loopback.

``OtlpReceiver`` is a tiny ``http.server`` that accepts ``POST /v1/traces`` with a protobuf
``ExportTraceServiceRequest`` (the OTLP/HTTP binary encoding), decodes it with
``opentelemetry-proto`` and keeps the spans, answering ``ExportTraceServiceResponse`` as a
collector does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rag_platform.lib import tracing


@contextmanager
def recorded_spans() -> Iterator[InMemorySpanExporter]:
    """Installs a tracer provider that keeps every ended span in memory (restored after)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = tracing.install_provider(provider)
    try:
        yield exporter
    finally:
        tracing.install_provider(previous)
        provider.shutdown()


def by_name(spans: Any, name: str) -> list[ReadableSpan]:
    """The spans called ``name``."""
    return [s for s in spans if s.name == name]


@dataclass
class ReceivedSpan:
    """One span as the receiver decoded it (ids as hex, attributes as Python values)."""

    service_name: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    status_code: int
    attributes: dict[str, Any]


def _value(v: Any) -> Any:
    field = v.WhichOneof("value")
    if field == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, field) if field else None


class OtlpReceiver:
    """An OTLP/HTTP (protobuf) trace receiver on ``127.0.0.1``; use it as a context manager.

    Attributes:
        endpoint: the base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces`` is the path).
        requests: how many export requests arrived.
    """

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._cond = threading.Condition()
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces" or (
                    self.headers.get("Content-Type") != "application/x-protobuf"
                ):
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._add(request)
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _add(self, request: ExportTraceServiceRequest) -> None:
        spans: list[ReceivedSpan] = []
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(
                        ReceivedSpan(
                            service_name=str(resource.get("service.name", "")),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            kind=s.kind,
                            status_code=s.status.code,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                        )
                    )
        with self._cond:
            self.requests += 1
            self._spans.extend(spans)
            self._cond.notify_all()

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self._cond:
            return list(self._spans)

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0
    ) -> list[ReceivedSpan]:
        """Waits until ``predicate(spans)`` holds; returns the spans (raises on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted({s.name for s in self._spans})
                    raise TimeoutError(f"spans received so far: {names}")
                self._cond.wait(left)
            return list(self._spans)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def exporting_to(receiver: OtlpReceiver, monkeypatch: Any, service: str) -> Iterator[None]:
    """Sets ``OTEL_EXPORTER_OTLP_ENDPOINT``/``OTEL_SERVICE_NAME`` to the receiver and lets the
    next ``configure_tracing`` build the process's provider from them (restored after)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", service)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    previous = tracing.install_provider(None)
    try:
        yield
    finally:
        current = tracing.install_provider(previous)
        if current is not None:
            current.shutdown()
