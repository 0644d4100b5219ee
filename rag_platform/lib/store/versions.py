"""Index versions: register, status and details, atomic publish and rollback (``index_versions``).

A build registers its version as ``built``; publishing makes it the one the API serves and
retires the one before, in one transaction serialised per tenant, and the partial unique index
``uq_index_versions_one_published`` holds at most one ``published`` row per tenant even against
other writers. Only ``built`` and ``retired`` versions can be published or rolled back to, so a
``rejected`` or ``deleted`` version never serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, RowMapping, select, update

from rag_platform.lib.store.audit import write_audit
from rag_platform.lib.store.db import Database, NotFoundError, lock_tenant
from rag_platform.lib.store.rows import check_text, from_row, to_values
from rag_platform.lib.store.schema import (
    VERSION_STATUSES,
    JSONObject,
    VersionStatus,
    index_versions_table,
    utcnow,
)
from rag_platform.lib.store.tenants import check_tenant, ensure_tenant

#: Statuses from which a version can be published or rolled back to.
_SERVABLE: tuple[VersionStatus, ...] = ("built", "retired")

_t = index_versions_table


@dataclass
class IndexVersion:
    """One index version of a tenant. ``details`` holds e.g. the evaluation metrics."""

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


def _swap_published(conn: Connection, target: RowMapping, action: str, actor: str) -> IndexVersion:
    """Retire the tenant's published row and publish ``target``; the caller holds the lock."""
    tenant = target["tenant"]
    previous = _published(conn, tenant)
    if previous is not None:
        conn.execute(update(_t).where(_t.c.id == previous["id"]).values(status="retired"))
    conn.execute(
        update(_t).where(_t.c.id == target["id"]).values(status="published", published_at=utcnow())
    )
    write_audit(
        conn,
        action=action,
        tenant=tenant,
        actor=actor,
        details={
            "version": target["version"],
            "previous": previous["version"] if previous is not None else None,
        },
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
    ) -> IndexVersion:
        """Record a newly built index version with status ``built``.

        Registering an existing, unpublished version again (a retried run) overwrites its
        path, counts, config hash and details and resets it to ``built``.

        Args:
            tenant: Tenant id.
            version: Version label, unique per tenant (<= 100 characters).
            path: Shard directory (Edge) or collection name (server).
            documents: Documents in the index (>= 0).
            chunks: Chunks (points) in the index (>= 0).
            config_hash: Hash of the configuration that built it.
            details: Free JSON-serialisable metadata.

        Returns:
            The version as stored.

        Raises:
            ValueError: Bad arguments, or the version is currently published.
        """
        check_tenant(tenant)
        check_text(version, "version", 100)
        if documents < 0 or chunks < 0:
            raise ValueError(f"counts must be >= 0, got documents={documents}, chunks={chunks}")
        built = IndexVersion(
            tenant=tenant,
            version=version,
            path=str(path),
            status="built",
            documents=int(documents),
            chunks=int(chunks),
            config_hash=config_hash,
            details=dict(details or {}),
            created_at=utcnow(),
            published_at=None,
        )
        with self._db.transaction() as conn:
            ensure_tenant(conn, tenant_id=tenant)
            existing = _row(conn, tenant, version)
            if existing is None:
                conn.execute(_t.insert().values(**to_values(built)))
            elif existing["status"] == "published":
                raise ValueError(
                    f"version {version!r} of tenant {tenant!r} is published; "
                    "register a new version instead"
                )
            else:
                values = to_values(built)
                del values["created_at"]  # a re-registered version keeps its place in history
                conn.execute(update(_t).where(_t.c.id == existing["id"]).values(**values))
            return from_row(IndexVersion, _require(conn, tenant, version))

    def set_status(
        self,
        tenant: str,
        version: str,
        status: str,
        details: JSONObject | None = None,
    ) -> IndexVersion:
        """Set the status of an unpublished version, merging ``details`` into its details.

        Returns:
            The version as stored.

        Raises:
            ValueError: Unknown status; ``published`` (use :meth:`publish`); or the version is
                the published one (publish or roll back to another first).
            NotFoundError: The version does not exist.
        """
        if status not in VERSION_STATUSES:
            raise ValueError(
                f"invalid status {status!r}: expected one of {', '.join(VERSION_STATUSES)}"
            )
        if status == "published":
            raise ValueError("use publish_version() to publish a version")
        with self._db.transaction() as conn:
            row = _require(conn, tenant, version)
            if row["status"] == "published":
                raise ValueError(
                    f"version {version!r} of tenant {tenant!r} is published; publish or roll "
                    "back to another version before changing its status"
                )
            merged = {**row["details"], **(details or {})}
            conn.execute(
                update(_t).where(_t.c.id == row["id"]).values(status=status, details=merged)
            )
            return from_row(IndexVersion, _require(conn, tenant, version))

    def set_details(self, tenant: str, version: str, details: JSONObject) -> IndexVersion:
        """Merge ``details`` (top-level keys) into the version's details.

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
        ``retired`` and this one ``published`` with ``published_at``. Publishing the already
        published version returns it unchanged.

        Returns:
            The published version.

        Raises:
            NotFoundError: The version does not exist.
            ValueError: Its status is not ``built`` or ``retired``.
        """
        with self._db.transaction() as conn:
            lock_tenant(conn, "publish", tenant)
            row = _require(conn, tenant, version)
            if row["status"] == "published":
                return from_row(IndexVersion, row)
            if row["status"] not in _SERVABLE:
                raise ValueError(
                    f"cannot publish version {version!r} of tenant {tenant!r}: its status is "
                    f"{row['status']!r} (only built or retired versions can be published)"
                )
            return _swap_published(conn, row, "index.publish", actor)

    def rollback(
        self, tenant: str, to_version: str | None = None, actor: str = "cli"
    ) -> IndexVersion:
        """Serve an earlier version again (audit ``index.rollback``), atomically like publish.

        Args:
            tenant: Tenant id.
            to_version: The version to serve; default: the most recently created ``retired``
                version older than the published one (or the newest retired one if none is
                published).
            actor: Who rolls back.

        Returns:
            The version now published.

        Raises:
            ValueError: No retired version to roll back to; the target is deleted, already
                published, or has a status other than ``retired``/``built``.
            NotFoundError: ``to_version`` does not exist.
        """
        with self._db.transaction() as conn:
            lock_tenant(conn, "publish", tenant)
            current = _published(conn, tenant)
            if to_version is None:
                stmt = select(_t).where(_t.c.tenant == tenant, _t.c.status == "retired")
                if current is not None:
                    stmt = stmt.where(_t.c.id < current["id"])
                target = conn.execute(stmt.order_by(_t.c.id.desc()).limit(1)).mappings().first()
                if target is None:
                    where = f" older than {current['version']!r}" if current is not None else ""
                    raise ValueError(
                        f"tenant {tenant!r} has no retired index version{where} to roll back to"
                    )
            else:
                target = _require(conn, tenant, to_version)
                if target["status"] == "deleted":
                    raise ValueError(
                        f"cannot roll back tenant {tenant!r} to {to_version!r}: it was deleted"
                    )
                if target["status"] == "published":
                    raise ValueError(
                        f"version {to_version!r} of tenant {tenant!r} is already published"
                    )
                if target["status"] not in _SERVABLE:
                    raise ValueError(
                        f"cannot roll back tenant {tenant!r} to {to_version!r}: its status is "
                        f"{target['status']!r}"
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
