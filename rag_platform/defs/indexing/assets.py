"""Indexing: chunk embeddings → a new Qdrant Edge index version → atomic publish."""

import shutil
import time
from typing import Any

import dagster as dg
import pandas as pd

from rag_platform.defs.partitions import tenants_partitions
from rag_platform.defs.resources import PlatformResource
from rag_platform.lib import stages
from rag_platform.lib.stages import EmbeddingSet

GROUP = "indexing"


@dg.asset(
    group_name=GROUP,
    kinds={"python", "pytorch"},
    partitions_def=tenants_partitions,
)
def chunk_embeddings(
    context: dg.AssetExecutionContext, platform: PlatformResource, chunks: pd.DataFrame
) -> dg.Output[EmbeddingSet]:
    """Dense embeddings (all-MiniLM-L6-v2, 384-d, L2-normalised) of every chunk, batched with
    sentence-transformers. A chunk whose content hash was embedded before with the same model is
    never embedded again: its vector comes from the tenant's embedding cache."""
    tenant = context.partition_key
    settings = platform.settings
    cache_path = (
        platform.tenant_cache_dir(tenant)
        / f"embeddings-{stages.model_slug(settings.embedding_model)}.npz"
    )

    def embedder_factory() -> Any:
        from rag_platform.lib.embedding import get_embedder

        return get_embedder()

    result, stats = stages.embed_stage(
        chunks, cache_path, settings.embedding_model, embedder_factory
    )
    if stats.processed:
        store = platform.store()
        run_id = context.run.run_id
        store.record_usage(tenant, "embedding_tokens", float(stats.extra["tokens"]), run_id=run_id)
        store.record_usage(tenant, "compute_seconds", float(stats.seconds), run_id=run_id)
    return dg.Output(
        result,
        metadata={
            "chunks": len(chunks),
            "distinct_contents": len(result.hashes),
            **stats.as_metadata(),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "qdrant"},
    partitions_def=tenants_partitions,
)
def search_index(
    context: dg.AssetExecutionContext,
    platform: PlatformResource,
    chunks: pd.DataFrame,
    chunk_embeddings: EmbeddingSet,
) -> dg.Output[dict[str, Any]]:
    """A new index version: a Qdrant Edge shard holding every current chunk with its dense
    vector, BM25 sparse vector and payload (tenant, doc id, text, title, uri, heading path, ACL
    groups, updated_at). Vectors come from the embedding cache, never recomputed. When the chunk
    set, payloads and model are identical to the published version, that version is reused and no
    shard is written."""
    tenant = context.partition_key
    settings = platform.settings
    store = platform.store()
    store.upsert_tenant(tenant)
    fingerprint = stages.index_fingerprint(chunks, settings.embedding_model)
    published = store.get_published_version(tenant)
    documents = int(chunks["doc_id"].nunique()) if len(chunks) else 0
    if published is not None and published.config_hash == fingerprint:
        context.log.info(f"index unchanged: reusing published version {published.version}")
        value = {
            "version": published.version,
            "path": published.path,
            "fingerprint": fingerprint,
            "reused": True,
            "documents": documents,
            "chunks": len(chunks),
        }
        return dg.Output(value, metadata={**value, "seconds": 0.0})

    from rag_platform.lib.embedding import SparseEncoder

    version = stages.new_version_id()
    path = platform.tenant_index_dir(tenant) / version
    start = time.perf_counter()
    try:
        stats = stages.build_index(chunks, chunk_embeddings, path, SparseEncoder())
    except Exception:
        shutil.rmtree(path, ignore_errors=True)
        raise
    size = stages.directory_bytes(path)
    store.register_version(
        tenant,
        version,
        str(path),
        documents=documents,
        chunks=len(chunks),
        config_hash=fingerprint,
        details={"bytes": size, "run_id": context.run.run_id},
    )
    value = {
        "version": version,
        "path": str(path),
        "fingerprint": fingerprint,
        "reused": False,
        "documents": documents,
        "chunks": len(chunks),
    }
    return dg.Output(
        value,
        metadata={
            **value,
            "bytes": size,
            "seconds": round(time.perf_counter() - start, 3),
            "points_per_s": round(stats.processed / max(stats.seconds, 1e-9), 1),
            "previous_published": published.version if published else "none",
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "qdrant"},
    partitions_def=tenants_partitions,
    deps=["index_evaluation"],
)
def published_index(
    context: dg.AssetExecutionContext, platform: PlatformResource, search_index: dict[str, Any]
) -> dg.Output[dict[str, Any]]:
    """Atomically makes the new index version the one the API serves (one transaction in the
    metadata store; API workers pick it up without restart). Runs only when every blocking check
    upstream passed, so a failed check leaves the previous version serving. The published version
    and the ``RAG_VERSIONS_KEPT - 1`` versions published before it stay on disk for rollback
    (builds that were never published do not count); older unused shards are deleted."""
    from rag_platform.lib.index.pool import gc_versions, versions_to_keep

    tenant = context.partition_key
    store = platform.store()
    version = search_index["version"]
    current = store.get_published_version(tenant)
    if current is not None and current.version == version:
        published_now = False
    else:
        store.publish_version(tenant, version, actor=f"dagster:{context.run.run_id}")
        published_now = True
    report_dir = platform.settings.reports_dir / tenant / version
    if published_now and (report_dir / "report.json").exists():
        from rag_platform.lib.evaluation.report import mark_published

        mark_published(report_dir)
    keep = versions_to_keep(store.list_versions(tenant), version, platform.settings.versions_kept)
    deleted = gc_versions(platform.tenant_index_dir(tenant), keep)
    for name in deleted:
        store.set_version_status(tenant, name, "deleted")
    value = {
        "version": version,
        "published_now": published_now,
        "previous": current.version if current else None,
    }
    return dg.Output(
        value,
        metadata={
            **{k: str(v) for k, v in value.items()},
            "garbage_collected": len(deleted),
            "kept_versions": dg.MetadataValue.json(sorted(keep)),
        },
    )
