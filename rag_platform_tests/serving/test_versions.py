"""The one-second memo of each tenant's published version, over a real metadata store."""

from __future__ import annotations

import time
from pathlib import Path

from rag_platform.lib.store import IndexVersion
from rag_platform_tests.serving.factories import (
    make_settings,
    new_store,
    publish_tenant,
    scifact_docs,
)
from serving.versions import PublishedVersions


class TestPublishedVersions:
    def test_memo_lasts_its_ttl_and_invalidate_forgets_it(self, fast_tmp: Path) -> None:
        settings = make_settings(fast_tmp)
        store = new_store(settings)
        calls: list[str] = []

        def lookup(tenant: str) -> IndexVersion | None:
            calls.append(tenant)
            return store.get_published_version(tenant)

        versions = PublishedVersions(lookup, ttl_seconds=600)
        assert versions.memoized("acme") == (False, None)
        assert versions.get("acme") is None  # nothing published: None is memoised too
        assert versions.memoized("acme") == (True, None)
        publish_tenant(store, settings, "acme", "v1", scifact_docs(0, 2))
        assert versions.get("acme") is None and calls == ["acme"]
        versions.invalidate("acme")
        v1 = versions.get("acme")
        assert v1 is not None and v1.version == "v1" and len(calls) == 2
        short = PublishedVersions(store.get_published_version, ttl_seconds=0.2)
        assert short.get("acme") == v1
        publish_tenant(store, settings, "acme", "v2", scifact_docs(2, 2))
        assert versions.get("acme") == v1  # still memoised
        deadline = time.monotonic() + 10
        while (v := short.get("acme")) is not None and v.version == "v1":
            assert time.monotonic() < deadline, "the memo never expired"
            time.sleep(0.05)
        assert v is not None and v.version == "v2"
        store.dispose()
