"""One JSON error shape for every 4xx and 5xx the service returns.

Every error body is::

    {"error": {"code": "rate_limited", "message": "...", "request_id": "...", "details": [...]}}

``code`` is a stable, machine-readable snake_case string; ``message`` is for humans and never
holds another tenant's data, a stack trace or an API key; ``details`` lists field-level problems
(validation errors) and is empty otherwise. The request id is the one echoed in ``X-Request-Id``.

This module also holds the ASGI middleware that rejects bodies over ``Settings.max_request_bytes``
with 413 *before* the application parses them (``Content-Length`` and chunked bodies alike).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.observability import current_request_id

logger = logging.getLogger("serving.errors")

#: Stable codes for the HTTP statuses Starlette raises by itself (unknown route, wrong method...).
_STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error the API reports to the client in the common JSON shape.

    Args:
        status_code: HTTP status (4xx or 5xx).
        code: stable snake_case error code, e.g. ``index_not_ready``.
        message: human-readable explanation; must not leak secrets or other tenants' data.
        details: optional list of structured details (e.g. field errors).
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: Sequence[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = list(details or [])
        self.headers = headers or {}


#: Seconds a client should wait before retrying while the metadata store is down (the pool's
#: connect timeout is a few seconds, so an earlier retry would mostly wait on the same outage).
DATABASE_RETRY_AFTER_SECONDS = 5


def database_unavailable() -> ApiError:
    """The 503 every route answers while the metadata store cannot be reached, with
    ``Retry-After`` (the service comes back by itself when the database does)."""
    return ApiError(
        503,
        "database_unavailable",
        "the metadata store is unavailable",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def error_body(
    code: str, message: str, details: Sequence[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The common error body (``{"error": {...}}``) with the current request id."""
    return {
        "error": {
            "code": code,
            "message": message,
            "request_id": current_request_id(),
            "details": list(details or []),
        }
    }


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Sequence[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A ``JSONResponse`` in the common error shape."""
    return JSONResponse(
        error_body(code, message, details), status_code=status_code, headers=headers
    )


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Field errors without the offending input (it may hold PII or a secret)."""
    details: list[dict[str, Any]] = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        details.append(
            {"loc": loc, "type": str(err.get("type", "")), "msg": str(err.get("msg", ""))}
        )
    return details


async def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 400 and "parsing the body" in message:
        code, message = "malformed_json", "the request body is not valid JSON"
    elif exc.status_code == 404 and message == "Not Found":
        message = f"no route matches {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, code, message, headers=dict(exc.headers or {}))


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc)
    if any(d["type"] == "json_invalid" for d in details):
        return error_response(400, "malformed_json", "the request body is not valid JSON", details)
    return error_response(422, "validation_error", "the request is not valid", details)


async def _unhandled_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", extra={"path": request.url.path})
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Registers the handlers that turn every error into the common JSON shape."""
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(Exception, _unhandled_handler)


class BodySizeLimitMiddleware:
    """Rejects request bodies over ``max_bytes`` with 413 before the app reads them.

    A declared ``Content-Length`` over the limit is refused without reading the body. Otherwise
    (chunked transfer or a lying header) the body is read up to the limit and buffered; one byte
    over and the request is refused. Accepted bodies are replayed to the app unchanged. The buffer
    is bounded by ``max_bytes`` (64 KiB by default), so memory per request stays small.

    Args:
        app: the wrapped ASGI app.
        max_bytes: the largest accepted body, in bytes.
        path_limits: a different limit for exact paths (``/v1/documents``: uploads, bounded
            by ``Settings.max_upload_bytes``).
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, path_limits: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope.get("path", ""), self.max_bytes)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await self._reject(send, 400, "bad_request", "invalid Content-Length header")
                return
            if length > max_bytes:
                await self._reject_too_large(send, max_bytes)
                return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > max_bytes:
                await self._reject_too_large(send, max_bytes)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        buffered = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": buffered, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject_too_large(self, send: Send, max_bytes: int) -> None:
        await self._reject(
            send, 413, "request_too_large", f"request body exceeds the limit of {max_bytes} bytes"
        )

    @staticmethod
    async def _reject(send: Send, status: int, code: str, message: str) -> None:
        body = json.dumps(error_body(code, message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
