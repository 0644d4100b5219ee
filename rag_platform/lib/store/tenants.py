"""Tenants of the metadata store (the registry YAML is the source of their configuration).

Other aggregates refer to a tenant row (API keys by foreign key), so :func:`ensure_tenant` is
also called inside their transactions.
"""

from __future__ import annotations

import re

from sqlalchemy import Connection, select

from rag_platform.lib.store.db import Database, dialect_insert
from rag_platform.lib.store.rows import check_text
from rag_platform.lib.store.schema import tenants_table, utcnow
from rag_platform.lib.tenants import TENANT_ID_PATTERN


def check_tenant(tenant: str) -> str:
    """Check a tenant id against ``TENANT_ID_PATTERN``.

    Returns:
        ``tenant`` unchanged.

    Raises:
        ValueError: Not a string of lowercase letters, digits and ``-`` (1-63 characters, not
            starting with ``-``).
    """
    if not isinstance(tenant, str) or not re.fullmatch(TENANT_ID_PATTERN, tenant):
        raise ValueError(
            f"invalid tenant id {tenant!r}: expected {TENANT_ID_PATTERN} "
            "(lowercase letters, digits, '-')"
        )
    return tenant


def ensure_tenant(conn: Connection, *, tenant_id: str, name: str = "") -> None:
    """Create the tenant row if missing; set its display name when ``name`` is given.

    Args:
        conn: A connection inside a write transaction.
        tenant_id: A checked tenant id (:func:`check_tenant`).
        name: Display name; empty keeps the current one.
    """
    stmt = dialect_insert(conn, tenants_table).values(
        tenant_id=tenant_id, name=name, created_at=utcnow()
    )
    if name:
        conn.execute(stmt.on_conflict_do_update(index_elements=["tenant_id"], set_={"name": name}))
    else:
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["tenant_id"]))


class TenantRepository:
    """The ``tenants`` table.

    Args:
        db: The database handle.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def upsert(self, tenant_id: str, name: str = "") -> None:
        """Create the tenant, or update its display name when ``name`` is given.

        Args:
            tenant_id: Tenant id.
            name: Display name (<= 200 characters); empty keeps the current one.

        Raises:
            ValueError: If ``tenant_id`` does not match ``TENANT_ID_PATTERN`` or ``name`` is
                too long.
        """
        check_tenant(tenant_id)
        check_text(name, "tenant name", 200, allow_empty=True)
        with self._db.transaction() as conn:
            ensure_tenant(conn, tenant_id=tenant_id, name=name)

    def find(self) -> list[str]:
        """Tenant ids, sorted."""
        with self._db.transaction(write=False) as conn:
            return list(
                conn.scalars(select(tenants_table.c.tenant_id).order_by(tenants_table.c.tenant_id))
            )

    def exists(self, tenant_id: str) -> bool:
        """Whether the tenant has a row (False for an id that is not a valid tenant id)."""
        try:
            check_tenant(tenant_id)
        except ValueError:
            return False
        with self._db.transaction(write=False) as conn:
            row = conn.execute(
                select(tenants_table.c.tenant_id).where(tenants_table.c.tenant_id == tenant_id)
            ).first()
            return row is not None
