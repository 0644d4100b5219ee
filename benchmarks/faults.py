"""Fault injection against the whole platform under load; prints one JSON line.

Starts its own PostgreSQL and Redis (never the machine's), two SciFact tenants materialized with
``rag-platform materialize``, and the query API under uvicorn (``rag_platform_tests/utils/
stack.py``). While threads send ``POST /v1/search`` with both tenants' keys, it injects in turn:

1. PostgreSQL stopped, then started again once readiness reports it down;
2. Redis SIGKILLed, then started again;
3. streamed answers (``/v1/query``, SSE) whose clients disconnect after the first event;
4. ``rag-platform materialize`` SIGKILLed (process group) once its embedding step started, after
   ``alpha`` grew to ``--documents`` abstracts; then a run to the end;
5. the same SIGKILLed while the new Edge shard is written (``alpha`` grown by 60 more); then a
   run to the end.

Output (one line)::

    {"faults": 5, "requests": N, "unavailable_503": N, "errors_5xx": 0,
     "wrong_tenant_hits": 0, "documents_lost": 0, "duplicate_chunks": 0,
     "recovery_runs_failed": 0}

``requests`` counts the load's requests sent while a fault was in progress (from its injection
until the service was back, or the re-run published); ``unavailable_503`` the 503s answered to
requests sent while PostgreSQL was down; ``errors_5xx`` every other 5xx of the whole run, plus
requests that got no HTTP response at all; ``wrong_tenant_hits`` hits of another tenant's
documents; ``documents_lost`` and ``duplicate_chunks`` what the shards published after the
killed runs miss or hold twice (a re-run that fails to publish leaves the grown documents
missing: ``recovery_runs_failed`` counts those runs). The last four of the seven must be 0.

Usage::

    .venv/bin/python benchmarks/faults.py [--documents 200] [--threads 4]
"""

from __future__ import annotations

import argparse
import json
import time

import httpx

from rag_platform_tests.utils.load import Reply, SearchLoad, wrong_tenant_hits
from rag_platform_tests.utils.stack import (
    FaultStack,
    audit_published,
    fault_stack,
    kill_materialization_at,
    load_queries,
    new_shard_marker,
    tenant_doc_ids,
    wait_for_status,
)

GROWN_TENANT = "alpha"


def postgres_outage(stack: FaultStack, load: SearchLoad) -> tuple[float, float]:
    """Stops PostgreSQL until readiness and 20 requests saw it down; returns (down, up) times."""
    down = time.monotonic()
    stack.pg.stop()
    try:
        wait_for_status(f"{stack.api.url}/health/ready", 503, timeout=30)
        marked = time.monotonic()
        load.wait_for(lambda r: r.sent > marked, count=20, timeout=60)
    finally:
        stack.pg.start()
    up = time.monotonic()
    load.wait_for(lambda r: r.sent > up and r.status == 200, count=20, timeout=60)
    wait_for_status(f"{stack.api.url}/health/ready", 200, timeout=60)
    return down, up


def redis_outage(stack: FaultStack, load: SearchLoad) -> None:
    """SIGKILLs Redis, lets 40 requests run without it, starts it again."""
    killed = time.monotonic()
    stack.redis.kill()
    try:
        load.wait_for(lambda r: r.sent > killed, count=40, timeout=60)
    finally:
        stack.redis.start()
    restarted = time.monotonic()
    load.wait_for(lambda r: r.sent > restarted and r.status == 200, count=20, timeout=60)


def sse_disconnects(stack: FaultStack, clients: int = 5) -> int:
    """Streamed answers whose clients leave after the first event; returns the 5xx seen."""
    headers = {"Authorization": f"Bearer {stack.new_key('beta', 'sse')}"}
    body = {"query": "What causes antibiotic resistance?", "top_k": 3, "stream": True}
    errors = 0
    with httpx.Client(timeout=60) as client:
        for _ in range(clients):
            with client.stream(
                "POST", f"{stack.api.url}/v1/query", json=body, headers=headers
            ) as r:
                errors += r.status_code >= 500
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        break
    return errors


def killed_materialization(
    stack: FaultStack, documents: int, step: str, at_new_shard: bool
) -> tuple[int, int, bool]:
    """Grows the tenant, SIGKILLs its materialization at ``step``, runs it again to the end.

    Returns:
        (documents of the grown source missing from the shard published afterwards, duplicate
        chunks in it, whether the re-run failed to publish a new version).

    Raises:
        RuntimeError: the step had finished when the run was killed.
    """
    before = stack.published(GROWN_TENANT)
    stack.write_tenants({**stack.documents, GROWN_TENANT: documents})
    marker = new_shard_marker(stack, GROWN_TENANT) if at_new_shard else None
    killed = kill_materialization_at(stack, GROWN_TENANT, step, marker)
    if step in killed.succeeded:
        raise RuntimeError(f"{step} had finished when the run was killed")
    summary = stack.start_materialization(GROWN_TENANT).wait(timeout=900)
    after = stack.published(GROWN_TENANT)
    failed = not summary.get("published") or (
        before is not None and after is not None and after.version == before.version
    )
    audit = audit_published(stack, GROWN_TENANT, tenant_doc_ids(GROWN_TENANT, documents))
    return audit.documents_lost, audit.duplicate_chunks, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=200, help="abstracts alpha grows to")
    parser.add_argument("--threads", type=int, default=4, help="concurrent load clients")
    args = parser.parse_args()

    windows: list[tuple[float, float]] = []
    lost = duplicates = sse_errors = failed_reruns = 0
    with fault_stack() as stack:
        with SearchLoad(
            stack.api.url, stack.keys, load_queries(), threads=args.threads, max_seconds=1800,
            max_requests=200_000, pause_seconds=0.05,
        ) as load:  # fmt: skip
            load.wait_for(lambda r: r.status == 200, count=50, timeout=60)
            db_down = postgres_outage(stack, load)
            windows.append((db_down[0], time.monotonic()))
            start = time.monotonic()
            redis_outage(stack, load)
            windows.append((start, time.monotonic()))
            start = time.monotonic()
            sse_errors = sse_disconnects(stack)
            windows.append((start, time.monotonic()))
            for documents, step, at_new_shard in (
                (args.documents, "chunk_embeddings", False),
                (args.documents + 60, "search_index", True),
            ):
                start = time.monotonic()
                got = killed_materialization(stack, documents, step, at_new_shard)
                lost, duplicates = lost + got[0], duplicates + got[1]
                failed_reruns += got[2]
                windows.append((start, time.monotonic()))
        replies = load.replies
        allowed = {t: tenant_doc_ids(t) for t in stack.keys}

    def in_window(r: Reply) -> bool:
        return any(a <= r.sent <= b for a, b in windows)

    unavailable = [
        r
        for r in replies
        if r.status == 503
        and r.code == "database_unavailable"
        and db_down[0] <= r.sent <= db_down[1]
    ]
    errors = [r for r in replies if r.status == -1 or r.status >= 500]
    report = {
        "faults": len(windows),
        "requests": sum(1 for r in replies if in_window(r)),
        "unavailable_503": len(unavailable),
        "errors_5xx": len(errors) - len(unavailable) + sse_errors,
        "wrong_tenant_hits": wrong_tenant_hits(replies, allowed),
        "documents_lost": lost,
        "duplicate_chunks": duplicates,
        "recovery_runs_failed": failed_reruns,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
