"""PostgreSQL stopped and started again while the API is under load.

Required: while the database is down every request answers 503 with ``Retry-After`` (never a
500, never a dropped connection), readiness answers 503; once it is back the service recovers by
itself (no restart) and the query-log rows of the requests it answered are written.
"""

from __future__ import annotations

import time

import pytest

from rag_platform_tests.utils.load import SearchLoad, wrong_tenant_hits
from rag_platform_tests.utils.stack import (
    FaultStack,
    load_queries,
    tenant_doc_ids,
    wait_for_status,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_postgres_restart_under_load(stack: FaultStack) -> None:
    ready_url = f"{stack.api.url}/health/ready"
    with SearchLoad(stack.api.url, stack.keys, load_queries(), max_seconds=240) as load:
        load.wait_for(lambda r: r.status == 200, count=20, timeout=60)
        down_at = time.monotonic()
        stack.pg.stop()
        try:
            ready_down = wait_for_status(ready_url, 503, timeout=30).json()
            marked = time.monotonic()
            load.wait_for(lambda r: r.sent > marked, count=30, timeout=60)
        finally:
            stack.pg.start()
        up_at = time.monotonic()
        # back by itself: no restart of the API
        load.wait_for(lambda r: r.sent > up_at and r.status == 200, count=30, timeout=60)
        ready_up = wait_for_status(ready_url, 200, timeout=60).json()
    replies = load.replies

    assert ready_down["checks"]["database"]["status"] == "down"
    assert ready_up["checks"]["database"]["status"] == "ok"
    assert not [r for r in replies if r.status == -1], "a request got no HTTP response"
    assert not [r.status for r in replies if r.status >= 500 and r.status != 503]
    unavailable = [r for r in replies if r.status == 503]
    assert unavailable, "no request was answered while the database was down"
    assert {r.code for r in unavailable} == {"database_unavailable"}
    assert all(r.done >= down_at and r.sent <= up_at for r in unavailable)
    assert not [r.status for r in replies if r.status not in (200, 503)]
    assert wrong_tenant_hits(replies, {t: tenant_doc_ids(t) for t in stack.keys}) == 0

    # every answered request reaches the query log once the database is back
    answered = {r.query_id for r in replies if r.status == 200}
    deadline = time.monotonic() + 60
    missing = set(answered)
    while missing and time.monotonic() < deadline:
        missing = {q for q in missing if q is None or stack.store.get_query(q) is None}
        if missing:
            time.sleep(0.5)
    assert not missing, f"{len(missing)} of {len(answered)} query-log rows never written"

    # last, so that a missing header does not hide the checks above
    without_retry_after = [r for r in unavailable if not r.retry_after]
    assert not without_retry_after, (
        f"{len(without_retry_after)} of {len(unavailable)} 503 database_unavailable replies "
        "have no Retry-After header"
    )
