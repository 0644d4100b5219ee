"""OpenTelemetry tracing for the API and the pipeline: one tracer provider per process.

Spans are always made (so every request and materialization has a trace id for the JSON logs
and the query log); they leave the process only when an OTLP endpoint is configured through the
standard environment variables of the OpenTelemetry specification:

- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as is, e.g. ``http://collector:4318/v1/traces``)
  or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces`` is appended): export over OTLP/HTTP
  (protobuf) with a ``BatchSpanProcessor``; ``OTEL_EXPORTER_OTLP_HEADERS``,
  ``OTEL_EXPORTER_OTLP_TIMEOUT`` and the ``OTEL_BSP_*`` variables are read by the SDK itself.
- ``OTEL_SERVICE_NAME``: the ``service.name`` resource attribute (default: the caller's name,
  ``rag-platform-api`` or ``rag-platform-pipeline``); ``OTEL_RESOURCE_ATTRIBUTES`` adds more.
- ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``: no export even with an endpoint.

Neither is set by default: nothing is exported. Span and attribute names follow the OpenTelemetry
semantic conventions where one exists (``http.*``, ``gen_ai.*``, ``server.address``); the
platform's own attributes are ``rag.*``. Sources: the OpenTelemetry Python SDK
(``opentelemetry.sdk.trace``) and the OTLP exporter specification
(https://opentelemetry.io/docs/specs/otel/protocol/exporter/).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

logger = logging.getLogger(__name__)

#: The instrumentation scope of every span this project makes.
TRACER_NAME = "rag_platform"
#: An attribute value OpenTelemetry accepts (sequences of one of these types too).
AttributeValue = str | bool | int | float

_lock = threading.Lock()
_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_propagator = TraceContextTextMapPropagator()


def export_endpoint(env: Mapping[str, str] | None = None) -> str | None:
    """The OTLP/HTTP traces URL the environment asks for, or None when export is off.

    Args:
        env: the environment; default ``os.environ``.
    """
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if traces:
        return traces
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return base.rstrip("/") + "/v1/traces" if base else None


def build_provider(service_name: str, env: Mapping[str, str] | None = None) -> TracerProvider:
    """A tracer provider with the service's resource and, when :func:`export_endpoint` gives
    one, a batching OTLP/HTTP exporter.

    Args:
        service_name: ``service.name`` unless ``OTEL_SERVICE_NAME`` is set.
        env: the environment; default ``os.environ``.
    """
    env = os.environ if env is None else env
    attributes: dict[str, AttributeValue] = {}
    if not env.get("OTEL_SERVICE_NAME", "").strip():
        attributes[SERVICE_NAME] = service_name
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES from os.environ.
    provider = TracerProvider(resource=Resource.create(attributes))
    endpoint = export_endpoint(env)
    if endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        logger.info("exporting traces over OTLP/HTTP", extra={"endpoint": endpoint})
    return provider


def install_provider(provider: TracerProvider | None) -> TracerProvider | None:
    """Makes ``provider`` the one this process's spans go to (None: the next
    :func:`configure_tracing` builds one from the environment); returns the previous one.

    The previous provider is not shut down (the caller owns it).
    """
    global _provider, _tracer
    with _lock:
        previous = _provider
        _provider = provider
        _tracer = provider.get_tracer(TRACER_NAME) if provider is not None else None
    return previous


def configure_tracing(service_name: str) -> TracerProvider:
    """The process's tracer provider, built from the environment on the first call
    (:func:`build_provider`); later calls return the same provider (idempotent)."""
    global _provider, _tracer
    with _lock:
        if _provider is None:
            _provider = build_provider(service_name)
            _tracer = _provider.get_tracer(TRACER_NAME)
        return _provider


def tracer() -> Tracer:
    """The project's tracer (configured with the pipeline's default name on first use)."""
    t = _tracer
    if t is None:
        configure_tracing("rag-platform")
        t = _tracer
    assert t is not None
    return t


def flush(timeout_millis: int = 5000) -> bool:
    """Exports the spans ended so far (a step process calls it before it exits).

    Returns:
        True when every span processor flushed within the timeout (or there is none).
    """
    provider = _provider
    return True if provider is None else provider.force_flush(timeout_millis)


def clean_attributes(attributes: Mapping[str, Any] | None) -> dict[str, AttributeValue]:
    """The attributes OpenTelemetry accepts: None values dropped, other non-primitive values
    as strings."""
    out: dict[str, AttributeValue] = {}
    for key, value in (attributes or {}).items():
        if value is None:
            continue
        out[key] = value if isinstance(value, str | bool | int | float) else str(value)
    return out


@contextmanager
def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: otel_context.Context | None = None,
) -> Iterator[Span]:
    """A span, current for the ``with`` block, ended at its end.

    An exception leaving the block is recorded on the span (an ``exception`` event, status
    ERROR) and re-raised.

    Args:
        name: the span name, e.g. ``rag.retrieval``.
        attributes: initial attributes (see :func:`clean_attributes`).
        kind: the span kind.
        parent: the parent context; default the current one.
    """
    with tracer().start_as_current_span(
        name, context=parent, kind=kind, attributes=clean_attributes(attributes)
    ) as s:
        yield s


def start_span(
    name: str, attributes: Mapping[str, Any] | None = None, parent: Span | None = None
) -> Span:
    """A span that is not made current, for work spread over a generator's steps (each step
    may run in another thread); the caller ends it (``span.end()``).

    Args:
        name: the span name.
        attributes: initial attributes.
        parent: the parent span; default the current span.
    """
    ctx = trace.set_span_in_context(parent) if parent is not None else None
    return tracer().start_span(name, context=ctx, attributes=clean_attributes(attributes))


def set_attributes(attributes: Mapping[str, Any], target: Span | None = None) -> None:
    """Sets attributes on ``target`` (default: the current span); None values are skipped."""
    (target or trace.get_current_span()).set_attributes(clean_attributes(attributes))


def extract_context(headers: Mapping[str, str]) -> otel_context.Context:
    """The W3C trace context (``traceparent``, ``tracestate``) of incoming headers; an absent
    or malformed ``traceparent`` gives an empty context (a new trace starts)."""
    return _propagator.extract(carrier=dict(headers))


def inject_context(headers: dict[str, str]) -> dict[str, str]:
    """Adds the current span's ``traceparent`` (and ``tracestate``) to ``headers``."""
    _propagator.inject(headers)
    return headers


def trace_id_of(s: Span) -> str:
    """The span's trace id as 32 lowercase hex digits, ``""`` for an invalid span."""
    ctx = s.get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else ""


def current_trace_id() -> str:
    """The current span's trace id (32 hex digits), ``""`` outside a span."""
    return trace_id_of(trace.get_current_span())


def current_span_id() -> str:
    """The current span's id (16 hex digits), ``""`` outside a span."""
    ctx = trace.get_current_span().get_span_context()
    return trace.format_span_id(ctx.span_id) if ctx.is_valid else ""
