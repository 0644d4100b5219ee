"""Blocking asset checks on ``chunks``, written as great-expectations expectations.

A failing check stops the run before embedding, so the previously published index version keeps
serving (DESIGN.md: "Asset checks ... block bad output").
"""

import os
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pandas as pd

from rag_platform.defs.partitions import tenants_partitions
from rag_platform.defs.resources import PlatformResource

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

CHECKS = {
    "chunk_ids_unique": "Every chunk id occurs once.",
    "chunk_text_non_empty": "No chunk has empty text.",
    "chunk_token_counts_in_bounds": "Token counts lie in [1, max_tokens] of the tenant's chunking.",
    "chunk_tenant_matches_partition": "Every chunk belongs to the partition's tenant.",
    "chunk_no_residual_pii": "No chunk still matches a PII pattern (e-mail, SSN, card, phone).",
}


def _validator(frame: pd.DataFrame) -> Any:
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # older or newer GX without this knob: progress bars are harmless
        pass
    asset = context.data_sources.add_pandas("chunks").add_dataframe_asset("chunks")
    batch_def = asset.add_batch_definition_whole_dataframe("all")
    return batch_def.get_batch(batch_parameters={"dataframe": frame})


def validate_chunks(frame: pd.DataFrame, tenant: str, max_tokens: int) -> dict[str, dict[str, Any]]:
    """Runs the chunk expectations with great-expectations.

    Args:
        frame: the chunks frame (``rag_platform.lib.stages.CHUNK_COLUMNS``).
        tenant: the partition's tenant id.
        max_tokens: the tenant's chunk budget.

    Returns:
        check name → {"success": bool, "unexpected_count": int, "examples": list}.
    """
    import great_expectations as gx

    from rag_platform.lib.ingestion.mask import find_residual_pii

    checked = frame[["chunk_id", "text", "token_count", "tenant"]].copy()
    checked["residual_pii"] = frame["text"].map(lambda t: ",".join(find_residual_pii(t)))
    if checked.empty:  # GX needs at least one row to compute column metrics
        return {name: {"success": True, "unexpected_count": 0, "examples": []} for name in CHECKS}
    batch = _validator(checked)
    expectations = {
        "chunk_ids_unique": gx.expectations.ExpectColumnValuesToBeUnique(column="chunk_id"),
        "chunk_text_non_empty": gx.expectations.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=1
        ),
        "chunk_token_counts_in_bounds": gx.expectations.ExpectColumnValuesToBeBetween(
            column="token_count", min_value=1, max_value=max_tokens
        ),
        "chunk_tenant_matches_partition": gx.expectations.ExpectColumnValuesToBeInSet(
            column="tenant", value_set=[tenant]
        ),
        "chunk_no_residual_pii": gx.expectations.ExpectColumnValuesToBeInSet(
            column="residual_pii", value_set=[""]
        ),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, expectation in expectations.items():
        result = batch.validate(expectation)
        out[name] = {
            "success": bool(result.success),
            "unexpected_count": int(result.result.get("unexpected_count") or 0),
            "examples": [
                str(x)[:120] for x in (result.result.get("partial_unexpected_list") or [])[:5]
            ],
        }
    return out


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            name,
            asset="chunks",
            blocking=True,
            description=description,
            partitions_def=tenants_partitions,
        )
        for name, description in CHECKS.items()
    ],
)
def chunk_checks(
    context: dg.AssetCheckExecutionContext, platform: PlatformResource, chunks: pd.DataFrame
) -> Iterator[dg.AssetCheckResult]:
    """great-expectations suite over the chunk frame; every check blocks downstream assets."""
    tenant = platform.tenant(context.partition_key)
    results = validate_chunks(chunks, tenant.id, tenant.chunking.max_tokens)
    for name, r in results.items():
        yield dg.AssetCheckResult(
            check_name=name,
            asset_key="chunks",
            passed=r["success"],
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "unexpected_count": r["unexpected_count"],
                "examples": dg.MetadataValue.json(r["examples"]),
            },
        )
