"""The blocking reconciliation check on ``search_index``: the source inventory against the new
index version, before anything is evaluated or published (DESIGN.md, "Index-version lifecycle
and receipts")."""

from typing import Any

import dagster as dg
import pandas as pd

from rag_platform.defs.indexing.assets import index_versions
from rag_platform.defs.partitions import tenants_partitions
from rag_platform.defs.resources import PlatformResource
from rag_platform.lib.index.versions import IndexBuild
from rag_platform.lib.ingestion.quarantine import quarantined_doc_ids


@dg.asset_check(
    asset="search_index",
    blocking=True,
    partitions_def=tenants_partitions,
    additional_ins={"source_documents": dg.AssetIn(), "chunks": dg.AssetIn()},
    description="Blocks the publish unless every source document that was not quarantined is in "
    "the new version with its ACL groups and chunk count, and no document deleted at the source "
    "is left in it (documents missing, orphans, ACL and chunk-count mismatches all 0). The counts "
    "are the version's receipt (`rag-platform index receipt`).",
)
def reconciliation(
    context: dg.AssetCheckExecutionContext,
    platform: PlatformResource,
    search_index: dict[str, Any],
    source_documents: pd.DataFrame,
    chunks: pd.DataFrame,
) -> dg.AssetCheckResult:
    tenant = context.partition_key
    receipt = index_versions(platform).reconcile(
        tenant,
        IndexBuild(**search_index),
        source_documents,
        chunks,
        quarantined_doc_ids(platform.tenant_cache_dir(tenant)),
        actor=f"dagster:{context.run.run_id}",
    )
    counts = receipt.to_dict()
    return dg.AssetCheckResult(
        passed=receipt.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            **{k: v for k, v in counts.items() if isinstance(v, int | bool)},
            "version": str(search_index["version"]),
            "samples": dg.MetadataValue.json(receipt.samples),
        },
    )
