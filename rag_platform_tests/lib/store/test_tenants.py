"""Tenants (rag_platform.lib.store.tenants), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from rag_platform.lib.store import MetadataStore


class TestTenants:
    def test_upsert_and_list(self, store: MetadataStore) -> None:
        store.upsert_tenant("zeta")
        store.upsert_tenant("acme", name="Acme Corp")
        store.upsert_tenant("acme")  # no name: keeps the old one
        store.upsert_tenant("acme", name="ACME")
        assert store.list_tenants() == ["acme", "zeta"]
        with store.engine.connect() as conn:
            assert (
                conn.execute(text("SELECT name FROM tenants WHERE tenant_id='acme'")).scalar()
                == "ACME"
            )

    @pytest.mark.parametrize("bad", ["", "Acme", "a b", "-x", "x" * 64])
    def test_invalid_tenant_id_is_refused(self, store: MetadataStore, bad: str) -> None:
        with pytest.raises(ValueError, match="invalid tenant id"):
            store.upsert_tenant(bad)
