"""Jobs: the per-tenant pipeline (sync to publish), the per-tenant-day cost rollup and the
per-tenant retention sweep."""

from __future__ import annotations

import dagster as dg

from rag_platform.defs.executor import pipeline_executor
from rag_platform.defs.partitions import tenant_day_partitions, tenants_partitions

PIPELINE_GROUPS = ("ingestion", "indexing", "evaluation")

#: Everything from connector sync to publishing, for one tenant partition, with its checks. Its
#: steps run on dagster-celery workers when RAG_CELERY_BROKER_URL is set (see executor.py).
tenant_pipeline = dg.define_asset_job(
    "tenant_pipeline",
    selection=dg.AssetSelection.groups(*PIPELINE_GROUPS),
    partitions_def=tenants_partitions,
    description="Sync, parse, mask, chunk, embed, index, evaluate and publish one tenant.",
    executor_def=pipeline_executor(),
)

#: Daily cost rollup for one tenant and day.
tenant_costs = dg.define_asset_job(
    "tenant_costs",
    selection=dg.AssetSelection.groups("costs"),
    partitions_def=tenant_day_partitions,
    description="Roll up embedding, compute, LLM and storage costs per tenant per day.",
)

#: A backup of one tenant (see rag_platform/lib/backup.py).
tenant_backups = dg.define_asset_job(
    "tenant_backups",
    selection=dg.AssetSelection.groups("operations"),
    partitions_def=tenants_partitions,
    description="Back up one tenant: published index, metadata rows, registry entry, caches.",
)

#: Deletes what a tenant's retention policy no longer keeps (``retention_sweep``).
tenant_retention = dg.define_asset_job(
    "tenant_retention",
    selection=dg.AssetSelection.groups("lifecycle"),
    partitions_def=tenants_partitions,
    description="Apply one tenant's retention policy: query log, feedback, audit log, "
    "quarantine records, retired index versions.",
)
