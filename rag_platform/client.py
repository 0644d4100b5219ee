"""A typed Python client of the rag-platform API (httpx, synchronous).

Example::

    from rag_platform.client import RagClient

    with RagClient("http://127.0.0.1:8000", api_key=WRITER_KEY) as rag:
        accepted = rag.upload("handbook.pdf", acl_groups=["hr"])
        job = rag.wait(accepted.job_id, timeout=600)       # queued → running → published
        hits = rag.search("parental leave", top_k=5).hits
        answer = rag.query("How long is parental leave?").answer
        for event, data in rag.query_stream("How long is parental leave?"):
            ...                                             # hits, delta, citations, done
        rag.wait(rag.delete(accepted.doc_id).job_id)

Every non-2xx answer raises :class:`RagApiError` with the API's error code (the one JSON error
shape of ``serving/errors.py``). Responses are the API's own pydantic models
(:mod:`serving.schemas`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from serving.schemas import (
    DocumentAcceptedPublic,
    JobAcceptedPublic,
    JobPublic,
    QueryPublic,
    SearchPublic,
)

__all__ = ["JobFailed", "RagApiError", "RagClient"]

#: Job statuses after which a job does not change any more.
FINAL_STATUSES = frozenset({"published", "failed"})


class RagApiError(Exception):
    """An error answer of the API.

    Attributes:
        status_code: the HTTP status (0 when no answer came: a transport error).
        code: the API's error code (``forbidden``, ``file_too_large``, ``job_not_found``...;
            ``transport_error`` or ``invalid_response`` for failures of the call itself).
        message: the API's message.
        request_id: the request id of the answer (``X-Request-Id``), "" if none.
        details: the field-level details.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        request_id: str = "",
        details: Sequence[dict[str, Any]] = (),
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.request_id = request_id
        self.details = list(details)


class JobFailed(RagApiError):
    """:meth:`RagClient.wait` saw the job fail (``code`` is ``job_failed``; ``job`` holds the
    stage and error) or time out (``code`` is ``job_timeout``)."""

    def __init__(self, code: str, message: str, job: JobPublic) -> None:
        super().__init__(200, code, message)
        self.job = job


class RagClient:
    """Client of one API base URL with one API key.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        api_key: the ``rag_…`` key (its tenant and role decide what is allowed).
        timeout: per-request timeout (seconds; default 60).
        transport: an ``httpx`` transport (tests: ``httpx.ASGITransport``), default network.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> RagClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    # plumbing --------------------------------------------------------------------------------

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            error = response.json()["error"]
            raise RagApiError(
                response.status_code,
                str(error["code"]),
                str(error["message"]),
                str(error.get("request_id") or ""),
                error.get("details") or [],
            )
        except (ValueError, KeyError, TypeError):
            raise RagApiError(
                response.status_code, "invalid_response", response.text[:200]
            ) from None

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise RagApiError(0, "transport_error", f"{type(exc).__name__}: {exc}") from exc
        self._raise_for(response)
        return response

    # query API -------------------------------------------------------------------------------

    def search(
        self, query: str, *, top_k: int = 10, filters: dict[str, Any] | None = None
    ) -> SearchPublic:
        """``POST /v1/search``: ranked hits the key's groups may see."""
        body = {"query": query, "top_k": top_k, "filters": filters or {}}
        return SearchPublic.model_validate(self._request("POST", "/v1/search", json=body).json())

    def query(
        self, query: str, *, top_k: int = 5, filters: dict[str, Any] | None = None
    ) -> QueryPublic:
        """``POST /v1/query``: an answer with ``[n]`` citations."""
        body = {"query": query, "top_k": top_k, "filters": filters or {}}
        return QueryPublic.model_validate(self._request("POST", "/v1/query", json=body).json())

    def query_stream(
        self, query: str, *, top_k: int = 5, filters: dict[str, Any] | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """``POST /v1/query`` as Server-Sent Events: yields ``(event, data)`` pairs (``hits``,
        ``delta``, ``citations``, ``done``).

        Raises:
            RagApiError: an error answer, or an ``error`` event inside the stream.
        """
        body = {"query": query, "top_k": top_k, "filters": filters or {}, "stream": True}
        try:
            with self._http.stream("POST", "/v1/query", json=body) as response:
                if not response.is_success:
                    response.read()
                    self._raise_for(response)
                event, data = "message", []
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        payload = json.loads("\n".join(data))
                        if event == "error":
                            err = payload.get("error", {})
                            raise RagApiError(200, err.get("code", "error"), err.get("message", ""))
                        yield event, payload
                        event, data = "message", []
        except httpx.TransportError as exc:
            raise RagApiError(0, "transport_error", f"{type(exc).__name__}: {exc}") from exc

    # ingestion API ---------------------------------------------------------------------------

    def upload(
        self,
        file: str | Path,
        *,
        acl_groups: Sequence[str] | None = None,
        title: str | None = None,
        uri: str | None = None,
        filename: str | None = None,
        content: bytes | None = None,
    ) -> DocumentAcceptedPublic:
        """``POST /v1/documents`` (multipart): uploads a file (read from ``file``, or
        ``content`` under the name ``filename``). Needs role ``writer`` or ``admin``."""
        data = Path(file).read_bytes() if content is None else content
        name = filename or Path(file).name
        form: dict[str, str] = {}
        if acl_groups is not None:
            form["acl_groups"] = ",".join(acl_groups)
        if title is not None:
            form["title"] = title
        if uri is not None:
            form["uri"] = uri
        response = self._request("POST", "/v1/documents", files={"file": (name, data)}, data=form)
        return DocumentAcceptedPublic.model_validate(response.json())

    def add_text(
        self,
        title: str,
        text: str,
        *,
        uri: str | None = None,
        acl_groups: Sequence[str] | None = None,
    ) -> DocumentAcceptedPublic:
        """``POST /v1/documents`` (JSON): a plain-text document."""
        body: dict[str, Any] = {"title": title, "text": text, "uri": uri}
        if acl_groups is not None:
            body["acl_groups"] = list(acl_groups)
        response = self._request("POST", "/v1/documents", json=body)
        return DocumentAcceptedPublic.model_validate(response.json())

    def delete(self, doc_id: str) -> JobAcceptedPublic:
        """``DELETE /v1/documents/{doc_id}``: an uploaded document."""
        response = self._request("DELETE", f"/v1/documents/{doc_id}")
        return JobAcceptedPublic.model_validate(response.json())

    def job(self, job_id: str) -> JobPublic:
        """``GET /v1/jobs/{job_id}``."""
        return JobPublic.model_validate(self._request("GET", f"/v1/jobs/{job_id}").json())

    def wait(self, job_id: str, *, timeout: float = 900.0, poll_seconds: float = 1.0) -> JobPublic:
        """Polls the job until it is ``published``.

        Raises:
            JobFailed: ``job_failed`` (the job's run failed: see ``.job.stage`` and
                ``.job.error``) or ``job_timeout`` (not final after ``timeout`` seconds).
            RagApiError: an error answer while polling.
        """
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.status == "published":
                return job
            if job.status == "failed":
                raise JobFailed("job_failed", f"{job.stage}: {job.error}", job)
            if time.monotonic() >= deadline:
                raise JobFailed("job_timeout", f"job still {job.status} after {timeout} s", job)
            time.sleep(poll_seconds)
