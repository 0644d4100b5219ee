"""The index-version lifecycle: its allowed transitions as data and the one path that applies them.

::

    building ─▶ built ─▶ published ─▶ retired ─▶ deleted
        │         │  ▲                  │
        │         │  └── rollback ──────┘   (only if it was published before)
        ▼         ▼
        rejected ─────────────────────────▶ deleted
    built ─▶ deleted                         (garbage collection of never-published builds)

Every status change of an index version goes through :func:`apply_transition`, inside a write
transaction that holds the tenant's version lock (:func:`lock_versions`), and writes its audit
row (``index.transition``, ``index.publish`` or ``index.rollback``, with the from/to status, the
actor and the reasons) in that same transaction. Anything the table :data:`TRANSITIONS` does not
allow raises :class:`VersionTransitionError`, whose ``code`` says why: a ``rejected`` version can
never be published again, and only versions that were published before (``first_published_at``
is set) can be rolled back to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypedDict

from sqlalchemy import Connection, RowMapping, update

from rag_platform.lib.store.audit import write_audit
from rag_platform.lib.store.db import lock_tenant
from rag_platform.lib.store.schema import JSONObject, VersionStatus, index_versions_table, utcnow

#: The allowed status changes: ``TRANSITIONS[from]`` is the set of statuses ``from`` may become.
#: ``retired → published`` (a rollback) additionally needs the version to have been published
#: before; nothing leaves ``deleted``.
TRANSITIONS: Mapping[VersionStatus, frozenset[VersionStatus]] = {
    "building": frozenset({"built", "rejected"}),
    "built": frozenset({"rejected", "published", "deleted"}),
    "published": frozenset({"retired"}),
    "retired": frozenset({"published", "deleted"}),
    "rejected": frozenset({"deleted"}),
    "deleted": frozenset(),
}

#: Why a transition was refused.
#:
#: - ``version_rejected``: the version was rejected by a blocking check; it can only be deleted.
#: - ``never_published``: a rollback target that was never published (e.g. a ``built`` version).
#: - ``already_published``: the target is the version being served.
#: - ``no_rollback_target``: no earlier, previously published version to roll back to.
#: - ``receipt_failed``: the version's reconciliation receipt did not pass.
#: - ``invalid_transition``: anything else :data:`TRANSITIONS` does not allow.
TransitionErrorCode = Literal[
    "version_rejected",
    "never_published",
    "already_published",
    "no_rollback_target",
    "receipt_failed",
    "invalid_transition",
]

#: Audit action of a transition: publish and rollback keep their names, everything else is
#: ``index.transition``.
TransitionAction = Literal["index.transition", "index.publish", "index.rollback"]

#: Advisory-lock purpose serialising every status change of one tenant's versions.
_LOCK_PURPOSE = "index_versions"

_t = index_versions_table


class FailedCheck(TypedDict):
    """One blocking check that refused a version: its name and the human reasons."""

    name: str
    reasons: list[str]


class VersionTransitionError(ValueError):
    """A status change the lifecycle does not allow (the API answers 409 with ``reason``).

    Args:
        code: Why, machine-readable (:data:`TransitionErrorCode`).
        reason: Why, for humans; for a rejected version it includes the rejection reasons.

    Attributes:
        code: As given.
        reason: As given (also the exception's message).
    """

    def __init__(self, code: TransitionErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code: TransitionErrorCode = code
        self.reason = reason


def lock_versions(conn: Connection, tenant: str) -> None:
    """Serialise status changes of ``tenant``'s versions until the transaction ends.

    Args:
        conn: A connection inside a write transaction.
        tenant: Tenant id.
    """
    lock_tenant(conn, _LOCK_PURPOSE, tenant)


def failed_checks_of(details: JSONObject) -> list[FailedCheck]:
    """The failed checks recorded by a rejection in a version's ``details`` (empty if none)."""
    return [
        FailedCheck(name=str(c["name"]), reasons=[str(r) for r in c["reasons"]])
        for c in details.get("failed_checks", [])
    ]


def rejection_summary(details: JSONObject) -> str:
    """The failed checks of a rejected version as one line: ``name: reason; reason | name: ...``."""
    checks = failed_checks_of(details)
    if not checks:
        return "no reasons recorded"
    return " | ".join(f"{c['name']}: {'; '.join(c['reasons']) or 'failed'}" for c in checks)


def _label(row: RowMapping) -> str:
    return f"version {row['version']!r} of tenant {row['tenant']!r}"


def check_transition(row: RowMapping, to: VersionStatus) -> None:
    """Raise unless the version in ``row`` may move to status ``to``.

    Args:
        row: The version's ``index_versions`` row (read under the tenant's version lock).
        to: The status wanted.

    Raises:
        VersionTransitionError: ``version_rejected`` for any change of a rejected version but its
            deletion (the message includes the failed checks); ``already_published`` for
            publishing the published version; ``never_published`` for publishing a ``retired``
            version that was never published; ``receipt_failed`` for publishing a version whose
            recorded reconciliation receipt did not pass; ``invalid_transition`` otherwise.
    """
    current: VersionStatus = row["status"]
    if current == "rejected" and to != "deleted":
        raise VersionTransitionError(
            "version_rejected",
            f"{_label(row)} was rejected and can never be {to}: "
            f"{rejection_summary(row['details'])}",
        )
    if current == "published" and to == "published":
        raise VersionTransitionError("already_published", f"{_label(row)} is already published")
    if to not in TRANSITIONS[current]:
        hint = "; publish or roll back to another version first" if current == "published" else ""
        raise VersionTransitionError(
            "invalid_transition",
            f"{_label(row)} cannot go from {current!r} to {to!r}{hint} (allowed from "
            f"{current!r}: {', '.join(sorted(TRANSITIONS[current])) or 'nothing'})",
        )
    if to == "published" and current == "retired" and row["first_published_at"] is None:
        raise VersionTransitionError(
            "never_published", f"{_label(row)} was never published; it is no rollback target"
        )
    receipt = row["details"].get("receipt")
    if to == "published" and isinstance(receipt, dict) and receipt.get("passed") is False:
        counts = ", ".join(
            f"{receipt.get(k, 0)} {k}"
            for k in ("documents_missing", "orphans", "acl_mismatches", "chunk_count_mismatches")
        )
        raise VersionTransitionError(
            "receipt_failed", f"{_label(row)} failed its reconciliation receipt: {counts}"
        )


def apply_transition(
    conn: Connection,
    row: RowMapping,
    to: VersionStatus,
    *,
    actor: str,
    action: TransitionAction = "index.transition",
    reasons: list[str] | list[FailedCheck] | None = None,
    details: JSONObject | None = None,
    audit: JSONObject | None = None,
) -> None:
    """Check and apply one status change, and write its audit row, in the caller's transaction.

    The caller holds :func:`lock_versions` for the row's tenant and read ``row`` after taking
    it. Publishing sets ``published_at`` (the latest publish) and, the first time,
    ``first_published_at`` (the fact "published before" that rollback relies on).

    Args:
        conn: A connection inside a write transaction holding the tenant's version lock.
        row: The version's current ``index_versions`` row.
        to: The new status.
        actor: Who changes it (<= 200 characters), e.g. ``"cli"``, ``"dagster:<run id>"``.
        action: The audit action.
        reasons: Why (free text, or the failed checks of a rejection), recorded in the audit
            row.
        details: Top-level keys merged into the version's ``details``.
        audit: Extra keys of the audit row's details (e.g. ``previous``).

    Raises:
        VersionTransitionError: The lifecycle does not allow it (:func:`check_transition`).
    """
    check_transition(row, to)
    values: dict[str, object] = {"status": to}
    if details:
        values["details"] = {**row["details"], **details}
    if to == "published":
        now = utcnow()
        values["published_at"] = now
        if row["first_published_at"] is None:
            values["first_published_at"] = now
    conn.execute(update(_t).where(_t.c.id == row["id"]).values(**values))
    write_audit(
        conn,
        action=action,
        tenant=row["tenant"],
        actor=actor,
        details={
            "version": row["version"],
            "from": row["status"],
            "to": to,
            "reasons": list(reasons or []),
            **(audit or {}),
        },
    )
