"""``rag-platform materialize`` SIGKILLed (process group) during embedding and during the index
build, while the API serves the tenant under load.

Required: the published version keeps answering 200 throughout; the next run publishes; the new
shard holds every source document and each chunk once.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rag_platform_tests.utils.load import SearchLoad, wrong_tenant_hits
from rag_platform_tests.utils.stack import (
    FaultStack,
    audit_published,
    kill_materialization_at,
    load_queries,
    new_shard_marker,
    tenant_doc_ids,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TENANT = "alpha"


def kill_then_rerun(
    stack: FaultStack,
    documents: int,
    step: str,
    marker: Callable[[FaultStack], Callable[[], bool]] | None = None,
) -> None:
    before = stack.published(TENANT)
    assert before is not None
    stack.write_tenants({**stack.documents, TENANT: documents})
    keys = {TENANT: stack.keys[TENANT]}
    with SearchLoad(
        stack.api.url, keys, load_queries(), threads=2, pause_seconds=0.1, max_seconds=900
    ) as load:
        load.wait_for(lambda r: r.status == 200, count=5, timeout=60)
        killed = kill_materialization_at(
            stack, TENANT, step, marker(stack) if marker is not None else None
        )
        assert killed.returncode == -9
        assert step in killed.started and step not in killed.succeeded, killed
        current = stack.published(TENANT)
        assert current is not None and current.version == before.version
        killed_count = len(load.snapshot())

        summary = stack.materialize([TENANT])[0]
        assert summary["published"] is True and summary["documents"] == documents, summary
        after = stack.published(TENANT)
        assert after is not None and after.version != before.version
        load.wait_for(lambda r: r.index_version == after.version, count=5, timeout=60)
    replies = load.replies

    assert {r.status for r in replies} == {200}, "the published version stopped answering"
    assert {r.index_version for r in replies[:killed_count]} == {before.version}
    assert wrong_tenant_hits(replies, {TENANT: tenant_doc_ids(TENANT)}) == 0
    audit = audit_published(stack, TENANT, tenant_doc_ids(TENANT, documents))
    assert audit.version == after.version
    assert audit.documents_lost == 0 and audit.duplicate_chunks == 0, audit
    assert audit.foreign_documents == 0 and audit.points == summary["chunks"], audit


def test_kill_during_embedding_then_the_next_run_publishes(stack: FaultStack) -> None:
    # 180 new abstracts: embedding them takes well over the moment the step starts
    kill_then_rerun(stack, 200, "chunk_embeddings")


def test_kill_during_index_build_then_the_next_run_publishes(stack: FaultStack) -> None:
    # killed once the new shard directory exists, i.e. while the Edge shard is being written
    kill_then_rerun(stack, 260, "search_index", lambda s: new_shard_marker(s, TENANT))
