"""Blocking asset checks on ``chunks``: the great-expectations suite of ``lib/quality.py``.

A failing check stops the run before embedding, so the previously published index version keeps
serving (DESIGN.md: "Asset checks ... block bad output").
"""

from collections.abc import Iterator

import dagster as dg
import pandas as pd

from rag_platform.defs.partitions import tenants_partitions
from rag_platform.defs.resources import PlatformResource
from rag_platform.lib.quality import CHUNK_CHECKS, validate_chunks


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            name,
            asset="chunks",
            blocking=True,
            description=description,
            partitions_def=tenants_partitions,
        )
        for name, description in CHUNK_CHECKS.items()
    ],
)
def chunk_checks(
    context: dg.AssetCheckExecutionContext, platform: PlatformResource, chunks: pd.DataFrame
) -> Iterator[dg.AssetCheckResult]:
    """great-expectations suite over the chunk frame; every check blocks downstream assets."""
    tenant = platform.tenant(context.partition_key)
    for name, outcome in validate_chunks(chunks, tenant.id, tenant.chunking.max_tokens).items():
        yield dg.AssetCheckResult(
            check_name=name,
            asset_key="chunks",
            passed=outcome.success,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "unexpected_count": outcome.unexpected_count,
                "examples": dg.MetadataValue.json(outcome.examples),
            },
        )
