"""Feedback as data: the per-tenant golden-set candidates (``lib/evaluation/candidates.py``)."""

from typing import Any

import dagster as dg

from rag_platform.defs.partitions import tenants_partitions
from rag_platform.defs.resources import PlatformResource
from rag_platform.lib.evaluation.candidates import CandidateCollector
from rag_platform.lib.index.backend import open_backend


@dg.asset(
    group_name="feedback",
    kinds={"python"},
    partitions_def=tenants_partitions,
)
def golden_candidates(
    context: dg.AssetExecutionContext, platform: PlatformResource
) -> dg.Output[dict[str, Any]]:
    """Turns the tenant's low-rated queries (lowest rating at most 2 of 5) into golden-set
    candidates for review: the PII-masked question, the chunks it retrieved, the rating and the
    comments. An ML team accepts (with the relevant documents or a reference answer) or rejects
    them (``rag-platform golden``, ``/v1/admin/golden-candidates``); accepted candidates join
    the tenant's golden set at the next ``golden_set`` materialization, so the next evaluation
    gate scores them. Metadata: low-rated queries, new candidates, pending and accepted."""
    tenant = platform.tenant(context.partition_key)
    result = CandidateCollector(platform.store(), open_backend(platform.settings)).run(tenant.id)
    value = result.to_dict()
    return dg.Output(
        value,
        metadata={
            "low_rated": result.low_rated,
            "added": result.added,
            "already_known": result.already_known,
            "missing_queries": result.missing_queries,
            "pending": result.pending,
            "accepted": result.accepted,
        },
    )
