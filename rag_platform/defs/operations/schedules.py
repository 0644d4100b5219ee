"""Schedules: a nightly backup of every tenant."""

import dagster as dg

from rag_platform.defs.jobs import tenant_backups
from rag_platform.defs.partitions import daily_run_per_tenant


@dg.schedule(
    job=tenant_backups,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Back up every tenant to RAG_BACKUP_URL.",
)
def nightly_backup(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    return daily_run_per_tenant(context, "backup")
