"""Schedules: a nightly re-sync (and so re-evaluation) of every tenant."""

import dagster as dg

from rag_platform.defs.jobs import tenant_pipeline
from rag_platform.defs.partitions import TENANTS


@dg.schedule(
    job=tenant_pipeline,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Nightly re-sync, re-index (only if something changed) and re-evaluation.",
)
def nightly_resync(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    tenants = context.instance.get_dynamic_partitions(TENANTS)
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [dg.RunRequest(partition_key=t, run_key=f"nightly:{t}:{day}") for t in tenants]
