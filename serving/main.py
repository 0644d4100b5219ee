"""The FastAPI app factory and its lifespan.

Run with ``uvicorn --factory serving.main:create_app`` (one process per machine: Edge shards
open in one process only; the thread pool shares them, see DESIGN.md).

Middleware, outermost first: tracing (the request's server span, W3C trace context from the
``traceparent`` header; :mod:`serving.tracing`), request context (request id, access log,
request metrics), then
the request-body size limit (413 before any parsing), then the routes. Every error, including
FastAPI's validation errors and unknown routes, leaves in the one JSON shape of
:mod:`serving.errors`.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from rag_platform.lib import tracing
from rag_platform.settings import Settings, configure_runtime_env, get_settings
from serving.api.routes import admin, conversations, documents, feedback, health, query, search
from serving.api.routes.health import tenant_index_statuses
from serving.errors import BodySizeLimitMiddleware, install_error_handlers
from serving.observability import (
    IndexStatusCollector,
    Metrics,
    RequestContextMiddleware,
    configure_logging,
)
from serving.state import ServingState
from serving.tracing import TracingMiddleware

logger = logging.getLogger("serving.main")

API_VERSION = "1.0.0"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Builds the ``ServingState`` (store migrated, model warmed) and tears it down."""
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics

    def start() -> ServingState:
        settings.ensure_dirs()
        state = ServingState(settings, metrics=metrics)
        try:
            state.store.migrate()
        except Exception as exc:
            # Start anyway: /health/ready reports the database down (503) and requests answer
            # 503 database_unavailable until it is back, instead of a crash loop.
            logger.error(
                "metadata store migration failed at startup", extra={"error": type(exc).__name__}
            )
        state.warm_up()
        return state

    state = await run_in_threadpool(start)
    # Startup leaves millions of long-lived objects (torch, transformers, spaCy, Presidio): a
    # full collection over them takes ~300 ms on 2 cores and stalls every request in flight.
    # Freezing them out of the collector's generations (gc.freeze, Python 3.7+) keeps later
    # collections to the objects requests create.
    gc.collect()
    gc.freeze()
    app.state.serving = state
    index_status = IndexStatusCollector(
        lambda: tenant_index_statuses(state),
        settings.publish_max_age_seconds,
        settings.metrics_tenant_labels,
    )
    metrics.registry.register(index_status)
    logger.info(
        "serving started",
        extra={"cache": state.cache.backend, "rate_limits": state.limiter.backend},
    )
    try:
        yield
    finally:
        app.state.serving = None
        metrics.registry.unregister(index_status)
        await run_in_threadpool(state.close)
        logger.info("serving stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the query API.

    Args:
        settings: platform settings; default ``get_settings()`` (environment ``RAG_*``).

    Returns:
        The app. Its ``ServingState`` is created on startup (``with TestClient(app)`` or any ASGI
        server running the lifespan) and available as ``app.state.serving``.
    """
    configure_runtime_env()
    settings = settings or get_settings()
    configure_logging()
    tracing.configure_tracing("rag-platform-api")
    metrics = Metrics(tenant_labels=settings.metrics_tenant_labels)
    app = FastAPI(
        title="rag-platform query API",
        version=API_VERSION,
        description="Search and question answering over each tenant's published index, "
        "with API keys, tenant isolation and document-level permissions.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.serving = None
    install_error_handlers(app)
    for router in (
        search.router,
        query.router,
        conversations.router,
        feedback.router,
        documents.router,
        admin.router,
        health.router,
        health.metrics_router,
    ):
        app.include_router(router)
    # add_middleware wraps: the last added is the outermost.
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        path_limits={"/v1/documents": settings.max_upload_bytes},
    )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.add_middleware(TracingMiddleware)
    return app
