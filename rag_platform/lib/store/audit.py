"""The audit log: who did what (key creation and revocation, publish, rollback, ...).

Rows are appended by :class:`AuditRepository` or, inside another aggregate's transaction (a key
created, a version published), by :func:`write_audit`, so the action and its audit row commit
together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, select

from rag_platform.lib.store.db import Database
from rag_platform.lib.store.rows import check_text, from_row
from rag_platform.lib.store.schema import JSONObject, as_utc, audit_log_table, utcnow
from rag_platform.lib.store.tenants import check_tenant


@dataclass
class AuditEntry:
    """One audit-log row. ``tenant`` is None for platform-wide actions."""

    id: int
    action: str
    tenant: str | None
    actor: str
    details: JSONObject
    created_at: datetime


def write_audit(
    conn: Connection, *, action: str, tenant: str | None, actor: str, details: JSONObject
) -> None:
    """Append an audit row in the caller's transaction.

    Args:
        conn: A connection inside a write transaction.
        action: What happened, e.g. ``"key.create"`` (1-64 characters).
        tenant: A checked tenant id, or None for a platform-wide action.
        actor: Who did it (<= 200 characters).
        details: JSON-serialisable details.

    Raises:
        ValueError: Empty or over-long action, over-long actor.
    """
    conn.execute(
        audit_log_table.insert().values(
            action=check_text(action, "action", 64),
            tenant=tenant,
            actor=check_text(actor, "actor", 200, allow_empty=True),
            details=dict(details),
            created_at=utcnow(),
        )
    )


class AuditRepository:
    """The ``audit_log`` table.

    Args:
        db: The database handle.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def append(self, action: str, tenant: str | None, actor: str, details: JSONObject) -> None:
        """Append an audit row in its own transaction (``details`` must be JSON-serialisable).

        Raises:
            ValueError: Empty or over-long action, bad tenant id.
        """
        if tenant is not None:
            check_tenant(tenant)
        with self._db.transaction() as conn:
            write_audit(conn, action=action, tenant=tenant, actor=actor, details=details or {})

    def find(self, tenant: str | None = None, action: str | None = None) -> list[AuditEntry]:
        """Audit rows in the order written (oldest first), optionally for one tenant/action."""
        stmt = select(audit_log_table)
        if tenant is not None:
            stmt = stmt.where(audit_log_table.c.tenant == tenant)
        if action is not None:
            stmt = stmt.where(audit_log_table.c.action == action)
        stmt = stmt.order_by(audit_log_table.c.id)
        with self._db.transaction(write=False) as conn:
            return [from_row(AuditEntry, r) for r in conn.execute(stmt).mappings()]

    def delete_before(self, tenant: str, before: datetime) -> int:
        """Deletes the tenant's audit rows with ``created_at < before`` (retention).

        Only whole prefixes of a tenant's history go (the oldest rows), never a row from the
        middle. Platform-wide rows (``tenant`` NULL) are never deleted here.

        Returns:
            Rows deleted.
        """
        stmt = delete(audit_log_table).where(
            audit_log_table.c.tenant == tenant, audit_log_table.c.created_at < as_utc(before)
        )
        with self._db.transaction() as conn:
            return int(conn.execute(stmt).rowcount)
