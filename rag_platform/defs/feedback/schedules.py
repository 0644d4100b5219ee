"""Schedules: every tenant's golden-set candidates from feedback, daily at 04:00 UTC."""

import dagster as dg

from rag_platform.defs.jobs import tenant_feedback
from rag_platform.defs.partitions import TENANTS


@dg.schedule(
    job=tenant_feedback,
    cron_schedule="0 4 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Turn every tenant's new low-rated queries into golden-set candidates.",
)
def daily_golden_candidates(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [
        dg.RunRequest(partition_key=t, run_key=f"feedback:{t}:{day}")
        for t in context.instance.get_dynamic_partitions(TENANTS)
    ]
