"""Data lifecycle: the per-tenant retention sweep (``lib/lifecycle/retention.py``)."""

from typing import Any

import dagster as dg

from rag_platform.defs.partitions import tenants_partitions
from rag_platform.defs.resources import PlatformResource
from rag_platform.defs.tracing import materialization_span
from rag_platform.lib.index.backend import open_backend
from rag_platform.lib.lifecycle.retention import RetentionSweep


@dg.asset(
    group_name="lifecycle",
    kinds={"python"},
    partitions_def=tenants_partitions,
)
@materialization_span
def retention_sweep(
    context: dg.AssetExecutionContext, platform: PlatformResource
) -> dg.Output[dict[str, Any]]:
    """Deletes what the tenant's retention policy (``retention`` in tenants.yaml) no longer
    keeps: query-log rows (90 days by default) with the feedback on them, feedback (1 year),
    audit rows (1 year), stale quarantine records (30 days) and retired index versions beyond
    the rollback targets. Metadata: how many of each kind were deleted, and the cut-offs."""
    tenant = platform.tenant(context.partition_key)
    settings = platform.settings
    chain_days = max(t.retention.audit_log_days for t in platform.registry().tenants)
    result = RetentionSweep(settings, platform.store(), open_backend(settings)).run(
        tenant, chain_audit_days=chain_days
    )
    value = result.to_dict()
    return dg.Output(
        value,
        metadata={
            **{f"deleted_{kind}": count for kind, count in result.deleted.items()},
            "deleted_total": sum(result.deleted.values()),
            "cutoffs": dg.MetadataValue.json(result.cutoffs),
            "deleted_versions": dg.MetadataValue.json(result.deleted_versions),
        },
    )
