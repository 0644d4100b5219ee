"""Ingestion: connector sync → text extraction → PII masking → chunks, one partition per tenant.

Each asset calls one component of ``rag_platform.lib.ingestion`` and reports its result as
metadata.
"""

import dataclasses
import json
from collections.abc import Iterator, Sequence

import dagster as dg
import pandas as pd

from rag_platform.defs.partitions import tenants_partitions
from rag_platform.defs.resources import PlatformResource
from rag_platform.defs.tracing import materialization_span
from rag_platform.lib.ingestion.chunk import DocumentChunker
from rag_platform.lib.ingestion.mask import DocumentMasker
from rag_platform.lib.ingestion.parse import DocumentParser
from rag_platform.lib.ingestion.sync import SourceSync
from rag_platform.lib.injection import InjectionScreen, flagged_table

GROUP = "ingestion"


def _md_table(rows: Sequence[Sequence[object]], header: Sequence[str], limit: int = 20) -> str:
    if not rows:
        return "none"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in list(rows)[:limit]:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|")[:160] for c in row) + " |")
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more")
    return "\n".join(lines)


@dg.asset(
    group_name=GROUP,
    kinds={"python", "pandas"},
    partitions_def=tenants_partitions,
    check_specs=[
        dg.AssetCheckSpec(
            "sources_reachable",
            asset="source_documents",
            blocking=False,
            description="Every source of the tenant could be listed; a failed source keeps its "
            "previous documents (warning only).",
            partitions_def=tenants_partitions,
        )
    ],
)
@materialization_span
def source_documents(
    context: dg.AssetExecutionContext, platform: PlatformResource
) -> Iterator[dg.Output[pd.DataFrame] | dg.AssetCheckResult]:
    """Every document of the tenant's sources, synced through their connectors (filesystem
    folders, JSONL/CSV/Parquet datasets, SQL tables, S3 buckets, plugins) incrementally from
    each source's persisted cursor, in full at least every ``full_sync_every``; with content
    hashes, ACL groups and the change set against the previous sync: added, changed, deleted,
    and documents whose permissions changed. Deletions at the source reach the next index
    version because it is built from this set; a source that fails as a whole keeps its
    previous documents (``failed_sources``). Erased documents (the suppression list in the
    metadata store) are left out until released. Per source: last sync, cursor and counts."""
    tenant = platform.tenant(context.partition_key)
    suppressed = platform.store().suppressed_doc_ids(tenant.id)
    result = SourceSync(
        platform.tenant_cache_dir(tenant.id), suppressed, platform.cipher(tenant.id)
    ).run(tenant)
    frame = result.frame
    if result.problems:
        context.log.warning(f"{len(result.problems)} source problem(s): {result.problems[:5]}")
    yield dg.Output(
        frame,
        metadata={
            "documents": len(frame),
            "added": len(result.added),
            "changed": len(result.changed),
            "deleted": len(result.deleted),
            "acl_changed": len(result.acl_changed),
            "unchanged": int((frame["change"] == "unchanged").sum()),
            "problems": len(result.problems),
            "suppressed": len(result.suppressed),
            "problems_table": dg.MetadataValue.md(
                _md_table(result.problems, ["source", "item", "reason"])
            ),
            "failed_sources": dg.MetadataValue.json(result.failed_sources),
            "sources": dg.MetadataValue.json(
                {sid: dataclasses.asdict(r) for sid, r in result.sources.items()}
            ),
            "sources_table": dg.MetadataValue.md(
                _md_table(
                    [
                        (
                            sid,
                            r.last_sync_at,
                            r.cursor or "",
                            "full" if r.full else "incremental",
                            r.listed,
                            r.added,
                            r.changed,
                            r.deleted,
                            r.unchanged,
                            r.problems,
                            r.error or "ok",
                        )
                        for sid, r in result.sources.items()
                    ],
                    [
                        "source",
                        "last sync",
                        "cursor",
                        "listing",
                        "listed",
                        "added",
                        "changed",
                        "deleted",
                        "unchanged",
                        "problems",
                        "status",
                    ],
                )
            ),
            "deleted_doc_ids": dg.MetadataValue.json(result.deleted[:100]),
            "bytes": int(
                frame["content"].map(lambda c: len(c) if isinstance(c, bytes) else 0).sum()
                + frame["text"].map(lambda t: len(t) if isinstance(t, str) else 0).sum()
            ),
            "seconds": round(result.seconds, 3),
        },
    )
    yield dg.AssetCheckResult(
        check_name="sources_reachable",
        asset_key="source_documents",
        passed=not result.failed_sources,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "failed_sources": dg.MetadataValue.json(result.failed_sources),
            "failed": len(result.failed_sources),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "pandas"},
    partitions_def=tenants_partitions,
)
@materialization_span
def parsed_documents(
    context: dg.AssetExecutionContext, platform: PlatformResource, source_documents: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """Text with structure (pages, headings, tables as text) extracted from each document with
    pypdfium2, python-docx, BeautifulSoup and markdown-it-py, files in ``RAG_PARSE_WORKERS``
    processes. A file that cannot be parsed, or not within the tenant's ``parse_seconds``, is
    quarantined with its reason; the run goes on. Parses are cached by content hash."""
    tenant = platform.tenant(context.partition_key)
    parser = DocumentParser(
        platform.tenant_cache_dir(tenant.id),
        budgets=tenant.budgets,
        workers=platform.settings.parse_workers,
        cipher=platform.cipher(tenant.id),
    )
    result = parser.run(source_documents, progress=platform.progress(context, "parse"))
    for q in result.quarantined:
        context.log.warning(f"quarantined {q.uri}: {q.reason}")
    frame = result.frame
    return dg.Output(
        frame,
        metadata={
            "documents": len(frame),
            **result.stats.as_metadata(),
            "quarantined": len(result.quarantined),
            "quarantine": dg.MetadataValue.md(
                _md_table([(q.uri, q.reason) for q in result.quarantined], ["uri", "reason"])
            ),
            "sections": int(frame["sections"].map(lambda s: len(json.loads(s))).sum()),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "presidio"},
    partitions_def=tenants_partitions,
)
@materialization_span
def masked_documents(
    context: dg.AssetExecutionContext, platform: PlatformResource, parsed_documents: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """Parsed documents with PII masked by Presidio under the tenant's policy (entities,
    operator, allow list, NER on or off), in ``RAG_MASK_WORKERS`` processes. Masked spans keep
    their entity type (``<PERSON>``). A document not masked within the tenant's
    ``mask_seconds`` is quarantined (left out); the run goes on. Then each masked document is
    screened for prompt-injection phrasings (``lib/injection.py``): one scoring at least the
    tenant's ``injection.threshold`` is flagged, and left out as quarantined when the tenant's
    ``injection.quarantine`` is on. Metadata: entity counts by type, quarantined documents,
    flagged documents. Cached by content hash and policy."""
    tenant = platform.tenant(context.partition_key)
    settings = platform.settings
    masker = DocumentMasker(
        platform.tenant_cache_dir(tenant.id),
        tenant.pii,
        spacy_model=settings.spacy_model,
        budgets=tenant.budgets,
        workers=settings.mask_workers,
        cipher=platform.cipher(tenant.id),
    )
    result = masker.run(parsed_documents, progress=platform.progress(context, "mask"))
    screened = InjectionScreen(platform.tenant_cache_dir(tenant.id), tenant.injection).run(
        result.frame
    )
    quarantined = [*result.quarantined, *screened.quarantined]
    for q in quarantined:
        context.log.warning(f"quarantined {q.uri}: {q.reason}")
    for f in screened.flagged:
        context.log.warning(f"prompt injection suspected in {f.uri}: {f.score:.2f} {f.matches}")
    return dg.Output(
        screened.frame,
        metadata={
            "documents": len(screened.frame),
            **result.stats.as_metadata(),
            "quarantined": len(quarantined),
            "quarantine": dg.MetadataValue.md(
                _md_table([(q.uri, q.reason) for q in quarantined], ["uri", "reason"])
            ),
            "injection_flagged": len(screened.flagged),
            "injection_quarantined": len(screened.quarantined),
            "injection_flags": dg.MetadataValue.md(
                _md_table(
                    flagged_table(screened.flagged), ["uri", "score", "patterns", "quarantined"]
                )
            ),
            "injection_policy": dg.MetadataValue.json(tenant.injection.model_dump(mode="json")),
            "entities_masked": sum(result.entity_counts.values()),
            "entity_counts": dg.MetadataValue.json(dict(result.entity_counts)),
            "policy": dg.MetadataValue.json(tenant.pii.model_dump(mode="json")),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "pandas"},
    partitions_def=tenants_partitions,
)
@materialization_span
def chunks(
    context: dg.AssetExecutionContext, platform: PlatformResource, masked_documents: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """Structure-aware, token-bounded, overlapping chunks (tokens counted with the embedding
    model's tokenizer), keeping each chunk's heading path and page. Ids are content-derived:
    ``uuid5(doc_id, ordinal:content_hash)``. Blocking checks (great-expectations) guard them."""
    tenant = platform.tenant(context.partition_key)
    result = DocumentChunker(
        platform.tenant_cache_dir(tenant.id), tenant.chunking, platform.cipher(tenant.id)
    ).run(masked_documents, progress=platform.progress(context, "chunk"))
    frame = result.frame
    tokens = frame["token_count"] if len(frame) else pd.Series([0])
    return dg.Output(
        frame,
        metadata={
            "chunks": len(frame),
            "documents": int(frame["doc_id"].nunique()),
            **result.stats.as_metadata(),
            "quarantined": len(result.quarantined),
            "tokens_total": int(tokens.sum()),
            "tokens_mean": round(float(tokens.mean()), 1),
            "tokens_max": int(tokens.max()),
            "chunking": dg.MetadataValue.json(tenant.chunking.model_dump()),
        },
    )
