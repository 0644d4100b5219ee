"""Bounded HTTP load on the query API from threads (httpx, loopback only), every reply recorded.

Usage::

    with SearchLoad(api.url, keys, queries, threads=4, max_requests=2000) as load:
        load.wait_for(lambda r: r.status == 200, count=20, timeout=30)
        ...inject a fault...
    load.replies        # every reply, in completion order

Each thread runs a closed loop (one request in flight) until :meth:`SearchLoad.stop`, its share of
``max_requests`` or ``max_seconds``, whichever comes first. A request that gets no HTTP response
(connection refused or reset, timeout) is recorded with ``status == -1``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import httpx


@dataclass(frozen=True)
class Reply:
    """One request of the load and what came back.

    Attributes:
        sent: ``time.monotonic()`` when the request was sent.
        done: ``time.monotonic()`` when the reply (or the transport error) arrived.
        tenant: the tenant whose key was used.
        status: HTTP status, or -1 when no response came.
        retry_after: the ``Retry-After`` header, if any.
        code: the error body's ``error.code`` for 4xx/5xx.
        index_version: the version a 200 was served from.
        doc_ids: the ``doc_id`` of every hit of a 200.
        query_id: ``X-Query-Id`` of a 200.
        cached: the body's ``cached`` flag of a 200.
    """

    sent: float
    done: float
    tenant: str
    status: int
    retry_after: str | None = None
    code: str | None = None
    index_version: str | None = None
    doc_ids: tuple[str, ...] = ()
    query_id: str | None = None
    cached: bool | None = None


@dataclass
class SearchLoad:
    """Threads sending ``POST /v1/search`` with the tenants' keys in turn.

    Args:
        url: the API's base URL (``http://127.0.0.1:<port>``).
        keys: tenant id → API keys of that tenant (used round-robin).
        queries: query texts (used round-robin).
        threads: concurrent clients.
        max_requests: most requests in all.
        max_seconds: the load stops after this long even if nobody calls :meth:`stop`.
        pause_seconds: pause between two requests of one thread (spares the 2 cores).
        top_k: ``top_k`` of every request.
    """

    url: str
    keys: dict[str, list[str]]
    queries: Sequence[str]
    threads: int = 4
    max_requests: int = 5000
    max_seconds: float = 300.0
    pause_seconds: float = 0.02
    top_k: int = 5
    replies: list[Reply] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._sent = 0

    def start(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i, deadline), daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self) -> None:
        """Stops the threads after their request in flight; returns when they have ended."""
        self._stop.set()
        for t in self._workers:
            t.join(timeout=60)

    def _take(self) -> bool:
        with self._lock:
            if self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _run(self, worker: int, deadline: float) -> None:
        plan = [(tenant, key) for tenant, keys in sorted(self.keys.items()) for key in keys]
        n = worker
        with httpx.Client(timeout=15) as client:
            while not self._stop.is_set() and time.monotonic() < deadline and self._take():
                tenant, key = plan[n % len(plan)]
                query = self.queries[n % len(self.queries)]
                n += self.threads
                reply = self._send(client, tenant, key, query)
                with self._lock:
                    self.replies.append(reply)
                self._stop.wait(self.pause_seconds)

    def _send(self, client: httpx.Client, tenant: str, key: str, query: str) -> Reply:
        sent = time.monotonic()
        try:
            r = client.post(
                f"{self.url}/v1/search",
                json={"query": query, "top_k": self.top_k},
                headers={"Authorization": f"Bearer {key}"},
            )
        except httpx.HTTPError:
            return Reply(sent, time.monotonic(), tenant, -1)
        done = time.monotonic()
        if r.status_code != 200:
            try:
                code = str(r.json()["error"]["code"])
            except (ValueError, KeyError, TypeError):
                code = None
            return Reply(sent, done, tenant, r.status_code, r.headers.get("retry-after"), code)
        body = r.json()
        return Reply(
            sent,
            done,
            tenant,
            200,
            index_version=body["index_version"],
            doc_ids=tuple(h["doc_id"] for h in body["hits"]),
            query_id=r.headers.get("x-query-id"),
            cached=bool(body["cached"]),
        )

    def snapshot(self) -> list[Reply]:
        """The replies so far (a copy)."""
        with self._lock:
            return list(self.replies)

    def wait_for(
        self, predicate: Callable[[Reply], bool], count: int = 1, timeout: float = 60.0
    ) -> list[Reply]:
        """Polls until ``count`` replies satisfy ``predicate``; returns them.

        Raises:
            TimeoutError: fewer within ``timeout`` seconds (or the load ended first).
        """
        deadline = time.monotonic() + timeout
        while True:
            matching = [r for r in self.snapshot() if predicate(r)]
            if len(matching) >= count:
                return matching
            alive = any(t.is_alive() for t in self._workers)
            if time.monotonic() > deadline or not alive:
                statuses = sorted({r.status for r in self.snapshot()})
                raise TimeoutError(
                    f"{len(matching)}/{count} matching replies within {timeout:g} s "
                    f"(statuses seen: {statuses})"
                )
            time.sleep(0.05)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wrong_tenant_hits(replies: Sequence[Reply], allowed: dict[str, set[str]]) -> int:
    """Hits of 200 replies whose ``doc_id`` is not a document of the key's own tenant."""
    return sum(1 for r in replies for d in r.doc_ids if d not in allowed[r.tenant])
