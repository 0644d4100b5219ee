"""Jobs: the per-tenant pipeline (sync to publish), its cost preview (``tenant_plan``), the
per-tenant-day cost rollup, the per-tenant backup, the per-tenant retention sweep and the
per-tenant golden-set candidates from feedback."""

import dagster as dg

from rag_platform.defs.executor import pipeline_executor
from rag_platform.defs.partitions import tenant_day_partitions, tenants_partitions
from rag_platform.defs.resources import PlatformResource
from rag_platform.lib.plan import plan_tenant

PIPELINE_GROUPS = ("ingestion", "indexing", "evaluation")

#: Everything from connector sync to publishing, for one tenant partition, with its checks. Its
#: steps run on dagster-celery workers when RAG_CELERY_BROKER_URL is set (see executor.py).
tenant_pipeline = dg.define_asset_job(
    "tenant_pipeline",
    selection=dg.AssetSelection.groups(*PIPELINE_GROUPS),
    partitions_def=tenants_partitions,
    description="Sync, parse, mask, chunk, embed, index, evaluate and publish one tenant.",
    executor_def=pipeline_executor(),
)

#: Daily cost rollup for one tenant and day.
tenant_costs = dg.define_asset_job(
    "tenant_costs",
    selection=dg.AssetSelection.groups("costs"),
    partitions_def=tenant_day_partitions,
    description="Roll up embedding, compute, LLM and storage costs per tenant per day.",
)

#: A backup of one tenant (see rag_platform/lib/backup.py).
tenant_backups = dg.define_asset_job(
    "tenant_backups",
    selection=dg.AssetSelection.groups("operations"),
    partitions_def=tenants_partitions,
    description="Back up one tenant: published index, metadata rows, registry entry, caches.",
)

#: Deletes what a tenant's retention policy no longer keeps (``retention_sweep``).
tenant_retention = dg.define_asset_job(
    "tenant_retention",
    selection=dg.AssetSelection.groups("lifecycle"),
    partitions_def=tenants_partitions,
    description="Apply one tenant's retention policy: query log, feedback, audit log, "
    "quarantine records, retired index versions.",
)

#: Low-rated queries → golden-set candidates (``golden_candidates``).
tenant_feedback = dg.define_asset_job(
    "tenant_feedback",
    selection=dg.AssetSelection.groups("feedback"),
    partitions_def=tenants_partitions,
    description="Turn one tenant's low-rated queries into golden-set candidates for review.",
)


@dg.op(
    description="What the tenant's next tenant_pipeline run would parse, mask, chunk and embed, "
    "with its estimated seconds and cost (lib/plan.py); reads the sources and the content "
    "caches, writes nothing. Run it before a backfill: the counts are this op's output metadata.",
    out=dg.Out(dg.Nothing),
)
def plan_tenant_run(context: dg.OpExecutionContext, platform: PlatformResource) -> dg.Output[None]:
    plan = plan_tenant(platform.settings, platform.tenant(context.partition_key))
    values = plan.as_json()
    context.log.info(
        f"{plan.tenant}: would parse {plan.to_parse}, mask {plan.to_mask}, chunk "
        f"{plan.to_chunk}, embed {plan.to_embed} chunks; ~{values['estimated_seconds']} s, "
        f"USD {values['estimated_cost']}"
    )
    return dg.Output(
        None,
        metadata={
            **{
                key: values[key]
                for key in (
                    "documents",
                    "to_parse",
                    "to_mask",
                    "to_chunk",
                    "to_embed",
                    "to_embed_estimated",
                    "to_index",
                    "deleted",
                    "embedding_tokens",
                    "estimated_seconds",
                    "estimated_cost",
                )
            },
            "seconds_by_stage": dg.MetadataValue.json(values["seconds_by_stage"]),
            "rates": dg.MetadataValue.json(values["rates"]),
        },
    )


@dg.job(
    partitions_def=tenants_partitions,
    description="Cost preview of one tenant: the plan_tenant_run op's metadata holds what "
    "tenant_pipeline would process, its estimated seconds and cost. Changes no platform state.",
)
def tenant_plan() -> None:
    plan_tenant_run()
