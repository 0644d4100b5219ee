"""Erased documents (``document_suppressions``): the per-tenant suppression list.

A suppressed document is left out of every sync (so a re-sync of its source does not bring it
back), hence out of every index version built after its erasure, and out of every search of
the published version (the API excludes its id inside the index query). Releasing it deletes
the row; the audit log keeps both events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select

from rag_platform.lib.store.audit import write_audit
from rag_platform.lib.store.db import Database, dialect_insert
from rag_platform.lib.store.rows import check_text, from_row
from rag_platform.lib.store.schema import document_suppressions_table, utcnow
from rag_platform.lib.store.tenants import check_tenant


@dataclass
class Suppression:
    """One erased document of a tenant."""

    tenant: str
    doc_id: str
    source_id: str
    uri: str
    reason: str
    actor: str
    created_at: datetime


class SuppressionRepository:
    """The ``document_suppressions`` table.

    Args:
        db: The database handle.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(
        self,
        tenant: str,
        doc_id: str,
        source_id: str = "",
        uri: str = "",
        reason: str = "",
        actor: str = "cli",
    ) -> Suppression:
        """Suppresses a document (idempotent: a second call keeps the first row).

        Args:
            tenant: Tenant id.
            doc_id: The document id (a UUID string, <= 36 characters).
            source_id: The document's source (<= 100 characters), "" when unknown.
            uri: The document's URI, for operators.
            reason: Why (<= 500 characters), e.g. ``"erasure request"``.
            actor: Who (<= 200 characters).

        Returns:
            The stored row.

        Raises:
            ValueError: A bad tenant id, an empty or over-long doc id, over-long fields.
        """
        check_tenant(tenant)
        values = {
            "tenant": tenant,
            "doc_id": check_text(doc_id, "doc_id", 36),
            "source_id": check_text(source_id, "source_id", 100, allow_empty=True),
            "uri": uri,
            "reason": check_text(reason, "reason", 500, allow_empty=True),
            "actor": check_text(actor, "actor", 200, allow_empty=True),
            "created_at": utcnow(),
        }
        table = document_suppressions_table
        with self._db.transaction() as conn:
            conn.execute(
                dialect_insert(conn, table)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["tenant", "doc_id"])
            )
            row = (
                conn.execute(
                    select(table).where(table.c.tenant == tenant, table.c.doc_id == doc_id)
                )
                .mappings()
                .one()
            )
        return from_row(Suppression, row)

    def release(self, tenant: str, doc_id: str, actor: str = "cli") -> bool:
        """Lifts a suppression (the next sync brings the document back if its source still has
        it); writes a ``document.release`` audit row in the same transaction.

        Returns:
            False when the document was not suppressed.
        """
        check_tenant(tenant)
        table = document_suppressions_table
        with self._db.transaction() as conn:
            gone = conn.execute(
                delete(table).where(table.c.tenant == tenant, table.c.doc_id == doc_id)
            ).rowcount
            if gone:
                write_audit(
                    conn,
                    action="document.release",
                    tenant=tenant,
                    actor=actor,
                    details={"doc_id": doc_id},
                )
        return bool(gone)

    def find(self, tenant: str) -> list[Suppression]:
        """The tenant's suppressed documents, oldest first."""
        table = document_suppressions_table
        stmt = (
            select(table)
            .where(table.c.tenant == tenant)
            .order_by(table.c.created_at, table.c.doc_id)
        )
        with self._db.transaction(write=False) as conn:
            return [from_row(Suppression, r) for r in conn.execute(stmt).mappings()]

    def doc_ids(self, tenant: str) -> frozenset[str]:
        """Ids of the tenant's suppressed documents."""
        table = document_suppressions_table
        stmt = select(table.c.doc_id).where(table.c.tenant == tenant)
        with self._db.transaction(write=False) as conn:
            return frozenset(str(r) for r in conn.execute(stmt).scalars())
