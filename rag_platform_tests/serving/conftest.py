"""Shared serving fixtures: two tenants with real shards, real keys, a running app."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rag_platform.lib.store import MetadataStore
from rag_platform.settings import Settings
from rag_platform_tests.serving.factories import (
    Doc,
    chunk_ids,
    fast_home,
    make_settings,
    new_store,
    publish_tenant,
    scifact_docs,
)
from serving.main import create_app

TENANT_A = "acme"
TENANT_B = "globex"


@dataclass
class World:
    """Two published tenants and their keys.

    ``acme`` holds SciFact abstracts 0-29; abstract 0 is visible to group ``secret`` only.
    ``globex`` holds abstracts 30-59. Keys: ``a_reader`` (groups all), ``a_secret``
    (all + secret), ``a_admin`` (admin, all), ``b_reader`` (all), ``b_admin``.
    """

    home: Path
    settings: Settings
    store: MetadataStore
    docs: dict[str, list[Doc]]
    keys: dict[str, str] = field(default_factory=dict)
    key_ids: dict[str, str] = field(default_factory=dict)

    @property
    def hidden_doc(self) -> Doc:
        return self.docs[TENANT_A][0]

    @property
    def hidden_chunk_id(self) -> str:
        return chunk_ids(TENANT_A, self.hidden_doc)[1]

    def chunk_ids_of(self, tenant: str) -> set[str]:
        return {chunk_ids(tenant, d)[1] for d in self.docs[tenant]}

    def add_key(self, name: str, tenant: str, groups: list[str], role: str = "reader") -> str:
        info, plaintext = self.store.create_api_key(
            tenant, groups, role=role, name=name, actor="test"
        )
        self.keys[name], self.key_ids[name] = plaintext, info.key_id
        return plaintext


def build_world(home: Path, **overrides: object) -> World:
    settings = make_settings(home, **overrides)
    store = new_store(settings)
    docs_a = scifact_docs(0, 30)
    docs_a[0].acl_groups = ["secret"]
    docs_b = scifact_docs(30, 30)
    publish_tenant(store, settings, TENANT_A, "v1", docs_a)
    publish_tenant(store, settings, TENANT_B, "v1", docs_b)
    world = World(home, settings, store, {TENANT_A: docs_a, TENANT_B: docs_b})
    world.add_key("a_reader", TENANT_A, ["all"])
    world.add_key("a_secret", TENANT_A, ["all", "secret"])
    world.add_key("a_admin", TENANT_A, ["all"], role="admin")
    world.add_key("b_reader", TENANT_B, ["all"])
    world.add_key("b_admin", TENANT_B, ["all"], role="admin")
    return world


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with fast_home() as home:
        w = build_world(home)
        yield w
        w.store.dispose()


@pytest.fixture
def fast_tmp() -> Iterator[Path]:
    """A per-test home on tmpfs when available (see ``factories.fast_home``)."""
    with fast_home() as home:
        yield home


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[TestClient]:
    app = create_app(world.settings)
    with TestClient(app) as c:
        yield c
