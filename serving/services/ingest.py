"""The ingestion flow behind ``/v1/documents`` and ``/v1/jobs``.

An upload or deletion changes the tenant's managed upload source
(:class:`~rag_platform.lib.connectors.upload.UploadStore`) and records a pending job in the
metadata store; ``ingest_job_sensor`` (Dagster daemon) turns the tenant's pending jobs into one
queued run of its partition. A job's status is that run's, read from the Dagster instance's run
and event storage (:mod:`rag_platform.runs`); this process never runs Dagster code.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import dagster as dg

from rag_platform.lib.connectors.upload import UploadRejected, UploadStore, parse_acl_groups
from rag_platform.lib.models import Principal
from rag_platform.lib.store import MetadataStore
from rag_platform.lib.tenants import TenantConfig, TenantRegistry
from rag_platform.runs import batch_run, run_progress
from rag_platform.settings import Settings
from serving.errors import ApiError, database_unavailable
from serving.schemas import JobPublic

logger = logging.getLogger("serving.ingest")


def _rejected(exc: UploadRejected) -> ApiError:
    return ApiError(exc.status, exc.code, str(exc))


class IngestService:
    """Uploads, deletions and job status for one API process.

    Args:
        settings: platform settings (``uploads_dir``, ``dagster_home``, ``max_upload_bytes``).
        store: returns the metadata store (looked up on every call).
        registry: returns the current tenant registry.
    """

    def __init__(
        self,
        settings: Settings,
        store: Callable[[], MetadataStore],
        registry: Callable[[], TenantRegistry],
    ) -> None:
        self.settings = settings
        self.uploads = UploadStore(settings.uploads_dir)
        self._store = store
        self._registry = registry
        self._instance: dg.DagsterInstance | None = None
        self._lock = threading.Lock()

    def _tenant(self, principal: Principal) -> TenantConfig:
        try:
            return self._registry().get(principal.tenant)
        except KeyError as exc:
            raise ApiError(
                404, "tenant_not_found", "the API key's tenant is not in the registry"
            ) from exc

    def _job(self, principal: Principal, kind: str, doc_id: str) -> str:
        try:
            job = self._store().ingest_jobs.create(
                principal.tenant,
                "upload" if kind == "upload" else "delete",
                doc_id,
                principal.key_id,
            )
        except Exception as exc:
            logger.error("cannot record an ingest job", extra={"error": type(exc).__name__})
            raise database_unavailable() from exc
        return job.job_id

    def upload(
        self,
        principal: Principal,
        *,
        filename: str,
        content: bytes,
        acl_groups: str | list[str] | None,
        title: str | None = None,
        uri: str | None = None,
    ) -> tuple[str, str]:
        """Stores a document in the tenant's upload source and queues its sync.

        Returns:
            ``(doc_id, job_id)``.

        Raises:
            ApiError: 413 ``file_too_large``, 415 ``unsupported_media_type``, 422
                ``invalid_acl_group`` / ``invalid_filename`` / ``empty_document`` /
                ``invalid_field``, 403 ``uploads_disabled``, 503 ``database_unavailable``.
        """
        tenant = self._tenant(principal)
        try:
            groups = parse_acl_groups(acl_groups)
            doc_id = self.uploads.save(
                tenant,
                filename,
                content,
                groups,
                title=title,
                uri=uri,
                max_bytes=self.settings.max_upload_bytes,
            )
        except UploadRejected as exc:
            raise _rejected(exc) from exc
        return doc_id, self._job(principal, "upload", doc_id)

    def delete(self, principal: Principal, doc_id: str) -> str:
        """Removes an uploaded document and queues the sync that drops it from the index.

        Returns:
            The job id.

        Raises:
            ApiError: 404 ``document_not_found`` (no upload with this id in the caller's
                tenant: documents of configured sources are deleted at their source),
                403 ``uploads_disabled``, 503 ``database_unavailable``.
        """
        tenant = self._tenant(principal)
        if not tenant.uploads.enabled:
            raise ApiError(403, "uploads_disabled", "uploads are disabled for this tenant")
        if len(doc_id) > 64 or not self.uploads.delete(tenant.id, doc_id):
            raise ApiError(
                404, "document_not_found", "no uploaded document with this id in your tenant"
            )
        return self._job(principal, "delete", doc_id)

    def instance(self) -> dg.DagsterInstance:
        """The Dagster instance under ``RAG_HOME/dagster`` (opened once)."""
        with self._lock:
            if self._instance is None:
                from rag_platform.runner import dagster_instance

                self._instance = dagster_instance(self.settings)
            return self._instance

    def job(self, principal: Principal, job_id: str) -> JobPublic:
        """The job's status, from the run of its batch.

        Raises:
            ApiError: 404 ``job_not_found`` (unknown, or another tenant's job),
                503 ``database_unavailable``, 503 ``orchestrator_unavailable``.
        """
        try:
            job = self._store().ingest_jobs.get(job_id[:64], principal.tenant)
        except Exception as exc:
            raise database_unavailable() from exc
        if job is None:
            raise ApiError(404, "job_not_found", "no job with this id in your tenant")
        public = JobPublic(
            job_id=job.job_id,
            run_id=None,
            status="queued",
            stage=None,
            index_version=None,
            error=None,
            kind=job.kind,
            doc_id=job.doc_id,
        )
        if job.batch_id is None:
            return public
        try:
            instance = self.instance()
            run = batch_run(instance, job.batch_id)
            if run is None:
                return public
            progress = run_progress(instance, run)
        except Exception as exc:
            logger.error("cannot read the Dagster run", extra={"error": type(exc).__name__})
            raise ApiError(
                503,
                "orchestrator_unavailable",
                "the run storage of the Dagster instance cannot be read",
                headers={"Retry-After": "5"},
            ) from exc
        return public.model_copy(
            update={
                "run_id": progress.run_id,
                "status": progress.status,
                "stage": progress.stage or None,
                "index_version": progress.index_version,
                "error": progress.error or None,
                "counts": progress.counts,
            }
        )

    def close(self) -> None:
        """Lets go of the Dagster instance."""
        with self._lock:
            if self._instance is not None:
                self._instance.dispose()
                self._instance = None
