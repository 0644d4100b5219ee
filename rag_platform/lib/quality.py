"""The chunk quality suite: great-expectations expectations over the chunks frame.

Five checks, each blocking in the pipeline (``defs/ingestion/checks.py``): chunk ids unique,
text non-empty, token counts in ``[1, max_tokens]``, tenant matches the partition, no residual
PII pattern (:func:`rag_platform.lib.ingestion.mask.find_residual_pii`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from rag_platform.lib.ingestion.mask import find_residual_pii

#: Check name → what it asserts.
CHUNK_CHECKS = {
    "chunk_ids_unique": "Every chunk id occurs once.",
    "chunk_text_non_empty": "No chunk has empty text.",
    "chunk_token_counts_in_bounds": "Token counts lie in [1, max_tokens] of the tenant's chunking.",
    "chunk_tenant_matches_partition": "Every chunk belongs to the partition's tenant.",
    "chunk_no_residual_pii": "No chunk still matches a PII pattern (e-mail, SSN, card, phone).",
}


@dataclass
class CheckOutcome:
    """One expectation's result.

    Attributes:
        success: the expectation held for every row.
        unexpected_count: rows that broke it.
        examples: up to five offending values (each cut to 120 characters).
    """

    success: bool
    unexpected_count: int = 0
    examples: list[str] = field(default_factory=list)


def _batch(frame: pd.DataFrame) -> Any:
    """A great-expectations batch over ``frame`` in an ephemeral context (no files, no
    progress bars)."""
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


def validate_chunks(frame: pd.DataFrame, tenant: str, max_tokens: int) -> dict[str, CheckOutcome]:
    """Runs the chunk expectations with great-expectations.

    Args:
        frame: the chunks frame (``rag_platform.lib.models.CHUNK_COLUMNS``).
        tenant: the partition's tenant id.
        max_tokens: the tenant's chunk budget.

    Returns:
        Check name (the keys of :data:`CHUNK_CHECKS`) → outcome. An empty frame passes all.
    """
    import great_expectations as gx

    checked = frame[["chunk_id", "text", "token_count", "tenant"]].copy()
    checked["residual_pii"] = frame["text"].map(lambda t: ",".join(find_residual_pii(t)))
    if checked.empty:  # GX needs at least one row to compute column metrics
        return {name: CheckOutcome(True, 0, []) for name in CHUNK_CHECKS}
    batch = _batch(checked)
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
    out: dict[str, CheckOutcome] = {}
    for name, expectation in expectations.items():
        result = batch.validate(expectation)
        out[name] = CheckOutcome(
            success=bool(result.success),
            unexpected_count=int(result.result.get("unexpected_count") or 0),
            examples=[
                str(x)[:120] for x in (result.result.get("partial_unexpected_list") or [])[:5]
            ],
        )
    return out
