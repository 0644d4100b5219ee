"""FastAPI dependencies and their ``Annotated`` aliases.

- ``StateDep``: the per-process ``ServingState``.
- ``PrincipalDep``: the ``Principal`` of the ``Authorization: Bearer`` API key, or of the OIDC
  JWT when single sign-on is configured (401 otherwise, 403 for a token whose tenant, groups or
  role is not allowed), after the per-principal and per-tenant rate limits (429 otherwise).
- ``AdminDep``: a rate-limited principal with role ``admin`` (403 otherwise).
- ``WriterDep``: a rate-limited principal with role ``writer`` or ``admin`` (403 otherwise).
- ``PublishedVersionDep``: the caller's tenant's published index version (503 otherwise).

The tenant comes only from the API key or the verified token: no request field, header or path
names it.

Dependencies that only read memory are ``async def`` (run on the event loop, no thread hop);
those that may touch the database, Redis or the disk are plain ``def`` (Starlette's thread pool).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from rag_platform.lib.auth.oidc import OidcError, looks_like_jwt
from rag_platform.lib.models import Principal
from rag_platform.lib.store import IndexVersion
from serving.errors import ApiError, database_unavailable
from serving.state import ServingState

logger = logging.getLogger("serving.auth")

#: Documents the scheme in OpenAPI; parsing and errors are ours (auto_error=False).
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An API key (`Bearer rag_<id>_<secret>`) or, with single sign-on configured, "
    "an OIDC JWT of the trusted issuer (RS256/ES256).",
)

_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="rag-platform"'}


async def get_state(request: Request) -> ServingState:
    """The ``ServingState`` created by the lifespan.

    Raises:
        ApiError: 503 ``starting`` when the app has not finished starting.
    """
    state: ServingState | None = getattr(request.app.state, "serving", None)
    if state is None:
        raise ApiError(503, "starting", "the service is starting")
    return state


StateDep = Annotated[ServingState, Depends(get_state)]


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, headers=_UNAUTHORIZED_HEADERS)


def _oidc_principal(state: ServingState, token: str) -> Principal:
    """The principal of an OIDC bearer token (:class:`~rag_platform.lib.auth.oidc.OidcVerifier`).

    Raises:
        ApiError: 401 ``invalid_token``; 403 ``unknown_tenant`` / ``invalid_groups`` /
            ``invalid_role``; 503 ``identity_provider_unavailable`` or ``database_unavailable``.
    """
    if state.oidc is None:
        raise _unauthorized("invalid_token", "bearer tokens are not accepted: use an API key")
    try:
        return state.oidc.authenticate(token)
    except OidcError as exc:
        logger.info("OIDC token refused", extra={"error": exc.code})
        if exc.status == 401:
            raise ApiError(
                401,
                exc.code,
                exc.message,
                headers={"WWW-Authenticate": 'Bearer realm="rag-platform", error="invalid_token"'},
            ) from exc
        raise ApiError(exc.status, exc.code, exc.message) from exc
    except Exception as exc:
        logger.error(
            "authentication failed: store unavailable", extra={"error": type(exc).__name__}
        )
        raise database_unavailable() from exc


def authenticate(
    request: Request,
    state: ServingState,
    credentials: HTTPAuthorizationCredentials | None,
) -> Principal:
    """Resolves the API key, or the OIDC JWT, to its principal.

    Raises:
        ApiError: 401 ``missing_api_key`` (no ``Authorization`` header),
            401 ``invalid_api_key`` (not a Bearer key, or unknown, revoked or expired),
            401/403/503 for a JWT (see :func:`_oidc_principal`),
            503 ``database_unavailable`` (the store cannot be reached).
    """
    if credentials is None:
        if request.headers.get("authorization"):
            raise _unauthorized("invalid_api_key", "Authorization must be `Bearer <api key>`")
        raise _unauthorized(
            "missing_api_key", "an API key is required: Authorization: Bearer <key>"
        )
    token = credentials.credentials.strip()
    if looks_like_jwt(token):
        sso = _oidc_principal(state, token)
        request.state.tenant = sso.tenant
        request.state.key_id = sso.key_id
        return sso
    if not token or len(token) > 512:
        raise _unauthorized("invalid_api_key", "the API key is malformed")
    try:
        principal = state.store.authenticate(token)
    except Exception as exc:
        logger.error(
            "authentication failed: store unavailable", extra={"error": type(exc).__name__}
        )
        raise database_unavailable() from exc
    if principal is None:
        raise _unauthorized("invalid_api_key", "the API key is unknown, revoked or expired")
    request.state.tenant = principal.tenant
    request.state.key_id = principal.key_id
    return principal


def get_current_principal(
    request: Request,
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The principal of the ``Authorization: Bearer`` API key, once the per-key and per-tenant
    rate limits allow the request (one thread-pool step for both: each may do I/O).

    Raises:
        ApiError: 401 ``missing_api_key`` / ``invalid_api_key``, 503 ``database_unavailable``
            (see :func:`authenticate`), 429 ``rate_limited`` with ``Retry-After`` (seconds).
    """
    principal = authenticate(request, state, credentials)
    decision = state.limiter.check(principal.tenant, principal.key_id)
    if not decision.allowed:
        state.metrics.rate_limited.labels(decision.scope, principal.tenant).inc()
        raise ApiError(
            429,
            "rate_limited",
            f"rate limit of this {'API key' if decision.scope == 'key' else 'tenant'} exceeded; "
            f"retry in {decision.retry_after} s",
            details=[{"scope": decision.scope, "retry_after": decision.retry_after}],
            headers={"Retry-After": str(decision.retry_after)},
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(get_current_principal)]


async def get_admin(principal: PrincipalDep) -> Principal:
    """The principal, if its role is ``admin``.

    Raises:
        ApiError: 403 ``forbidden``.
    """
    if not principal.is_admin:
        raise ApiError(403, "forbidden", "this endpoint needs an API key with role `admin`")
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]


async def get_writer(principal: PrincipalDep) -> Principal:
    """The principal, if its role is ``writer`` or ``admin``.

    Raises:
        ApiError: 403 ``forbidden``.
    """
    if not principal.can_write:
        raise ApiError(
            403, "forbidden", "this endpoint needs an API key with role `writer` or `admin`"
        )
    return principal


WriterDep = Annotated[Principal, Depends(get_writer)]


async def get_published_version(principal: PrincipalDep, state: StateDep) -> IndexVersion:
    """The published index version of the principal's tenant.

    Served from the state's one-second memo on the event loop; the store is read (in the thread
    pool) only when the memo has expired.

    Raises:
        ApiError: 503 ``index_not_ready`` (nothing published yet),
            503 ``database_unavailable``.
    """
    found, version = state.versions.memoized(principal.tenant)
    if not found:
        try:
            version = await run_in_threadpool(state.versions.get, principal.tenant)
        except Exception as exc:
            logger.error("published version look-up failed", extra={"error": type(exc).__name__})
            raise database_unavailable() from exc
    if version is None:
        raise ApiError(
            503,
            "index_not_ready",
            "no index version is published for this tenant yet; run the indexing pipeline",
            headers={"Retry-After": "30"},
        )
    return version


PublishedVersionDep = Annotated[IndexVersion, Depends(get_published_version)]
