"""Ingestion jobs: uploads and deletions made through the API (``ingest_jobs`` table).

A job is created by ``POST /v1/documents`` or ``DELETE /v1/documents/{doc_id}`` with no batch.
``ingest_job_sensor`` claims every pending job of a tenant into one batch (one Dagster run of
the tenant's partition, tagged ``rag/batch=<batch_id>``); ``GET /v1/jobs/{job_id}`` follows the
job to that run.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import func, select, update

from rag_platform.lib.store.db import Database
from rag_platform.lib.store.rows import from_row
from rag_platform.lib.store.schema import JobKind, ingest_jobs_table, utcnow
from rag_platform.lib.store.tenants import check_tenant


@dataclass
class IngestJob:
    """One upload or deletion.

    Attributes:
        job_id: UUID4 string, returned to the client.
        tenant: the tenant whose upload source changed.
        kind: ``upload`` or ``delete``.
        doc_id: the document's id (``uuid5`` of tenant, source and native id).
        key_id: the API key that made the request.
        batch_id: the batch (Dagster run tag ``rag/batch``) once a run was requested, else None.
        created_at: when the API accepted the request (UTC).
        requested_at: when the sensor requested the run (UTC), else None.
    """

    job_id: str
    tenant: str
    kind: JobKind
    doc_id: str
    key_id: str
    batch_id: str | None
    created_at: datetime
    requested_at: datetime | None


class IngestJobRepository:
    """The ``ingest_jobs`` table.

    Args:
        db: The database handle.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, tenant: str, kind: JobKind, doc_id: str, key_id: str = "") -> IngestJob:
        """Records a pending job.

        Raises:
            ValueError: bad tenant id or kind.
        """
        check_tenant(tenant)
        if kind not in ("upload", "delete"):
            raise ValueError(f"invalid job kind {kind!r}")
        job = IngestJob(str(uuid.uuid4()), tenant, kind, doc_id, key_id[:12], None, utcnow(), None)
        with self._db.transaction() as conn:
            conn.execute(
                ingest_jobs_table.insert().values(
                    job_id=job.job_id,
                    tenant=tenant,
                    kind=kind,
                    doc_id=doc_id,
                    key_id=job.key_id,
                    batch_id=None,
                    created_at=job.created_at,
                    requested_at=None,
                )
            )
        return job

    def get(self, job_id: str, tenant: str) -> IngestJob | None:
        """The job if it exists *and* belongs to ``tenant`` (another tenant's job is None)."""
        stmt = select(ingest_jobs_table).where(
            ingest_jobs_table.c.job_id == job_id, ingest_jobs_table.c.tenant == tenant
        )
        with self._db.transaction(write=False) as conn:
            row = conn.execute(stmt).mappings().first()
        return None if row is None else from_row(IngestJob, row)

    def pending_tenants(self) -> list[str]:
        """Tenants with at least one job not yet in a batch, sorted."""
        stmt = (
            select(ingest_jobs_table.c.tenant)
            .where(ingest_jobs_table.c.batch_id.is_(None))
            .distinct()
        )
        with self._db.transaction(write=False) as conn:
            return sorted(cast("list[str]", conn.execute(stmt).scalars().all()))

    def claim(self, tenant: str, batch_id: str) -> list[str]:
        """Puts every pending job of ``tenant`` into ``batch_id``.

        Returns:
            The claimed job ids (empty when none was pending).
        """
        now = utcnow()
        with self._db.transaction() as conn:
            ids = list(
                conn.execute(
                    select(ingest_jobs_table.c.job_id).where(
                        ingest_jobs_table.c.tenant == tenant,
                        ingest_jobs_table.c.batch_id.is_(None),
                    )
                ).scalars()
            )
            if ids:
                conn.execute(
                    update(ingest_jobs_table)
                    .where(ingest_jobs_table.c.job_id.in_(ids))
                    .values(batch_id=batch_id, requested_at=now)
                )
        return ids

    def recent_batches(self, since: datetime) -> list[tuple[str, str]]:
        """``(tenant, batch_id)`` of the batches requested at or after ``since``, oldest first."""
        stmt = (
            select(ingest_jobs_table.c.tenant, ingest_jobs_table.c.batch_id)
            .where(
                ingest_jobs_table.c.batch_id.is_not(None),
                ingest_jobs_table.c.requested_at >= since,
            )
            .group_by(ingest_jobs_table.c.tenant, ingest_jobs_table.c.batch_id)
            .order_by(func.min(ingest_jobs_table.c.requested_at))
        )
        with self._db.transaction(write=False) as conn:
            return [(str(t), str(b)) for t, b in conn.execute(stmt).all()]

    def in_batch(self, batch_id: str) -> list[IngestJob]:
        """The jobs of one batch, oldest first."""
        stmt = (
            select(ingest_jobs_table)
            .where(ingest_jobs_table.c.batch_id == batch_id)
            .order_by(ingest_jobs_table.c.created_at)
        )
        with self._db.transaction(write=False) as conn:
            return [from_row(IngestJob, r) for r in conn.execute(stmt).mappings()]
