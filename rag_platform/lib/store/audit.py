"""The audit log: who did what (key creation and revocation, publish, rollback, ...), as a hash
chain.

Rows are appended by :class:`AuditRepository` or, inside another aggregate's transaction (a key
created, a version published), by :func:`write_audit`, so the action and its audit row commit
together.

Tamper evidence: every row carries ``prev_hash``, the ``row_hash`` of the row written before it
(:data:`GENESIS_HASH` for the first), and ``row_hash = SHA-256(canonical(row))`` where the
canonical serialization (:func:`canonical_audit_bytes`) covers the id, action, tenant, actor,
details, creation time and ``prev_hash``. Editing any field of a row changes its hash; deleting a
row leaves its successor pointing at a hash no remaining row has. :func:`verify_audit_chain`
walks the chain in id order and reports the first broken row. Retention deletes old rows
through :func:`prune_audit`, which records the new first row in a chained ``audit.prune`` row, so
a pruned log still verifies while any other deletion of the first rows does not.

Writers are serialized so the chain never forks: on PostgreSQL by a transaction-scoped advisory
lock taken before the last row is read (held until commit, so the next writer reads this row);
on SQLite by the database's one write lock (every write transaction is ``BEGIN IMMEDIATE``).

A plain hash chain detects edits by anyone who does not also rewrite every later row; an
attacker with write access who recomputes the rest of the chain is caught only by comparing the
head hash (``rag-platform audit verify`` prints it) with a copy kept elsewhere, the usual
anchoring of a hash chain (Haber & Stornetta 1991; RFC 6962's signed tree heads).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, func, select

from rag_platform.lib.store.db import Database, lock_tenant
from rag_platform.lib.store.rows import check_text, from_row
from rag_platform.lib.store.schema import JSONObject, as_utc, audit_log_table, utcnow
from rag_platform.lib.store.tenants import check_tenant

#: ``prev_hash`` of the first row of the chain (64 zeros).
GENESIS_HASH = "0" * 64
#: Action of the row :func:`prune_audit` appends: it anchors the chain's new first row.
PRUNE_ACTION = "audit.prune"
#: Rows read per batch by :func:`verify_audit_chain`.
_VERIFY_BATCH = 1000


@dataclass
class AuditEntry:
    """One audit-log row. ``tenant`` is None for platform-wide actions."""

    id: int
    action: str
    tenant: str | None
    actor: str
    details: JSONObject
    created_at: datetime
    prev_hash: str | None = None
    row_hash: str | None = None


@dataclass(frozen=True)
class ChainReport:
    """The outcome of :func:`verify_audit_chain`.

    Attributes:
        intact: Whether every row links to its predecessor and hashes to its ``row_hash``.
        rows: Rows checked (up to and including the broken one).
        head_hash: ``row_hash`` of the last row (:data:`GENESIS_HASH` for an empty log); keep a
            copy elsewhere to detect a rewritten chain.
        broken_id: Id of the first broken row, None when intact.
        reason: Why it is broken (``"row_hash mismatch"`` ...), None when intact.
    """

    intact: bool
    rows: int
    head_hash: str
    broken_id: int | None = None
    reason: str | None = None

    def to_dict(self) -> JSONObject:
        return {
            "intact": self.intact,
            "rows": self.rows,
            "head_hash": self.head_hash,
            "broken_id": self.broken_id,
            "reason": self.reason,
        }


def canonical_audit_bytes(
    *,
    id: int,
    action: str,
    tenant: str | None,
    actor: str,
    details: JSONObject,
    created_at: datetime,
    prev_hash: str,
) -> bytes:
    """The canonical serialization of an audit row that its hash covers.

    JSON with sorted keys, no insignificant whitespace and non-ASCII escaped (the RFC 8785
    approach for the values this log holds: strings, integers, JSON objects); ``created_at`` as
    ISO 8601 UTC with microseconds.

    Returns:
        UTF-8 bytes.

    Raises:
        TypeError: ``details`` is not JSON-serialisable.
    """
    return json.dumps(
        {
            "id": id,
            "action": action,
            "tenant": tenant,
            "actor": actor,
            "details": details,
            "created_at": as_utc(created_at).isoformat(timespec="microseconds"),
            "prev_hash": prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    ).encode("ascii")


def audit_row_hash(**row: object) -> str:
    """``SHA-256(canonical_audit_bytes(**row))`` as 64 hex characters."""
    return hashlib.sha256(canonical_audit_bytes(**row)).hexdigest()  # type: ignore[arg-type]


def entry_hash(entry: AuditEntry, prev_hash: str | None = None) -> str:
    """The hash ``entry`` must carry, linked to ``prev_hash`` (default: its own)."""
    return audit_row_hash(
        id=entry.id,
        action=entry.action,
        tenant=entry.tenant,
        actor=entry.actor,
        details=entry.details,
        created_at=entry.created_at,
        prev_hash=entry.prev_hash if prev_hash is None else prev_hash,
    )


def write_audit(
    conn: Connection,
    *,
    action: str,
    tenant: str | None,
    actor: str,
    details: JSONObject,
    created_at: datetime | None = None,
) -> int:
    """Append an audit row, linked to the last one, in the caller's transaction.

    Args:
        conn: A connection inside a write transaction.
        action: What happened, e.g. ``"key.create"`` (1-64 characters).
        tenant: A checked tenant id, or None for a platform-wide action.
        actor: Who did it (<= 200 characters).
        details: JSON-serialisable details.
        created_at: When it happened; default now (a restore passes the original time).

    Returns:
        The new row's id.

    Raises:
        ValueError: Empty or over-long action, over-long actor, details not JSON.
    """
    check_text(action, "action", 64)
    check_text(actor, "actor", 200, allow_empty=True)
    try:
        # the value as it reads back from the JSON column, which is what verify hashes
        stored_details = json.loads(json.dumps(dict(details), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"audit details must be JSON-serialisable: {exc}") from exc
    at = as_utc(created_at) if created_at is not None else utcnow()
    lock_tenant(conn, "audit-chain", "*")  # PostgreSQL; SQLite holds its write lock already
    last = conn.execute(
        select(audit_log_table.c.row_hash).order_by(audit_log_table.c.id.desc()).limit(1)
    ).scalar()
    prev_hash = last or GENESIS_HASH
    values = {
        "action": action,
        "tenant": tenant,
        "actor": actor,
        "details": stored_details,
        "created_at": at,
        "prev_hash": prev_hash,
    }
    row_id = conn.execute(
        audit_log_table.insert().values(**values).returning(audit_log_table.c.id)
    ).scalar_one()
    row_hash = audit_row_hash(id=row_id, **values)
    conn.execute(
        audit_log_table.update().where(audit_log_table.c.id == row_id).values(row_hash=row_hash)
    )
    return int(row_id)


def _rows(conn: Connection) -> Iterator[AuditEntry]:
    after = None
    while True:
        stmt = select(audit_log_table).order_by(audit_log_table.c.id).limit(_VERIFY_BATCH)
        if after is not None:
            stmt = stmt.where(audit_log_table.c.id > after)
        batch = [from_row(AuditEntry, r) for r in conn.execute(stmt).mappings()]
        if not batch:
            return
        yield from batch
        after = batch[-1].id


def _prune_anchors(conn: Connection) -> set[tuple[int, str]]:
    """``(anchor_id, anchor_prev_hash)`` of every prune row (each is itself in the chain)."""
    anchors = set()
    stmt = select(audit_log_table.c.details).where(audit_log_table.c.action == PRUNE_ACTION)
    for details in conn.scalars(stmt):
        if isinstance(details, dict):
            anchor_id, anchor_prev = details.get("anchor_id"), details.get("anchor_prev_hash")
            if isinstance(anchor_id, int) and isinstance(anchor_prev, str):
                anchors.add((anchor_id, anchor_prev))
    return anchors


def prune_audit(conn: Connection, *, before: datetime, actor: str) -> int:
    """Delete the audit rows older than ``before`` (retention) without breaking verification.

    In the caller's write transaction, under the chain's lock: deletes every row with an id
    below the first row created at or after ``before``, then appends an ``audit.prune`` row
    whose details record that first kept row's id and ``prev_hash`` (the anchor
    :func:`verify_audit_chain` accepts in place of the genesis hash). Nothing is deleted when
    no row is that recent (the newest row always stays, so the chain keeps its head).

    Args:
        conn: A connection inside a write transaction.
        before: Cut-off time (aware; naive is taken as UTC).
        actor: Who prunes (e.g. ``"retention"``).

    Returns:
        Rows deleted.
    """
    lock_tenant(conn, "audit-chain", "*")
    cutoff = as_utc(before)
    first_kept = conn.execute(
        select(audit_log_table.c.id, audit_log_table.c.prev_hash)
        .where(audit_log_table.c.created_at >= cutoff)
        .order_by(audit_log_table.c.id)
        .limit(1)
    ).first()
    if first_kept is None:
        return 0
    older = audit_log_table.c.id < first_kept.id
    deleted = conn.execute(select(func.count()).select_from(audit_log_table).where(older)).scalar()
    if not deleted:
        return 0
    conn.execute(delete(audit_log_table).where(older))
    write_audit(
        conn,
        action=PRUNE_ACTION,
        tenant=None,
        actor=actor,
        details={
            "anchor_id": first_kept.id,
            "anchor_prev_hash": first_kept.prev_hash,
            "deleted": int(deleted),
            "before": cutoff.isoformat(),
        },
    )
    return int(deleted)


def verify_audit_chain(conn: Connection) -> ChainReport:
    """Walk the audit log in id order and check every link and every row hash.

    Args:
        conn: A connection (a read transaction gives one consistent snapshot on PostgreSQL's
            REPEATABLE READ or SQLite; READ COMMITTED may see rows appended meanwhile, which
            are checked like any other).

    Returns:
        The :class:`ChainReport`; the first broken row is reported with one of the reasons
        ``"first row does not start the chain (rows before it were deleted)"``,
        ``"prev_hash does not match row <id> (a row between them was deleted or edited)"``,
        ``"row_hash mismatch (the row was edited)"`` or ``"row has no hash"``.
    """
    anchors = _prune_anchors(conn)
    prev = GENESIS_HASH
    prev_id: int | None = None
    count = 0
    for row in _rows(conn):
        count += 1
        if row.row_hash is None or row.prev_hash is None:
            return ChainReport(False, count, prev, row.id, "row has no hash")
        if prev_id is None and (row.id, row.prev_hash) in anchors:
            prev = row.prev_hash  # rows before it were pruned, and a chained row says so
        if row.prev_hash != prev:
            reason = (
                "first row does not start the chain (rows before it were deleted)"
                if prev_id is None
                else f"prev_hash does not match row {prev_id} "
                "(a row between them was deleted or edited)"
            )
            return ChainReport(False, count, prev, row.id, reason)
        try:
            expected = entry_hash(row)
        except (TypeError, ValueError):
            expected = ""
        if expected != row.row_hash:
            return ChainReport(False, count, prev, row.id, "row_hash mismatch (the row was edited)")
        prev, prev_id = row.row_hash, row.id
    return ChainReport(True, count, prev)


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

    def prune(self, before: datetime, actor: str = "retention") -> int:
        """Delete rows older than ``before`` and anchor the rest; see :func:`prune_audit`."""
        with self._db.transaction() as conn:
            return prune_audit(conn, before=before, actor=actor)

    def verify(self) -> ChainReport:
        """Check the whole chain; see :func:`verify_audit_chain`."""
        with self._db.transaction(write=False) as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return verify_audit_chain(conn)
