"""The tenants' wrapped data keys (``data_keys``), read and written by
:class:`rag_platform.lib.crypto.Keyring` (the only user)."""

from __future__ import annotations

from sqlalchemy import func, select, update

from rag_platform.lib.crypto import DataKey
from rag_platform.lib.store.db import Database, dialect_insert
from rag_platform.lib.store.rows import from_row
from rag_platform.lib.store.schema import data_keys_table, utcnow
from rag_platform.lib.store.tenants import check_tenant


class DataKeyRepository:
    """The ``data_keys`` table.

    Args:
        db: The database handle.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, tenant: str, version: int) -> DataKey | None:
        """One key version of a tenant (a destroyed one has ``wrapped`` None), or None."""
        t = data_keys_table
        stmt = select(t).where(t.c.tenant == tenant, t.c.version == version)
        with self._db.transaction(write=False) as conn:
            row = conn.execute(stmt).mappings().first()
        return from_row(DataKey, row) if row is not None else None

    def latest(self, tenant: str) -> DataKey | None:
        """The tenant's highest key version (live or destroyed), or None."""
        t = data_keys_table
        top = select(func.max(t.c.version)).where(t.c.tenant == tenant).scalar_subquery()
        stmt = select(t).where(t.c.tenant == tenant, t.c.version == top)
        with self._db.transaction(write=False) as conn:
            row = conn.execute(stmt).mappings().first()
        return from_row(DataKey, row) if row is not None else None

    def insert(self, key: DataKey) -> bool:
        """Adds a key version; False when that version exists already (another process won).

        Raises:
            ValueError: A bad tenant id.
        """
        check_tenant(key.tenant)
        values = {
            "tenant": key.tenant,
            "version": key.version,
            "wrapped": key.wrapped,
            "master_key_id": key.master_key_id,
            "created_at": key.created_at,
        }
        with self._db.transaction() as conn:
            stmt = (
                dialect_insert(conn, data_keys_table)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["tenant", "version"])
                .returning(data_keys_table.c.version)
            )
            return conn.execute(stmt).first() is not None

    def wrapped_keys(self) -> list[DataKey]:
        """Every live (not destroyed) key of every tenant."""
        t = data_keys_table
        stmt = select(t).where(t.c.wrapped.is_not(None)).order_by(t.c.tenant, t.c.version)
        with self._db.transaction(write=False) as conn:
            return [from_row(DataKey, r) for r in conn.execute(stmt).mappings()]

    def rewrap(self, keys: list[DataKey]) -> int:
        """Replaces the wrapped form and master key id of each given key, in one transaction
        (a key destroyed meanwhile stays destroyed). Returns the rows changed."""
        t = data_keys_table
        now = utcnow()
        changed = 0
        with self._db.transaction() as conn:
            for key in keys:
                changed += conn.execute(
                    update(t)
                    .where(
                        t.c.tenant == key.tenant,
                        t.c.version == key.version,
                        t.c.wrapped.is_not(None),
                    )
                    .values(wrapped=key.wrapped, master_key_id=key.master_key_id, rotated_at=now)
                ).rowcount
        return changed

    def destroy(self, tenant: str) -> int:
        """Erases the wrapped form of every live key of ``tenant`` (crypto-shredding); the
        rows stay, so a version is never reused. Returns the keys destroyed."""
        t = data_keys_table
        with self._db.transaction() as conn:
            return int(
                conn.execute(
                    update(t)
                    .where(t.c.tenant == tenant, t.c.wrapped.is_not(None))
                    .values(wrapped=None, destroyed_at=utcnow())
                ).rowcount
            )
