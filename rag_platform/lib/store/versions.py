"""Index versions: register, the lifecycle's status changes, atomic publish and rollback.

A build registers its version as ``building`` (:meth:`VersionRepository.register`), marks it
``built`` once its shard is complete (:meth:`~VersionRepository.mark_built`) or ``rejected``
when a blocking check fails (:meth:`~VersionRepository.reject`, which records the failed checks).
Publishing makes a ``built`` version the one the API serves and retires the one before, in one
transaction serialised per tenant; rollback serves a ``retired`` version that was published
before. Every status change goes through the lifecycle's one transition path
(:mod:`rag_platform.lib.store.lifecycle`) and is audited in its transaction; the partial unique
index ``uq_index_versions_one_published`` holds at most one ``published`` row per tenant even
against other writers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, RowMapping, select, update

from rag_platform.lib.store.audit import write_audit
from rag_platform.lib.store.db import Database, NotFoundError
from rag_platform.lib.store.lifecycle import (
    FailedCheck,
    TransitionAction,
    TransitionErrorCode,
    VersionTransitionError,
    apply_transition,
    check_transition,
    failed_checks_of,
    lock_versions,
)
from rag_platform.lib.store.rows import check_text, from_row, to_values
from rag_platform.lib.store.schema import (
    JSONObject,
    VersionStatus,
    index_versions_table,
    utcnow,
)
from rag_platform.lib.store.tenants import check_tenant, ensure_tenant

_t = index_versions_table


@dataclass
class IndexVersion:
    """One index version of a tenant.

    ``details`` holds e.g. the evaluation metrics, ``receipt`` (the reconciliation receipt) and,
    once rejected, ``failed_checks``. ``published_at`` is the latest publish,
    ``first_published_at`` the first one (None: never published, so no rollback target).
    """

    tenant: str
    version: str
    path: str
    status: VersionStatus
    documents: int
    chunks: int
    config_hash: str
    details: JSONObject
    created_at: datetime
    published_at: datetime | None
    first_published_at: datetime | None

    @property
    def failed_checks(self) -> list[FailedCheck]:
        """The blocking checks that rejected this version (empty unless ``rejected``)."""
        return failed_checks_of(self.details)


def _row(conn: Connection, tenant: str, version: str) -> RowMapping | None:
    stmt = select(_t).where(_t.c.tenant == tenant, _t.c.version == version)
    return conn.execute(stmt).mappings().first()


def _require(conn: Connection, tenant: str, version: str) -> RowMapping:
    row = _row(conn, tenant, version)
    if row is None:
        raise NotFoundError(f"no index version {version!r} for tenant {tenant!r}")
    return row


def _published(conn: Connection, tenant: str) -> RowMapping | None:
    stmt = select(_t).where(_t.c.tenant == tenant, _t.c.status == "published")
    return conn.execute(stmt).mappings().first()


def _swap_published(
    conn: Connection, target: RowMapping, action: TransitionAction, actor: str
) -> IndexVersion:
    """Retire the tenant's published row and publish ``target``; the caller holds the lock.

    ``target`` is checked first, so a refused publish changes nothing.
    """
    check_transition(target, "published")
    tenant = target["tenant"]
    previous = _published(conn, tenant)
    previous_name = previous["version"] if previous is not None else None
    if previous is not None:
        apply_transition(
            conn,
            previous,
            "retired",
            actor=actor,
            reasons=[f"superseded by {target['version']!r} ({action})"],
            audit={"superseded_by": target["version"]},
        )
    apply_transition(
        conn, target, "published", actor=actor, action=action, audit={"previous": previous_name}
    )
    return from_row(IndexVersion, _require(conn, tenant, target["version"]))


class VersionRepository:
    """The ``index_versions`` table.

    Args:
        db: The database handle.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def register(
        self,
        tenant: str,
        version: str,
        path: str,
        documents: int,
        chunks: int,
        config_hash: str,
        details: JSONObject | None = None,
        actor: str = "pipeline",
    ) -> IndexVersion:
        """Record a new index version with status ``building`` (audit ``index.transition``).

        Call :meth:`mark_built` once its shard is complete, or :meth:`reject`. Registering a
        version that is still ``building`` again (a retried run) overwrites its path, counts,
        config hash and details.

        Args:
            tenant: Tenant id.
            version: Version label, unique per tenant (<= 100 characters).
            path: Shard directory (Edge) or collection name (server).
            documents: Documents in the index (>= 0).
            chunks: Chunks (points) in the index (>= 0).
            config_hash: Hash of the configuration that built it.
            details: Free JSON-serialisable metadata.
            actor: Who registers it.

        Returns:
            The version as stored.

        Raises:
            ValueError: Bad arguments.
            VersionTransitionError: The version exists and is no longer ``building``
                (``version_rejected`` if it was rejected, ``invalid_transition`` otherwise).
        """
        check_tenant(tenant)
        check_text(version, "version", 100)
        if documents < 0 or chunks < 0:
            raise ValueError(f"counts must be >= 0, got documents={documents}, chunks={chunks}")
        building = IndexVersion(
            tenant=tenant,
            version=version,
            path=str(path),
            status="building",
            documents=int(documents),
            chunks=int(chunks),
            config_hash=config_hash,
            details=dict(details or {}),
            created_at=utcnow(),
            published_at=None,
            first_published_at=None,
        )
        with self._db.transaction() as conn:
            ensure_tenant(conn, tenant_id=tenant)
            lock_versions(conn, tenant)
            existing = _row(conn, tenant, version)
            if existing is None:
                conn.execute(_t.insert().values(**to_values(building)))
            elif existing["status"] == "building":
                values = to_values(building)
                del values["created_at"]  # a re-registered version keeps its place in history
                conn.execute(update(_t).where(_t.c.id == existing["id"]).values(**values))
            else:
                code: TransitionErrorCode = (
                    "version_rejected" if existing["status"] == "rejected" else "invalid_transition"
                )
                raise VersionTransitionError(
                    code,
                    f"version {version!r} of tenant {tenant!r} is {existing['status']!r}, not "
                    "building: register a new version instead",
                )
            write_audit(
                conn,
                action="index.transition",
                tenant=tenant,
                actor=actor,
                details={"version": version, "from": None, "to": "building", "reasons": []},
            )
            return from_row(IndexVersion, _require(conn, tenant, version))

    def _transition(
        self,
        tenant: str,
        version: str,
        to: VersionStatus,
        actor: str,
        reasons: list[str] | list[FailedCheck] | None = None,
        details: JSONObject | None = None,
    ) -> IndexVersion:
        with self._db.transaction() as conn:
            lock_versions(conn, tenant)
            row = _require(conn, tenant, version)
            apply_transition(conn, row, to, actor=actor, reasons=reasons, details=details)
            return from_row(IndexVersion, _require(conn, tenant, version))

    def mark_built(
        self, tenant: str, version: str, details: JSONObject | None = None, actor: str = "pipeline"
    ) -> IndexVersion:
        """``building → built``: the shard is complete; merges ``details`` into its details.

        Returns:
            The version as stored.

        Raises:
            NotFoundError: The version does not exist.
            VersionTransitionError: It is not ``building``.
        """
        return self._transition(tenant, version, "built", actor, details=details)

    def reject(
        self, tenant: str, version: str, failed_checks: list[FailedCheck], actor: str = "pipeline"
    ) -> IndexVersion:
        """``building|built → rejected``: a blocking check failed; it can never be published.

        The failed checks are stored as ``details["failed_checks"]`` and in the audit row; every
        later refusal to publish the version quotes them.

        Args:
            tenant: Tenant id.
            version: The version.
            failed_checks: At least one ``{"name": check name, "reasons": [reason, ...]}``.
            actor: Who rejects it.

        Returns:
            The version as stored.

        Raises:
            ValueError: No failed checks, or one without a name.
            NotFoundError: The version does not exist.
            VersionTransitionError: It is not ``building`` or ``built``.
        """
        if not failed_checks:
            raise ValueError("a rejection needs at least one failed check")
        checks = [
            FailedCheck(
                name=check_text(c["name"], "check name", 200),
                reasons=[str(r) for r in c["reasons"]],
            )
            for c in failed_checks
        ]
        return self._transition(
            tenant, version, "rejected", actor, reasons=checks, details={"failed_checks": checks}
        )

    def delete(self, tenant: str, version: str, actor: str = "pipeline") -> IndexVersion:
        """``built|retired|rejected → deleted``: garbage collection removed its shard.

        Returns:
            The version as stored.

        Raises:
            NotFoundError: The version does not exist.
            VersionTransitionError: It is ``building``, ``published`` or already ``deleted``.
        """
        return self._transition(tenant, version, "deleted", actor)

    def set_details(self, tenant: str, version: str, details: JSONObject) -> IndexVersion:
        """Merge ``details`` (top-level keys) into the version's details (status unchanged).

        Returns:
            The version as stored.

        Raises:
            NotFoundError: The version does not exist.
        """
        with self._db.transaction() as conn:
            row = _require(conn, tenant, version)
            merged = {**row["details"], **details}
            conn.execute(update(_t).where(_t.c.id == row["id"]).values(details=merged))
            return from_row(IndexVersion, _require(conn, tenant, version))

    def publish(self, tenant: str, version: str, actor: str = "pipeline") -> IndexVersion:
        """Make ``version`` the tenant's served index, atomically (audit ``index.publish``).

        In one transaction, serialised per tenant, the published row (if any) becomes
        ``retired`` and this one ``published``. Publishing the already published version
        returns it unchanged.

        Returns:
            The published version.

        Raises:
            NotFoundError: The version does not exist.
            VersionTransitionError: It is not ``built`` (or ``retired`` and published before):
                ``version_rejected`` with the failed checks, ``receipt_failed``,
                ``never_published`` or ``invalid_transition``.
        """
        with self._db.transaction() as conn:
            lock_versions(conn, tenant)
            row = _require(conn, tenant, version)
            if row["status"] == "published":
                return from_row(IndexVersion, row)
            return _swap_published(conn, row, "index.publish", actor)

    def rollback(
        self, tenant: str, to_version: str | None = None, actor: str = "cli"
    ) -> IndexVersion:
        """Serve a previously published version again (audit ``index.rollback``), atomically.

        Args:
            tenant: Tenant id.
            to_version: The version to serve; default: the newest ``retired`` version that was
                published before and is older than the published one (or the newest such one
                if none is published). ``built`` versions are never rollback targets.
            actor: Who rolls back.

        Returns:
            The version now published.

        Raises:
            NotFoundError: ``to_version`` does not exist.
            VersionTransitionError: ``no_rollback_target`` (nothing to roll back to);
                ``already_published``; ``version_rejected`` (with the failed checks);
                ``never_published`` (e.g. a ``built`` target); ``invalid_transition`` (e.g.
                a ``deleted`` target).
        """
        with self._db.transaction() as conn:
            lock_versions(conn, tenant)
            current = _published(conn, tenant)
            if to_version is None:
                stmt = select(_t).where(
                    _t.c.tenant == tenant,
                    _t.c.status == "retired",
                    _t.c.first_published_at.is_not(None),
                )
                if current is not None:
                    stmt = stmt.where(_t.c.id < current["id"])
                target = conn.execute(stmt.order_by(_t.c.id.desc()).limit(1)).mappings().first()
                if target is None:
                    where = f" older than {current['version']!r}" if current is not None else ""
                    raise VersionTransitionError(
                        "no_rollback_target",
                        f"tenant {tenant!r} has no retired index version{where} to roll back to",
                    )
            else:
                target = _require(conn, tenant, to_version)
                if target["status"] == "built":
                    raise VersionTransitionError(
                        "never_published",
                        f"cannot roll back tenant {tenant!r} to {to_version!r}: it was never "
                        "published (publish it instead)",
                    )
                if target["status"] == "deleted":
                    raise VersionTransitionError(
                        "invalid_transition",
                        f"cannot roll back tenant {tenant!r} to {to_version!r}: it was deleted",
                    )
            return _swap_published(conn, target, "index.rollback", actor)

    def get_published(self, tenant: str) -> IndexVersion | None:
        """The version the API serves for ``tenant``, or None (one indexed lookup)."""
        with self._db.transaction(write=False) as conn:
            row = _published(conn, tenant)
        return from_row(IndexVersion, row) if row is not None else None

    def get(self, tenant: str, version: str) -> IndexVersion | None:
        """One version, or None."""
        with self._db.transaction(write=False) as conn:
            row = _row(conn, tenant, version)
        return from_row(IndexVersion, row) if row is not None else None

    def find(self, tenant: str) -> list[IndexVersion]:
        """All versions of ``tenant``, newest first (every status, ``deleted`` included)."""
        stmt = (
            select(_t).where(_t.c.tenant == tenant).order_by(_t.c.created_at.desc(), _t.c.id.desc())
        )
        with self._db.transaction(write=False) as conn:
            return [from_row(IndexVersion, r) for r in conn.execute(stmt).mappings()]
