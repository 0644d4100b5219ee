"""Schedules: yesterday's cost rollup for every tenant, shortly after midnight UTC."""

from datetime import timedelta

import dagster as dg

from rag_platform.defs.jobs import tenant_costs
from rag_platform.defs.partitions import TENANTS


@dg.schedule(
    job=tenant_costs,
    cron_schedule="30 0 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Roll up yesterday's costs of every tenant.",
)
def daily_costs(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    day = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
    return [
        dg.RunRequest(
            partition_key=dg.MultiPartitionKey({"tenant": t, "day": day}),
            run_key=f"costs:{t}:{day}",
        )
        for t in context.instance.get_dynamic_partitions(TENANTS)
    ]
