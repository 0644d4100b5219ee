"""Schedules: every tenant's golden-set candidates from feedback, daily at 04:00 UTC."""

import dagster as dg

from rag_platform.defs.jobs import tenant_feedback
from rag_platform.defs.partitions import daily_run_per_tenant


@dg.schedule(
    job=tenant_feedback,
    cron_schedule="0 4 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Turn every tenant's new low-rated queries into golden-set candidates.",
)
def daily_golden_candidates(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    return daily_run_per_tenant(context, "feedback")
