"""Schedules: every tenant's retention sweep, daily at 03:00 UTC."""

import dagster as dg

from rag_platform.defs.jobs import tenant_retention
from rag_platform.defs.partitions import daily_run_per_tenant


@dg.schedule(
    job=tenant_retention,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Apply every tenant's retention policy (one run per tenant).",
)
def daily_retention(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    return daily_run_per_tenant(context, "retention")
