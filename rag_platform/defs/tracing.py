"""Every asset materialization is an OpenTelemetry span (see :mod:`rag_platform.lib.tracing`).

``@materialization_span`` goes under ``@dg.asset``: the asset body runs inside a span
``materialize <asset>`` with ``rag.tenant`` (the partition), ``dagster.run_id``,
``dagster.asset_key``, ``dagster.partition_key``, ``dagster.job_name`` and, once the body has
returned or yielded its ``Output``/``MaterializeResult``, its numeric metadata as
``rag.metadata.<key>`` (documents, chunks, added, deleted, seconds, ...). An exception is recorded
on the span (status ERROR) and re-raised.

The spans of one run share one trace whose id is the run id (its 32 hex digits), so a run found
in the Dagster UI leads to its trace and back; a run launched with a ``traceparent`` tag (e.g. by
``POST /v1/documents``) continues that trace instead. The spans are flushed at the end of each
materialization: a step process (``dagster dev``, Celery workers) may exit right after it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import dagster as dg
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, StatusCode, TraceFlags

from rag_platform.lib import tracing

F = TypeVar("F", bound=Callable[..., Any])

#: The run tag holding a W3C ``traceparent`` a run's spans continue.
TRACEPARENT_TAG = "traceparent"
_SERVICE = "rag-platform-pipeline"


def run_trace_context(run_id: str, tags: dict[str, str]) -> otel_context.Context:
    """The parent context of a run's spans: its ``traceparent`` tag's trace, else a trace whose
    id is the run id (a Dagster run id is a UUID: 128 bits, as a trace id)."""
    if tags.get(TRACEPARENT_TAG):
        ctx = tracing.extract_context({"traceparent": tags[TRACEPARENT_TAG]})
        if trace.get_current_span(ctx).get_span_context().is_valid:
            return ctx
    try:
        trace_id = int(run_id.replace("-", ""), 16)
    except ValueError:
        return otel_context.Context()
    span_id = trace_id & 0xFFFF_FFFF_FFFF_FFFF or 1
    parent = SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


def _attributes(context: dg.AssetExecutionContext, asset_name: str) -> dict[str, Any]:
    partition = context.partition_key if context.has_partition_key else None
    return {
        "rag.tenant": partition,
        "dagster.asset_key": context.asset_key.to_user_string()
        if context.has_assets_def
        else asset_name,
        "dagster.partition_key": partition,
        "dagster.run_id": context.run_id,
        "dagster.job_name": context.job_name,
    }


def _record_metadata(span: Span, item: object) -> None:
    """The numeric metadata of an ``Output``/``MaterializeResult`` as span attributes."""
    metadata = getattr(item, "metadata", None)
    if not isinstance(item, dg.Output | dg.MaterializeResult) or not metadata:
        return
    for key, value in metadata.items():
        raw = getattr(value, "value", value)
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            span.set_attribute(f"rag.metadata.{key}", raw)


def _start(context: dg.AssetExecutionContext, asset_name: str) -> Span:
    tracing.configure_tracing(_SERVICE)
    parent = run_trace_context(context.run_id, dict(context.run.tags))
    return tracing.tracer().start_span(
        f"materialize {asset_name}",
        context=parent,
        attributes=tracing.clean_attributes(_attributes(context, asset_name)),
    )


def _current(span: Span) -> Any:
    # exceptions are recorded once, by _fail
    return trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    )


def _fail(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(StatusCode.ERROR, type(exc).__name__)


def materialization_span(fn: F) -> F:
    """Wraps an asset body in its materialization span (see the module docstring).

    The body's first parameter must be the asset's ``context``; generator bodies stay
    generators (the span is current only while the body runs, not while Dagster handles what
    it yielded).
    """
    asset_name = fn.__name__

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def traced_generator(
            context: dg.AssetExecutionContext, *args: Any, **kwargs: Any
        ) -> Iterator[Any]:
            span = _start(context, asset_name)
            try:
                with _current(span):
                    body = fn(context, *args, **kwargs)
                while True:
                    with _current(span):
                        try:
                            item = next(body)
                        except StopIteration:
                            break
                    _record_metadata(span, item)
                    yield item
            except GeneratorExit:
                span.set_attribute("rag.closed_early", True)
                raise
            except BaseException as exc:
                _fail(span, exc)
                raise
            finally:
                span.end()
                tracing.flush()

        return traced_generator  # type: ignore[return-value]

    @functools.wraps(fn)
    def traced(context: dg.AssetExecutionContext, *args: Any, **kwargs: Any) -> Any:
        span = _start(context, asset_name)
        try:
            with _current(span):
                result = fn(context, *args, **kwargs)
            _record_metadata(span, result)
            return result
        except BaseException as exc:
            _fail(span, exc)
            raise
        finally:
            span.end()
            tracing.flush()

    return traced  # type: ignore[return-value]
