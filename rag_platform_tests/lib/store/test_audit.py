"""The audit log (rag_platform.lib.store.audit), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from rag_platform.lib.store import MetadataStore


class TestAudit:
    def test_audit_rows_in_order_with_filters(self, store: MetadataStore) -> None:
        store.audit("tenant.sync", "acme", "sensor", {"added": 3})
        store.audit("config.reload", None, "cli", {})
        store.audit("tenant.sync", "beta", "sensor", {"added": 1})
        assert [e.action for e in store.list_audit()] == [
            "tenant.sync",
            "config.reload",
            "tenant.sync",
        ]
        (acme,) = store.list_audit("acme")
        assert (acme.tenant, acme.actor, acme.details) == ("acme", "sensor", {"added": 3})
        assert acme.created_at.utcoffset() == timedelta(0)
        assert [e.tenant for e in store.list_audit(action="tenant.sync")] == ["acme", "beta"]
        with pytest.raises(ValueError, match="action"):
            store.audit("", "acme", "x", {})
