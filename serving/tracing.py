"""The server span of every HTTP request (see :mod:`rag_platform.lib.tracing`).

``TracingMiddleware`` is the outermost middleware: it continues the W3C trace context of the
request (``traceparent``/``tracestate`` headers; a new trace without them), keeps a ``SERVER``
span current while the request is served, its streamed body included, and names it by method
and route template (``POST /v1/query``). Attributes follow the HTTP semantic conventions
(``http.request.method``, ``http.route``, ``url.path``, ``http.response.status_code``) plus
``rag.request_id`` and ``rag.tenant``; a 5xx status marks the span as an error. The stage spans
(cache, embedding, retrieval, generation) of :mod:`serving.services` are its children, and the
JSON logs and the query log carry its trace id. :func:`generation_attributes` and
:func:`answer_attributes` give the generation span its model, endpoint and token counts.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag_platform.lib import tracing
from rag_platform.lib.models import Answer

_SKIP_PATHS = frozenset({"/metrics", "/health/live"})


def _route_template(scope: Scope) -> str | None:
    path = getattr(scope.get("route"), "path", None)
    return str(path) if path else None


class TracingMiddleware:
    """One server span per HTTP request.

    Args:
        app: the wrapped ASGI app.
        skip_paths: paths served without a span (scrapes and liveness probes).
    """

    def __init__(self, app: ASGIApp, skip_paths: frozenset[str] = _SKIP_PATHS) -> None:
        self.app = app
        self.skip_paths = skip_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.skip_paths:
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in scope.get("headers", [])
            if k.lower() in (b"traceparent", b"tracestate")
        }
        method = str(scope.get("method", "GET"))
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
        }
        status = 500
        request_id: str | None = None

        async def send_traced(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for k, v in message.get("headers", []):
                    if k.lower() == b"x-request-id":
                        request_id = v.decode("latin-1")
            await send(message)

        with tracing.span(
            method, attributes, kind=SpanKind.SERVER, parent=tracing.extract_context(headers)
        ) as span:
            try:
                await self.app(scope, receive, send_traced)
            finally:
                route = _route_template(scope)
                if route:
                    span.update_name(f"{method} {route}")
                state: dict[str, Any] = scope.get("state", {})
                tracing.set_attributes(
                    {
                        "http.route": route,
                        "http.response.status_code": status,
                        "rag.request_id": request_id,
                        "rag.tenant": state.get("tenant"),
                    },
                    span,
                )
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))


def generation_attributes(answerer: object) -> dict[str, Any]:
    """The ``rag.generation`` span's attributes known before the call: the answerer's mode,
    and for an LLM its model and endpoint (GenAI semantic conventions: ``gen_ai.*``,
    ``server.address``/``server.port``)."""
    mode = getattr(answerer, "mode", None)
    attrs: dict[str, Any] = {"rag.answer.mode": mode}
    url = getattr(answerer, "url", None)
    if isinstance(url, str) and url:
        parts = urlsplit(url)
        attrs.update(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": getattr(answerer, "model", None),
                "server.address": parts.hostname,
                "server.port": parts.port,
                "rag.llm.endpoint": f"{parts.scheme}://{parts.netloc}{parts.path}",
            }
        )
    return attrs


def answer_attributes(answer: Answer) -> dict[str, Any]:
    """The ``rag.generation`` span's attributes known after the call: token usage, the mode and
    the model that answered (when the answer says), citations."""
    return {
        "gen_ai.usage.input_tokens": answer.prompt_tokens,
        "gen_ai.usage.output_tokens": answer.completion_tokens,
        "gen_ai.response.model": getattr(answer, "model", None),
        "rag.answer.mode": answer.mode,
        "rag.fallback": getattr(answer, "fallback", None),
        "rag.citations": len(answer.citations),
    }
