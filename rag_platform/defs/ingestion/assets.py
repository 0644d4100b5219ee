"""Ingestion: connector sync → text extraction → PII masking → chunks, one partition per tenant."""

import json
from collections.abc import Sequence

import dagster as dg
import pandas as pd

from rag_platform.defs.partitions import tenants_partitions
from rag_platform.defs.resources import PlatformResource
from rag_platform.lib import stages
from rag_platform.lib.stages import Quarantined, StageCache

GROUP = "ingestion"


def _md_table(rows: Sequence[Sequence[object]], header: Sequence[str], limit: int = 20) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in list(rows)[:limit]:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|")[:160] for c in row) + " |")
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more")
    return "\n".join(lines)


def write_quarantine(
    platform: PlatformResource, tenant: str, stage: str, items: list[Quarantined]
) -> None:
    """Persists the stage's quarantined documents (read by the CLI summary and the admin API)."""
    path = platform.tenant_cache_dir(tenant) / f"quarantine_{stage}.json"
    path.write_text(json.dumps([i.__dict__ for i in items], indent=1))


def read_quarantine(platform: PlatformResource, tenant: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for path in sorted(platform.tenant_cache_dir(tenant).glob("quarantine_*.json")):
        out.extend(json.loads(path.read_text()))
    return out


@dg.asset(
    group_name=GROUP,
    kinds={"python", "pandas"},
    partitions_def=tenants_partitions,
)
def source_documents(
    context: dg.AssetExecutionContext, platform: PlatformResource
) -> dg.Output[pd.DataFrame]:
    """Every document of the tenant's sources, synced through their connectors (filesystem
    folders, JSONL/CSV/Parquet datasets), with content hashes, ACL groups and the change set
    against the previous sync: added, changed, deleted, and documents whose permissions changed.
    Deletions at the source reach the next index version because it is built from this set."""
    tenant = platform.tenant(context.partition_key)
    manifest = platform.tenant_cache_dir(tenant.id) / "manifest.parquet"
    result = stages.sync_sources(tenant, manifest)
    if result.problems:
        context.log.warning(f"{len(result.problems)} source problem(s): {result.problems[:5]}")
    return dg.Output(
        result.frame,
        metadata={
            "documents": len(result.frame),
            "added": len(result.added),
            "changed": len(result.changed),
            "deleted": len(result.deleted),
            "acl_changed": len(result.acl_changed),
            "unchanged": int((result.frame["change"] == "unchanged").sum()),
            "problems": len(result.problems),
            "problems_table": dg.MetadataValue.md(
                _md_table(result.problems, ["source", "item", "reason"])
                if result.problems
                else "none"
            ),
            "deleted_doc_ids": dg.MetadataValue.json(result.deleted[:100]),
            "bytes": int(
                result.frame["content"].map(lambda c: len(c) if c else 0).sum()
                + result.frame["text"].map(lambda t: len(t) if t else 0).sum()
            ),
            "seconds": round(result.seconds, 3),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "pandas"},
    partitions_def=tenants_partitions,
)
def parsed_documents(
    context: dg.AssetExecutionContext, platform: PlatformResource, source_documents: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """Text with structure (pages, headings, tables as text) extracted from each document with
    pypdfium2, python-docx, BeautifulSoup and markdown-it-py. A file that cannot be parsed is
    quarantined with its reason; the run goes on. Parses are cached by content hash."""
    tenant = context.partition_key
    cache = StageCache(platform.tenant_cache_dir(tenant) / "parsed.parquet")
    frame, quarantined, stats = stages.parse_stage(source_documents, cache)
    write_quarantine(platform, tenant, "parse", quarantined)
    for q in quarantined:
        context.log.warning(f"quarantined {q.uri}: {q.reason}")
    return dg.Output(
        frame,
        metadata={
            "documents": len(frame),
            **stats.as_metadata(),
            "quarantined": len(quarantined),
            "quarantine": dg.MetadataValue.md(
                _md_table([(q.uri, q.reason) for q in quarantined], ["uri", "reason"])
                if quarantined
                else "none"
            ),
            "sections": int(frame["sections"].map(lambda s: len(json.loads(s))).sum())
            if len(frame)
            else 0,
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "presidio"},
    partitions_def=tenants_partitions,
)
def masked_documents(
    context: dg.AssetExecutionContext, platform: PlatformResource, parsed_documents: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """Parsed documents with PII masked by Presidio under the tenant's policy (entities,
    operator, allow list, NER on or off). Masked spans keep their entity type (``<PERSON>``).
    With NER, documents are masked in ``RAG_MASK_WORKERS`` processes. Metadata: entity counts by
    type. Cached by content hash and policy."""
    tenant = platform.tenant(context.partition_key)
    cache = StageCache(platform.tenant_cache_dir(tenant.id) / "masked.parquet")

    frame, counts, stats = stages.mask_stage(
        parsed_documents,
        tenant.pii,
        cache,
        stages.MaskerSpec(tenant.pii, platform.settings.spacy_model),
        workers=platform.settings.mask_workers,
    )
    return dg.Output(
        frame,
        metadata={
            "documents": len(frame),
            **stats.as_metadata(),
            "entities_masked": sum(counts.values()),
            "entity_counts": dg.MetadataValue.json(dict(counts)),
            "policy": dg.MetadataValue.json(tenant.pii.model_dump(mode="json")),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "pandas"},
    partitions_def=tenants_partitions,
)
def chunks(
    context: dg.AssetExecutionContext, platform: PlatformResource, masked_documents: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """Structure-aware, token-bounded, overlapping chunks (tokens counted with the embedding
    model's tokenizer), keeping each chunk's heading path and page. Ids are content-derived:
    ``uuid5(doc_id, ordinal:content_hash)``. Blocking checks (great-expectations) guard them."""
    tenant = platform.tenant(context.partition_key)
    cache = StageCache(platform.tenant_cache_dir(tenant.id) / "chunks.parquet")

    def chunker_factory():  # type: ignore[no-untyped-def]
        from rag_platform.lib.ingestion.chunk import Chunker, load_tokenizer

        cfg = tenant.chunking
        return Chunker(load_tokenizer(), cfg.max_tokens, cfg.overlap_tokens, cfg.min_tokens)

    frame, quarantined, stats = stages.chunk_stage(
        masked_documents, tenant.chunking, cache, chunker_factory
    )
    write_quarantine(platform, tenant.id, "chunk", quarantined)
    tokens = frame["token_count"] if len(frame) else pd.Series([0])
    return dg.Output(
        frame,
        metadata={
            "chunks": len(frame),
            "documents": int(frame["doc_id"].nunique()) if len(frame) else 0,
            **stats.as_metadata(),
            "quarantined": len(quarantined),
            "tokens_total": int(tokens.sum()),
            "tokens_mean": round(float(tokens.mean()), 1),
            "tokens_max": int(tokens.max()),
            "chunking": dg.MetadataValue.json(tenant.chunking.model_dump()),
        },
    )
