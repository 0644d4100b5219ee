"""Cost rollups per tenant per day."""


from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg

from rag_platform.defs.partitions import tenant_day_partitions
from rag_platform.defs.resources import PlatformResource
from rag_platform.lib import stages


@dg.asset(
    group_name="costs",
    kinds={"python"},
    partitions_def=tenant_day_partitions,
)
def tenant_daily_costs(
    context: dg.AssetExecutionContext, platform: PlatformResource
) -> dg.Output[dict[str, Any]]:
    """Embedding tokens and compute seconds from ingestion, LLM tokens and query counts from the
    query log, and the bytes of the published index, priced by the price table, for one tenant
    and UTC day."""
    from rag_platform.lib.costs import PriceTable, rollup_costs

    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    tenant, day = keys["tenant"], date.fromisoformat(keys["day"])
    store = platform.store()
    usage = dict(store.usage_by_day(tenant, day))
    published = store.get_published_version(tenant)
    if published is not None and Path(published.path).exists():
        usage["storage_bytes"] = float(stages.directory_bytes(Path(published.path)))
    rollup = rollup_costs(usage, PriceTable.load())
    return dg.Output(
        {"tenant": tenant, "day": day.isoformat(), "usage": usage, **rollup},
        metadata={"total_usd": float(rollup["total_usd"]),
                  "usage": dg.MetadataValue.json(usage)},
    )
