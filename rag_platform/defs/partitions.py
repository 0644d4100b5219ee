"""Partitions: one partition per tenant (kept in step with the registry by a sensor), and
tenant × day for cost rollups."""

from __future__ import annotations

import dagster as dg

#: Name of the tenants partitions definition (the instance stores its keys under it).
TENANTS = "tenants"

#: Tenants are dynamic partitions; ``tenant_registry_sensor`` adds and removes them.
tenants_partitions = dg.DynamicPartitionsDefinition(name=TENANTS)

#: Cost rollups: one partition per tenant and UTC day.
tenant_day_partitions = dg.MultiPartitionsDefinition(
    {
        "tenant": tenants_partitions,
        "day": dg.DailyPartitionsDefinition(start_date="2026-01-01", end_offset=1),
    }
)


def daily_run_per_tenant(context: dg.ScheduleEvaluationContext, kind: str) -> list[dg.RunRequest]:
    """One run request per tenant partition for the schedule's UTC day, with the run key
    ``<kind>:<tenant>:<YYYY-MM-DD>`` (a tick evaluated twice never starts a second run)."""
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [
        dg.RunRequest(partition_key=t, run_key=f"{kind}:{t}:{day}")
        for t in context.instance.get_dynamic_partitions(TENANTS)
    ]
