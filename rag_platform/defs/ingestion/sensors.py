"""Sensors: keep tenant partitions in step with the registry; re-sync a tenant whose sources
changed."""

import json

import dagster as dg

from rag_platform.defs.jobs import tenant_pipeline
from rag_platform.defs.partitions import TENANTS, tenants_partitions
from rag_platform.lib.ingestion.sync import source_fingerprint
from rag_platform.lib.tenants import load_registry
from rag_platform.settings import get_settings


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
