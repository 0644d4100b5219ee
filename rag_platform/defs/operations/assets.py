"""A backup of each tenant (published index, metadata rows, registry entry, content caches)."""

import dagster as dg

from rag_platform.defs.partitions import tenants_partitions
from rag_platform.defs.resources import PlatformResource
from rag_platform.defs.tracing import materialization_span


@dg.asset(
    group_name="operations",
    kinds={"python"},
    partitions_def=tenants_partitions,
    deps=["published_index"],
)
@materialization_span
def tenant_backup(
    context: dg.AssetExecutionContext, platform: PlatformResource
) -> dg.MaterializeResult:
    """A consistent backup of the tenant with a manifest of SHA-256 checksums, written to
    ``RAG_BACKUP_URL/<tenant>/<UTC time>`` (a folder or S3); ``rag-platform restore`` brings it
    back (rag_platform/lib/backup.py)."""
    from rag_platform.lib.backup import TenantBackup, timestamped

    tenant = context.partition_key
    target = timestamped(platform.settings.resolved_backup_url, tenant)
    receipt = TenantBackup(platform.settings, platform.store()).run(tenant, target)
    return dg.MaterializeResult(
        metadata={
            "location": receipt.location,
            "index_version": receipt.index_version or "",
            "files": receipt.files,
            "bytes": receipt.bytes,
            "rows": dg.MetadataValue.json(receipt.rows),
            "manifest_sha256": receipt.manifest_sha256,
        }
    )
