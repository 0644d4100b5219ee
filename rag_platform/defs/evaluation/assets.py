"""Golden-set evaluation of each new index version, through the same retrieval and answer code
the API uses; its blocking check gates publishing."""

import time
from dataclasses import asdict
from typing import Any

import dagster as dg
import pandas as pd

from rag_platform.defs.partitions import tenants_partitions
from rag_platform.defs.resources import PlatformResource
from rag_platform.defs.tracing import materialization_span
from rag_platform.lib.evaluation import runner

GROUP = "evaluation"


@dg.asset(
    group_name=GROUP,
    kinds={"python"},
    partitions_def=tenants_partitions,
)
@materialization_span
def golden_set(
    context: dg.AssetExecutionContext, platform: PlatformResource, source_documents: pd.DataFrame
) -> dg.Output[dict[str, Any]]:
    """The tenant's golden set (questions with relevant document ids, file-name patterns,
    reference contexts and answers), read from the JSONL, CSV or BEIR folder named in the tenant
    registry, with relevance resolved to this tenant's document ids, plus the golden-set
    candidates from feedback an ML team accepted (``golden_candidates``)."""
    tenant = platform.tenant(context.partition_key)
    golden = runner.tenant_golden_set(tenant, source_documents, platform.store())
    if golden is None:
        return dg.Output(
            {"name": None, "questions": []}, metadata={"questions": 0, "configured": False}
        )
    with_relevance = sum(1 for q in golden.questions if q.relevant_doc_ids)
    return dg.Output(
        {"name": golden.name, "questions": [asdict(q) for q in golden.questions]},
        metadata={
            "questions": len(golden.questions),
            "with_relevant_docs": with_relevance,
            "with_reference_answer": sum(1 for q in golden.questions if q.reference_answer),
            "from_feedback": sum(1 for q in golden.questions if q.question_type == "feedback"),
            "source": str(tenant.golden_set.path) if tenant.golden_set else "",
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "ragas"},
    partitions_def=tenants_partitions,
)
@materialization_span
def index_evaluation(
    context: dg.AssetExecutionContext,
    platform: PlatformResource,
    search_index: dict[str, Any],
    golden_set: dict[str, Any],
) -> dg.Output[dict[str, Any]]:
    """Retrieval metrics (nDCG@10, recall@k, precision@k, MRR with trec_eval) and ragas answer
    metrics of the new index version on the golden set, computed with the API's own Retriever and
    answerer. Writes an HTML and Markdown report with plots under RAG_HOME/reports and compares
    with the published version; the blocking ``evaluation_gate`` check decides publishing."""
    tenant = platform.tenant(context.partition_key)
    start = time.perf_counter()
    result = runner.evaluate_version(
        platform.settings,
        platform.store(),
        tenant,
        search_index,
        golden_set,
        progress=platform.progress(context, "evaluate"),
    )
    summary = result.get("summary", {})
    md = result.get("markdown") or "no golden set configured"
    metadata: dict[str, Any] = {
        "version": search_index["version"],
        "questions": result.get("queries", 0),
        "reused": bool(result.get("reused")),
        "report": dg.MetadataValue.path(result["report_html"])
        if result.get("report_html")
        else "none",
        "report_md": dg.MetadataValue.md(md[:60000]),
        "seconds": round(time.perf_counter() - start, 3),
    }
    for key, value in summary.items():
        if isinstance(value, int | float):
            metadata[key.replace("@", "_at_")] = float(value)
    result.pop("markdown", None)
    return dg.Output(result, metadata=metadata)
