"""Feedback: ratings (1..5) of logged queries, by keys of the query's tenant (``feedback``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import delete, select

from rag_platform.lib.crypto import PURPOSE_FEEDBACK, Keyring
from rag_platform.lib.store.db import Database, NotFoundError
from rag_platform.lib.store.rows import check_text, from_row, to_values
from rag_platform.lib.store.schema import as_utc, feedback_table, query_log_table, utcnow


@dataclass
class FeedbackEntry:
    """A rating (1..5) of a logged query."""

    feedback_id: str
    query_id: str
    tenant: str
    key_id: str
    rating: int
    type: str
    comment: str
    created_at: datetime


class FeedbackRepository:
    """The ``feedback`` table.

    Args:
        db: The database handle.
        keyring: Seals ``comment`` at rest (plaintext when it has no master key).
    """

    def __init__(self, db: Database, keyring: Keyring | None = None) -> None:
        self._db = db
        self._keyring = keyring

    def _open(self, entry: FeedbackEntry) -> FeedbackEntry:
        if self._keyring is None or not entry.comment:
            return entry
        return replace(
            entry, comment=self._keyring.open_text(entry.tenant, entry.comment, PURPOSE_FEEDBACK)
        )

    def add(
        self,
        query_id: str,
        tenant: str,
        key_id: str,
        rating: int,
        type: str,
        comment: str = "",
    ) -> str:
        """Store a rating of a logged query; returns the new feedback id (uuid4).

        Args:
            query_id: The ``query_id`` the API returned with the answer.
            tenant: The caller's tenant; must own the query.
            key_id: The caller's key id.
            rating: 1 (bad) .. 5 (good).
            type: Kind of feedback, e.g. ``"answer"``, ``"citation"`` (<= 32 characters).
            comment: Free text (<= 4000 characters).

        Returns:
            The feedback id.

        Raises:
            ValueError: Rating not an integer in 1..5, empty type, comment too long.
            NotFoundError: No query ``query_id`` for ``tenant`` (also when it belongs to another
                tenant: the message does not reveal which).
        """
        if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
            raise ValueError(f"rating must be an integer from 1 to 5, got {rating!r}")
        check_text(type, "feedback type", 32)
        check_text(comment, "comment", 4000, allow_empty=True)
        entry = FeedbackEntry(
            feedback_id=str(uuid.uuid4()),
            query_id=query_id,
            tenant=tenant,
            key_id=key_id or "",
            rating=rating,
            type=type,
            comment=comment,
            created_at=utcnow(),
        )
        values = to_values(entry)
        if self._keyring is not None and comment:  # before the transaction: it may add a key
            values["comment"] = self._keyring.seal_text(tenant, comment, PURPOSE_FEEDBACK)
        owner_stmt = select(query_log_table.c.tenant).where(query_log_table.c.query_id == query_id)
        with self._db.transaction() as conn:
            owner = conn.scalar(owner_stmt)
            if owner is None or owner != tenant:
                raise NotFoundError(f"no query {query_id!r} for tenant {tenant!r}")
            conn.execute(feedback_table.insert().values(**values))
        return entry.feedback_id

    def find(self, tenant: str, query_id: str | None = None) -> list[FeedbackEntry]:
        """The tenant's feedback (optionally for one query), oldest first."""
        stmt = select(feedback_table).where(feedback_table.c.tenant == tenant)
        if query_id is not None:
            stmt = stmt.where(feedback_table.c.query_id == query_id)
        stmt = stmt.order_by(feedback_table.c.created_at, feedback_table.c.feedback_id)
        with self._db.transaction(write=False) as conn:
            rows = [from_row(FeedbackEntry, r) for r in conn.execute(stmt).mappings()]
        return [self._open(e) for e in rows]

    def delete(
        self, tenant: str, *, key_id: str | None = None, before: datetime | None = None
    ) -> int:
        """Deletes the tenant's feedback given by one principal and/or older than a cut-off.

        Args:
            tenant: Tenant id.
            key_id: Only feedback given with this API key; None: any.
            before: Only rows with ``created_at < before`` (naive = UTC); None: any age.

        Returns:
            Rows deleted.

        Raises:
            ValueError: Neither ``key_id`` nor ``before`` given.
        """
        if key_id is None and before is None:
            raise ValueError("give key_id or before: refusing to delete all feedback")
        stmt = delete(feedback_table).where(feedback_table.c.tenant == tenant)
        if key_id is not None:
            stmt = stmt.where(feedback_table.c.key_id == key_id)
        if before is not None:
            stmt = stmt.where(feedback_table.c.created_at < as_utc(before))
        with self._db.transaction() as conn:
            return int(conn.execute(stmt).rowcount)
