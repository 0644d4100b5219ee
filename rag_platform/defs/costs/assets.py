"""Cost rollups per tenant per day."""

from datetime import date
from typing import Any

import dagster as dg

from rag_platform.defs.partitions import tenant_day_partitions
from rag_platform.defs.resources import PlatformResource
from rag_platform.defs.tracing import materialization_span


@dg.asset(
    group_name="costs",
    kinds={"python"},
    partitions_def=tenant_day_partitions,
)
@materialization_span
def tenant_daily_costs(
    context: dg.AssetExecutionContext, platform: PlatformResource
) -> dg.Output[dict[str, Any]]:
    """Embedding tokens and compute seconds from ingestion, LLM tokens and query counts from the
    query log, and the bytes of the published index, priced by the price table, for one tenant
    and UTC day."""
    from rag_platform.lib.costs import PriceTable, tenant_day_rollup

    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    rollup = tenant_day_rollup(
        platform.store(),
        keys["tenant"],
        date.fromisoformat(keys["day"]),
        PriceTable.load(platform.settings.home),
    )
    return dg.Output(
        rollup,
        metadata={
            "total_usd": float(rollup["total_usd"]),
            "usage": dg.MetadataValue.json(rollup["usage"]),
        },
    )
