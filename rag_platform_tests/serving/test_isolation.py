"""Property test: no response ever carries a chunk of another tenant or outside the groups.

Hypothesis draws tenants (2-3), their documents (SciFact abstracts, often the *same* abstract in
several tenants, so only the tenant-scoped chunk id tells them apart), each document's ACL
groups, principals with random groups (possibly none) and a question (a document title or
random text). Every principal searches twice (the second is a cache hit), in half the examples
one of them also asks (JSON or stream), and each sends feedback on another tenant's query id.
Each response must hold only chunks of the principal's tenant that share a group with the
principal, and no error may name another tenant's data. Shards are real Edge versions,
published in a real store, served by one app.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag_platform.lib.store import MetadataStore
from rag_platform.settings import Settings
from rag_platform_tests.serving.factories import (
    Doc,
    bearer,
    chunk_ids,
    fast_home,
    make_settings,
    new_store,
    publish_tenant,
    scifact_docs,
)
from serving.main import create_app

POOL = scifact_docs(100, 12)
GROUPS = ["g1", "g2", "g3"]


@dataclass
class Env:
    settings: Settings
    store: MetadataStore
    client: TestClient


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with fast_home("rag-isolation-") as home:
        s = make_settings(home)
        store = new_store(s)
        with TestClient(create_app(s)) as c:
            yield Env(s, store, c)
        store.dispose()


doc_spec = st.tuples(
    st.integers(0, len(POOL) - 1),
    st.lists(st.sampled_from(GROUPS), min_size=1, max_size=3, unique=True),
)
tenant_spec = st.tuples(
    st.lists(doc_spec, min_size=1, max_size=4, unique_by=lambda d: d[0]),
    st.lists(st.lists(st.sampled_from(GROUPS), max_size=3, unique=True), min_size=1, max_size=2),
)
question = st.one_of(
    st.sampled_from([d.title for d in POOL]),
    st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40
    ).filter(lambda q: q.strip()),
)


def _hits_of(resp_json: dict[str, object]) -> list[dict[str, object]]:
    return list(resp_json.get("hits", []))  # type: ignore[call-overload]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    tenants=st.lists(tenant_spec, min_size=2, max_size=3),
    q=question,
    top_k=st.integers(1, 5),
    asker_index=st.integers(0, 5),
    stream=st.sampled_from([None, None, False, True]),
)
def test_no_response_crosses_tenant_or_acl(
    env: Env,
    tenants: list[tuple[list[tuple[int, list[str]]], list[list[str]]]],
    q: str,
    top_k: int,
    asker_index: int,
    stream: bool | None,
) -> None:
    run = uuid.uuid4().hex[:8]
    names = [f"t{i}-{run}" for i in range(len(tenants))]
    visible: dict[tuple[str, str], set[str]] = {}  # (tenant, key) -> chunk ids it may see
    all_chunks: dict[str, str] = {}  # chunk id -> tenant
    keys: list[tuple[str, str]] = []
    for name, (doc_specs, principals) in zip(names, tenants, strict=True):
        docs = [
            Doc(POOL[i].native_id, POOL[i].title, POOL[i].text, acl_groups=groups)
            for i, groups in doc_specs
        ]
        publish_tenant(env.store, env.settings, name, "v1", docs)
        for d in docs:
            all_chunks[chunk_ids(name, d)[1]] = name
        for groups in principals:
            _, key = env.store.create_api_key(name, groups, actor="test")
            keys.append((name, key))
            visible[(name, key)] = {
                chunk_ids(name, d)[1] for d in docs if set(d.acl_groups) & set(groups)
            }

    foreign_query_ids: dict[str, str] = {}
    # the extractive answerer costs ~2 s on a busy 2-core machine: at most one principal asks
    asker = keys[asker_index % len(keys)][1]
    try:
        for tenant, key in keys:
            allowed = visible[(tenant, key)]
            others = {c for c, t in all_chunks.items() if t != tenant}
            calls: list[tuple[str, dict[str, object]]] = [("/v1/search", {}), ("/v1/search", {})]
            if key == asker and stream is not None:
                calls.append(("/v1/query", {"stream": stream}))
            for path, extra in calls:  # the second search is served from the cache
                r = env.client.post(
                    path, json={"query": q, "top_k": top_k, **extra}, headers=bearer(key)
                )
                assert r.status_code < 500, r.text
                text = r.text
                assert not any(c in text for c in others), "another tenant's chunk leaked"
                if r.status_code != 200:
                    continue
                if extra.get("stream"):
                    events = [
                        json.loads(line[6:])
                        for line in text.splitlines()
                        if line.startswith("data: ")
                    ]
                    hits = events[0]["hits"]
                    cited = {c["chunk_id"] for c in events[-2]["citations"]}
                else:
                    body = r.json()
                    hits = _hits_of(body)
                    cited = {c["chunk_id"] for c in body.get("citations", [])}
                    foreign_query_ids.setdefault(tenant, body["query_id"])
                got = {h["chunk_id"] for h in hits}
                assert got <= allowed, "a hit outside the principal's tenant or groups"
                assert cited <= got
                assert len(got) == min(top_k, len(allowed))
        # feedback on another tenant's query: 404 that names nothing of the other tenant
        for tenant, key in keys:
            for other, qid in foreign_query_ids.items():
                if other == tenant:
                    continue
                r = env.client.post(
                    "/v1/feedback", json={"query_id": qid, "rating": 3}, headers=bearer(key)
                )
                assert r.status_code == 404
                assert other not in r.text and qid not in r.json()["error"]["message"]
    finally:
        pool = env.client.app.state.serving.backend  # type: ignore[attr-defined]
        for name in names:
            pool.release_tenant(name)
