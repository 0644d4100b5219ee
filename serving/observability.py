"""Prometheus metrics, JSON logging and the request id.

- Every app owns a ``CollectorRegistry`` (``Metrics``), so several apps in one test process never
  collide; ``GET /metrics`` exposes that registry only.
- Logs are JSON lines (python-json-logger) on the ``serving`` logger, each carrying the request id
  of the request being served. Nothing here logs an API key or a question: handlers log masked
  questions only (the query log), and the access log holds method, route template, status,
  duration and tenant.
- ``RequestContextMiddleware`` (pure ASGI, so streaming responses and context variables work)
  reads ``X-Request-Id`` (or makes one), echoes it on the response, and records the request
  counter and latency histogram labelled by route template, method, status and (when enabled)
  tenant.
- Tenant ids label the per-tenant metrics only with ``RAG_METRICS_TENANT_LABELS=true``: they
  name customers, and every tenant multiplies the series a metrics backend stores.
- Log records also carry ``trace_id`` and ``span_id`` of the current OpenTelemetry span
  (:mod:`serving.tracing`; ``""`` outside one), so a log line leads to its trace.
- The published index of each tenant (the pipeline's output, read from the metadata store at
  scrape time by :class:`IndexStatusCollector`): readiness, version, publish time and the age
  a publish may reach (``RAG_PUBLISH_MAX_AGE_SECONDS``), so alerts see a stale or missing index.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag_platform.lib import tracing

_request_id: ContextVar[str] = ContextVar("request_id", default="-")
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

#: Latency buckets in seconds: 1 ms to 10 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


#: LLM call buckets in seconds: 50 ms to 2 min (a small model on a busy CPU is slow).
LLM_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
_HTTP_5XX = re.compile(r"^http_5\d\d$")


def reason_label(reason: str) -> str:
    """A failure reason as a metric label: ``http_5xx`` for any 5xx (bounded cardinality)."""
    return "http_5xx" if _HTTP_5XX.match(reason) else reason


def current_request_id() -> str:
    """The id of the request being served in this context (``"-"`` outside a request)."""
    return _request_id.get()


M = TypeVar("M", Counter, Histogram)


class TenantLabelled(Generic[M]):
    """A metric declared with a ``tenant`` label that is left out unless tenant labels are on.

    Callers always pass every label value, the tenant in its declared position
    (``metric.labels(route, method, status, tenant)``); without tenant labels the metric is
    built without that label and the value is dropped here, so no tenant id is exported.

    Args:
        build: makes the metric from its label names.
        labelnames: the label names, ``tenant`` among them.
        tenant_labels: keep the ``tenant`` label.
    """

    def __init__(
        self, build: Callable[[list[str]], M], labelnames: Sequence[str], tenant_labels: bool
    ) -> None:
        self._tenant_at = None if tenant_labels else list(labelnames).index("tenant")
        self.metric: M = build([n for n in labelnames if tenant_labels or n != "tenant"])

    def labels(self, *values: str) -> M:
        """The child metric of these label values (the metric itself when none remain)."""
        if self._tenant_at is not None:
            values = values[: self._tenant_at] + values[self._tenant_at + 1 :]
        return self.metric.labels(*values) if values else self.metric


class Metrics:
    """The service's Prometheus metrics, in a registry of their own.

    Metric names follow Prometheus conventions (base units, ``_total`` counters, ``_seconds``).

    Args:
        registry: where the metrics are registered; a new registry by default.
        tenant_labels: label the request, latency, rate-limit and isolation metrics with the
            tenant id (``Settings.metrics_tenant_labels``); off, those metrics have no
            ``tenant`` label.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, tenant_labels: bool = False
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        reg = self.registry

        def counter(name: str, doc: str) -> Callable[[list[str]], Counter]:
            return lambda labels: Counter(name, doc, labels, registry=reg)

        def histogram(name: str, doc: str) -> Callable[[list[str]], Histogram]:
            return lambda labels: Histogram(
                name, doc, labels, buckets=LATENCY_BUCKETS, registry=reg
            )

        self.requests = TenantLabelled(
            counter("rag_http_requests_total", "HTTP requests served."),
            ["route", "method", "status", "tenant"],
            tenant_labels,
        )
        self.request_latency = TenantLabelled(
            histogram("rag_http_request_duration_seconds", "HTTP request latency (seconds)."),
            ["route", "method", "status", "tenant"],
            tenant_labels,
        )
        self.retrieval_latency = TenantLabelled(
            histogram("rag_retrieval_search_seconds", "Index search latency per query (seconds)."),
            ["tenant"],
            tenant_labels,
        )
        self.embedding_latency = TenantLabelled(
            histogram("rag_query_embedding_seconds", "Query embedding latency (seconds)."),
            ["tenant"],
            tenant_labels,
        )
        self.answer_latency = TenantLabelled(
            histogram("rag_answer_seconds", "Answer generation latency (seconds)."),
            ["tenant", "mode"],
            tenant_labels,
        )
        self.cache = Counter(
            "rag_cache_requests_total",
            "Query cache look-ups by result (hit, miss, error).",
            ["endpoint", "result"],
            registry=self.registry,
        )
        self.rate_limited = TenantLabelled(
            counter("rag_rate_limited_total", "Requests refused by a rate limit."),
            ["scope", "tenant"],
            tenant_labels,
        )
        self.isolation_violations = TenantLabelled(
            counter(
                "rag_isolation_violations_total",
                "Hits dropped by the per-hit tenant/ACL re-check (should stay 0).",
            ),
            ["tenant"],
            tenant_labels,
        )
        self.llm_latency = Histogram(
            "rag_llm_request_seconds",
            "LLM calls (one attempt of a model route) by route name and outcome (ok or the "
            "failure reason), seconds; a stream's call lasts until its first token.",
            ["model", "outcome"],
            buckets=LLM_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.llm_tokens = TenantLabelled(
            counter("rag_llm_tokens_total", "LLM tokens spent by answers, by model and kind."),
            ["model", "kind", "tenant"],
            tenant_labels,
        )
        self.llm_fallbacks = TenantLabelled(
            counter(
                "rag_llm_fallbacks_total",
                "Answers a fallback gave (next_model or extractive), by the first route's "
                "failure reason.",
            ),
            ["fallback", "reason", "tenant"],
            tenant_labels,
        )
        self.query_log_failures = Counter(
            "rag_query_log_failures_total",
            "Query-log batch writes that failed (the rows stay queued for retry).",
            registry=self.registry,
        )
        self.query_log_pending = Gauge(
            "rag_query_log_pending",
            "Query-log rows not yet written to the database.",
            registry=self.registry,
        )
        self.llm_failures = TenantLabelled(
            counter(
                "rag_llm_failures_total",
                "Failed attempts of a model route (timeout, error status, unreachable endpoint, "
                "open circuit); the answer then comes from the next route or the extractive one.",
            ),
            ["tenant"],
            tenant_labels,
        )
        if not tenant_labels:  # exposed at 0 before the first failure
            self.llm_failures.labels("-")
        self.tenant_labels = tenant_labels


@dataclass(frozen=True)
class TenantIndexStatus:
    """The published index of one tenant, as the metrics show it.

    Attributes:
        tenant: tenant id.
        ready: a version is published and its shard is there (queries can be answered).
        version: the published version id, ``""`` when none.
        published_at: Unix time of its latest publish, seconds (None: never published).
        documents: documents in the published version.
        chunks: chunks in the published version.
    """

    tenant: str
    ready: bool
    version: str = ""
    published_at: float | None = None
    documents: int = 0
    chunks: int = 0


class IndexStatusCollector(Collector):
    """Gauges of every tenant's published index, computed at each scrape.

    Always: ``rag_tenants`` (registered tenants), ``rag_tenants_not_ready``,
    ``rag_tenants_publish_overdue`` (latest publish longer ago than ``max_age_seconds``; a
    tenant never published is not ready instead),
    ``rag_index_publish_max_age_seconds``. With tenant labels also, per tenant:
    ``rag_tenant_ready``, ``rag_index_published_info{version}``,
    ``rag_index_published_timestamp_seconds``, ``rag_index_published_chunks``.

    Args:
        statuses: the tenants' statuses now (may raise: the scrape then shows the tenant-free
            gauges only, with ``rag_index_status_up 0``).
        max_age_seconds: the age a publish may reach before it is overdue (the re-sync
            schedule's period plus the run's time).
        tenant_labels: emit the per-tenant gauges.
        now: the clock, Unix seconds.
    """

    def __init__(
        self,
        statuses: Callable[[], Sequence[TenantIndexStatus]],
        max_age_seconds: float,
        tenant_labels: bool,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._statuses = statuses
        self.max_age_seconds = max_age_seconds
        self.tenant_labels = tenant_labels
        self._now = now

    def describe(self) -> list[Metric]:
        """No description: the series depend on the tenants (collected at each scrape)."""
        return []

    def collect(self) -> list[Metric]:
        """The gauges (see the class docstring)."""
        up = GaugeMetricFamily(
            "rag_index_status_up", "Whether the published index status could be read (1/0)."
        )
        max_age = GaugeMetricFamily(
            "rag_index_publish_max_age_seconds",
            "Age a tenant's latest publish may reach before it is overdue (seconds).",
        )
        max_age.add_metric([], self.max_age_seconds)
        try:
            statuses = list(self._statuses())
        except Exception as exc:
            logging.getLogger("serving.metrics").error(
                "reading the index status failed", extra={"error": type(exc).__name__}
            )
            up.add_metric([], 0)
            return [up, max_age]
        up.add_metric([], 1)
        now = self._now()
        overdue = [
            s
            for s in statuses
            if s.published_at is not None and now - s.published_at > self.max_age_seconds
        ]
        out: list[Metric] = [up, max_age]
        for name, doc, value in (
            ("rag_tenants", "Registered tenants.", len(statuses)),
            (
                "rag_tenants_not_ready",
                "Tenants without a servable published index.",
                sum(not s.ready for s in statuses),
            ),
            (
                "rag_tenants_publish_overdue",
                "Tenants whose latest publish is older than the publish schedule allows.",
                len(overdue),
            ),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            out.append(g)
        if not self.tenant_labels:
            return out
        ready = GaugeMetricFamily(
            "rag_tenant_ready", "The tenant's published index is servable (1/0).", labels=["tenant"]
        )
        info = GaugeMetricFamily(
            "rag_index_published_info",
            "The tenant's published index version (value 1).",
            labels=["tenant", "version"],
        )
        published = GaugeMetricFamily(
            "rag_index_published_timestamp_seconds",
            "Unix time of the tenant's latest publish.",
            labels=["tenant"],
        )
        chunks = GaugeMetricFamily(
            "rag_index_published_chunks",
            "Chunks in the tenant's published index version.",
            labels=["tenant"],
        )
        for s in statuses:
            ready.add_metric([s.tenant], 1 if s.ready else 0)
            if s.version:
                info.add_metric([s.tenant, s.version], 1)
                chunks.add_metric([s.tenant], s.chunks)
            if s.published_at is not None:
                published.add_metric([s.tenant], s.published_at)
        return [*out, ready, info, published, chunks]


class RoutingMetrics:
    """A tenant's model-routing events as metrics (a ``RoutingObserver`` of
    :mod:`rag_platform.lib.routing`): attempt latency per route and outcome, fallbacks by
    reason.

    Args:
        metrics: the app's metrics.
        tenant: the tenant whose answerer reports (a label only with tenant labels on).
    """

    def __init__(self, metrics: Metrics, tenant: str) -> None:
        self.metrics = metrics
        self.tenant = tenant

    def attempt(self, route: str, outcome: str, seconds: float) -> None:
        """Observes one attempt of ``route`` (a failure also counts in ``llm_failures``)."""
        self.metrics.llm_latency.labels(route, reason_label(outcome)).observe(seconds)
        if outcome != "ok":
            self.metrics.llm_failures.labels(self.tenant).inc()

    def fallback(self, code: str, reason: str) -> None:
        """Counts one answer given by a fallback."""
        self.metrics.llm_fallbacks.labels(code, reason_label(reason), self.tenant).inc()


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        if not hasattr(record, "trace_id"):
            record.trace_id = tracing.current_trace_id()
            record.span_id = tracing.current_span_id()
        return True


def json_formatter() -> logging.Formatter:
    """The JSON formatter used by the service's handlers."""
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(trace_id)s %(span_id)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
    )


def configure_logging(level: str | int = "INFO") -> None:
    """Sends the ``serving`` logger's records to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger("serving")
    logger.setLevel(level)
    if not any(getattr(h, "_rag_json", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(json_formatter())
        handler.addFilter(_RequestIdFilter())
        handler._rag_json = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False


def request_id_filter() -> logging.Filter:
    """A filter adding ``request_id``, ``trace_id`` and ``span_id`` to records (for handlers
    tests attach)."""
    return _RequestIdFilter()


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "<unmatched>"


class RequestContextMiddleware:
    """Request id in and out, access log, request metrics.

    Args:
        app: the wrapped ASGI app.
        metrics: where to record the request counter and latency histogram.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.log = logging.getLogger("serving.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for k, v in scope.get("headers", []):
            if k.lower() == b"x-request-id":
                incoming = v.decode("latin-1")
                break
        request_id = incoming if _REQUEST_ID_OK.match(incoming) else uuid.uuid4().hex
        token = _request_id.set(request_id)
        scope.setdefault("state", {})
        status = 500
        response_started = False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Answered here (not by Starlette's ServerErrorMiddleware) so a 500 keeps the
            # common error shape, the request id header and the metrics; no stack trace leaks.
            status = 500
            logging.getLogger("serving.errors").exception(
                "unhandled error", extra={"request_id": request_id}
            )
            if not response_started:
                body = json.dumps(
                    {
                        "error": {
                            "code": "internal_error",
                            "message": "internal server error",
                            "request_id": request_id,
                            "details": [],
                        }
                    }
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"x-request-id", request_id.encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            state: dict[str, Any] = scope.get("state", {})
            tenant = str(state.get("tenant", "-"))
            labels = (route, scope["method"], str(status), tenant)
            self.metrics.requests.labels(*labels).inc()
            self.metrics.request_latency.labels(*labels).observe(elapsed)
            self.log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "tenant": tenant,
                    "request_id": request_id,
                },
            )
            _request_id.reset(token)
