"""The blocking evaluation gate: thresholds and regression against the published version."""

from typing import Any

import dagster as dg

from rag_platform.defs.partitions import tenants_partitions


@dg.asset_check(
    asset="index_evaluation",
    blocking=True,
    partitions_def=tenants_partitions,
    description="Fails when a metric is below the tenant's threshold or regressed by more than "
    "max_regression against the published version; then the new version is not published.",
)
def evaluation_gate(index_evaluation: dict[str, Any]) -> dg.AssetCheckResult:
    gate = index_evaluation.get("gate") or {"passed": True, "reasons": [], "compared_to": None}
    return dg.AssetCheckResult(
        passed=bool(gate["passed"]),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "reasons": dg.MetadataValue.json(gate.get("reasons", [])),
            "compared_to": str(gate.get("compared_to")),
            "version": str(index_evaluation.get("version")),
        },
    )
