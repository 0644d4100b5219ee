"""Sensors: keep tenant partitions in step with the registry; re-sync a tenant whose sources
changed or whose documents were uploaded or deleted through the API; deliver the tenants'
webhooks when a pipeline run ends."""

import json
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg

from rag_platform.defs.jobs import tenant_pipeline
from rag_platform.defs.partitions import TENANTS, tenants_partitions
from rag_platform.lib.ingestion.sync import source_fingerprint
from rag_platform.lib.tenants import load_registry
from rag_platform.runs import BATCH_TAG, batch_run, run_progress
from rag_platform.settings import get_settings

#: For how long a requested batch without a run is requested again (minutes).
BATCH_RETRY_MINUTES = 10


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    job=tenant_pipeline,
    description="Adds and removes `tenants` partitions as the tenant registry changes and runs the "
    "pipeline for new tenants.",
)
def tenant_registry_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    settings = get_settings()
    wanted = set(load_registry(settings.tenants_file, settings.data_dir).ids)
    existing = set(context.instance.get_dynamic_partitions(TENANTS))
    added, removed = sorted(wanted - existing), sorted(existing - wanted)
    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if added:
        requests.append(tenants_partitions.build_add_request(added))
    if removed:
        requests.append(tenants_partitions.build_delete_request(removed))
    if not requests:
        return dg.SensorResult(skip_reason="tenant registry unchanged")
    return dg.SensorResult(
        dynamic_partitions_requests=requests,
        run_requests=[dg.RunRequest(partition_key=t, run_key=f"new-tenant:{t}") for t in added],
    )


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    job=tenant_pipeline,
    description="Runs the pipeline of a tenant whose source files changed (size or mtime).",
)
def source_change_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    settings = get_settings()
    registry = load_registry(settings.tenants_file, settings.data_dir)
    known = set(context.instance.get_dynamic_partitions(TENANTS))
    cursor = json.loads(context.cursor) if context.cursor else {}
    runs = []
    for tenant in registry.tenants:
        if tenant.id not in known:
            continue  # the registry sensor adds it first
        fp = source_fingerprint(tenant)
        if cursor.get(tenant.id) != fp:
            if tenant.id in cursor:  # first sight only records the fingerprint
                runs.append(
                    dg.RunRequest(partition_key=tenant.id, run_key=f"{tenant.id}:{fp[:16]}")
                )
            cursor[tenant.id] = fp
    return dg.SensorResult(run_requests=runs, cursor=json.dumps(cursor))


@dg.sensor(
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    job=tenant_pipeline,
    description="Runs the pipeline of each tenant with uploads or deletions made through "
    "`/v1/documents`: all pending jobs of a tenant become one batch, one queued run tagged "
    "`rag/batch` (the per-tenant concurrency limit of the run queue applies).",
)
def ingest_job_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    from rag_platform.lib.store import MetadataStore

    settings = get_settings()
    registry_ids = set(load_registry(settings.tenants_file, settings.data_dir).ids)
    known = set(context.instance.get_dynamic_partitions(TENANTS))
    runs = []
    with MetadataStore.from_settings(settings) as store:
        store.migrate()
        # A batch claimed by a tick that failed before its run was created is requested again
        # (same run key: Dagster creates each run once).
        since = datetime.now(UTC) - timedelta(minutes=BATCH_RETRY_MINUTES)
        for tenant, batch_id in store.ingest_jobs.recent_batches(since):
            if tenant in registry_ids and batch_run(context.instance, batch_id) is None:
                runs.append(_batch_request(tenant, batch_id))
        for tenant in store.ingest_jobs.pending_tenants():
            if tenant not in registry_ids:
                continue
            batch_id = str(uuid.uuid4())
            if store.ingest_jobs.claim(tenant, batch_id):
                runs.append(_batch_request(tenant, batch_id))
    if not runs:
        return dg.SensorResult(skip_reason="no pending upload or deletion")
    missing = sorted({r.partition_key for r in runs if r.partition_key} - known)
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[tenants_partitions.build_add_request(missing)]
        if missing
        else [],
    )


def _batch_request(tenant: str, batch_id: str) -> dg.RunRequest:
    return dg.RunRequest(
        partition_key=tenant, run_key=f"batch:{batch_id}", tags={BATCH_TAG: batch_id}
    )


def _notify(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """Sends ``job.completed`` (every finished run) and ``index.published`` (a run that
    published) to the tenant's webhooks."""
    from rag_platform.lib.store import MetadataStore
    from rag_platform.lib.webhooks import WebhookSender

    settings = get_settings()
    progress = run_progress(instance, run)
    try:
        tenant = load_registry(settings.tenants_file, settings.data_dir).get(progress.tenant)
    except KeyError:
        return
    if not tenant.webhooks:
        return
    with MetadataStore.from_settings(settings) as store:
        store.migrate()
        batch_id = run.tags.get(BATCH_TAG)
        jobs = store.ingest_jobs.in_batch(batch_id) if batch_id else []
        sender = WebhookSender(store.webhook_deliveries)
        sender.send(
            tenant,
            "job.completed",
            {
                "run_id": run.run_id,
                "job_ids": [j.job_id for j in jobs],
                "status": progress.status,
                "stage": progress.stage,
                "index_version": progress.index_version,
                "error": progress.error or None,
            },
            run_id=run.run_id,
        )
        if progress.status == "published":
            published = progress.counts.get("published_index", {})
            sender.send(
                tenant,
                "index.published",
                {
                    "run_id": run.run_id,
                    "index_version": progress.index_version,
                    "published_now": bool(published.get("published_now", 1)),
                    "documents": progress.counts.get("source_documents", {}).get("documents"),
                    "chunks": progress.counts.get("chunks", {}).get("chunks"),
                },
                run_id=run.run_id,
            )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[tenant_pipeline],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="Delivers the `job.completed` and `index.published` webhooks of a tenant "
    "pipeline run that succeeded.",
)
def webhook_success_sensor(context: dg.RunStatusSensorContext) -> None:
    _notify(context.instance, context.dagster_run)


@dg.run_failure_sensor(
    monitored_jobs=[tenant_pipeline],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="Delivers the `job.completed` webhook (status failed) of a tenant pipeline run "
    "that failed.",
)
def webhook_failure_sensor(context: dg.RunFailureSensorContext) -> None:
    _notify(context.instance, context.dagster_run)
