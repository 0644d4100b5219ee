"""Liveness, readiness and Prometheus metrics (no API key needed; ``/metrics`` may require
``RAG_METRICS_TOKEN``)."""

from __future__ import annotations

import hmac
import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.api.deps import StateDep
from serving.errors import ApiError
from serving.observability import TenantIndexStatus
from serving.schemas import DependencyStatusPublic, LivePublic, ReadyPublic
from serving.state import ServingState

logger = logging.getLogger("serving.health")

router = APIRouter(prefix="/health", tags=["health"])
metrics_router = APIRouter(tags=["health"])


@router.get("/live", response_model=LivePublic, summary="The process is up")
def get_live() -> LivePublic:
    """Always 200 while the process serves requests."""
    return LivePublic()


@router.get(
    "/ready",
    response_model=ReadyPublic,
    responses={503: {"model": ReadyPublic, "description": "A dependency is down."}},
    summary="Every dependency is reachable",
)
def get_ready(state: StateDep) -> JSONResponse:
    """Per-dependency status: ``database``, ``redis`` (when configured) and ``index``.

    ``index`` is ok when the index directory exists and, for every registered tenant with a
    published version, that version's shard directory exists. 503 when any check is down.
    """
    checks: dict[str, DependencyStatusPublic] = {}
    try:
        db_ok = bool(state.store.ping())
    except Exception:
        db_ok = False
    checks["database"] = DependencyStatusPublic(
        status="ok" if db_ok else "down", detail="" if db_ok else "metadata store unreachable"
    )
    if state.settings.redis_url:
        redis_ok = state.cache.ping()
        checks["redis"] = DependencyStatusPublic(
            status="ok" if redis_ok else "down",
            detail="" if redis_ok else "redis unreachable (cache misses, in-process limits)",
        )
    else:
        checks["redis"] = DependencyStatusPublic(status="not_configured")
    checks["index"] = _index_status(state, db_ok)
    ready = all(c.status != "down" for c in checks.values())
    body = ReadyPublic(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


def _index_status(state: StateDep, db_ok: bool) -> DependencyStatusPublic:
    if not state.backend.available():
        detail = "index directory missing" if state.backend.kind == "edge" else "qdrant unreachable"
        return DependencyStatusPublic(status="down", detail=detail)
    if not db_ok:
        return DependencyStatusPublic(status="ok", detail="published versions not checked")
    missing: list[str] = []
    tenants = set(state.tenants.registry.ids)
    for tenant in sorted(tenants):
        try:
            version = state.published_version(tenant)
        except Exception:
            return DependencyStatusPublic(status="down", detail="published versions unreadable")
        if version is not None and not state.backend.exists(version.path):
            missing.append(tenant)
    if missing:
        return DependencyStatusPublic(
            status="down", detail=f"published shards missing for {len(missing)} tenant(s)"
        )
    return DependencyStatusPublic(status="ok")


def tenant_index_statuses(state: ServingState) -> list[TenantIndexStatus]:
    """Every registered tenant's published index, for :class:`IndexStatusCollector`.

    Raises:
        Exception: whatever the store raises when the database is down.
    """
    out: list[TenantIndexStatus] = []
    for tenant in sorted(state.tenants.registry.ids):
        version = state.published_version(tenant)
        if version is None:
            out.append(TenantIndexStatus(tenant, ready=False))
            continue
        out.append(
            TenantIndexStatus(
                tenant,
                ready=state.backend.exists(version.path),
                version=version.version,
                published_at=version.published_at.timestamp() if version.published_at else None,
                documents=version.documents,
                chunks=version.chunks,
            )
        )
    return out


@metrics_router.get("/metrics", include_in_schema=False)
def get_metrics(request: Request, state: StateDep) -> Response:
    """Prometheus text exposition of this app's registry.

    Raises:
        ApiError: 401 ``unauthorized`` when ``RAG_METRICS_TOKEN`` is set and the request does
            not carry ``Authorization: Bearer <that token>`` (compared in constant time).
    """
    token = state.settings.metrics_token
    if token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise ApiError(
                401,
                "unauthorized",
                "a valid metrics token is required",
                headers={"WWW-Authenticate": 'Bearer realm="rag-platform-metrics"'},
            )
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
