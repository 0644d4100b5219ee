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
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
        """Observes one attempt of ``route``."""
        self.metrics.llm_latency.labels(route, reason_label(outcome)).observe(seconds)

    def fallback(self, code: str, reason: str) -> None:
        """Counts one answer given by a fallback."""
        self.metrics.llm_fallbacks.labels(code, reason_label(reason), self.tenant).inc()


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


def json_formatter() -> logging.Formatter:
    """The JSON formatter used by the service's handlers."""
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
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
    """A filter adding ``request_id`` to records (for handlers tests attach)."""
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
