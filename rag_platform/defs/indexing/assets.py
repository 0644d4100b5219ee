"""Indexing: chunk embeddings → a new index version (a Qdrant Edge shard, or a collection of
the Qdrant server when ``RAG_QDRANT_URL`` is set) → atomic publish.

Each asset calls one component (``lib/embedding/stage.py``, ``lib/index/versions.py``) and
reports its result as metadata.
"""

from typing import Any

import dagster as dg
import pandas as pd

from rag_platform.defs.partitions import tenants_partitions
from rag_platform.defs.resources import PlatformResource
from rag_platform.defs.tracing import materialization_span
from rag_platform.lib.embedding import load_embedder
from rag_platform.lib.embedding.stage import ChunkEmbedder, EmbeddingSet
from rag_platform.lib.index.backend import open_backend
from rag_platform.lib.index.versions import IndexVersions
from rag_platform.lib.lifecycle.lineage import build_provenance

GROUP = "indexing"


def index_versions(platform: PlatformResource) -> IndexVersions:
    settings = platform.settings
    return IndexVersions(
        platform.store(), open_backend(settings), settings.reports_dir, settings.versions_kept
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "pytorch"},
    partitions_def=tenants_partitions,
)
@materialization_span
def chunk_embeddings(
    context: dg.AssetExecutionContext, platform: PlatformResource, chunks: pd.DataFrame
) -> dg.Output[EmbeddingSet]:
    """Dense embeddings (all-MiniLM-L6-v2, 384-d, L2-normalised) of every chunk, batched with
    sentence-transformers or ONNX Runtime int8 (``RAG_EMBEDDING_BACKEND``). A chunk whose content
    hash was embedded before with the same model and backend is never embedded again: its vector
    comes from the tenant's embedding cache."""
    tenant = context.partition_key
    settings = platform.settings
    embedder = ChunkEmbedder(
        platform.tenant_cache_dir(tenant),
        load_embedder(
            settings.embedding_backend,
            settings.embedding_model,
            settings.embedding_batch_size,
            settings.resolved_models_dir,
            settings.embedding_threads,
        ),
    )
    result = embedder.run(chunks, progress=platform.progress(context, "embed"))
    stats = result.stats
    if stats.processed:
        store = platform.store()
        run_id = context.run.run_id
        tokens = float(stats.extra["tokens"] or 0)
        store.record_usage(tenant, "embedding_tokens", tokens, run_id=run_id)
        store.record_usage(tenant, "compute_seconds", float(stats.seconds), run_id=run_id)
    return dg.Output(
        result.embeddings,
        metadata={
            "chunks": len(chunks),
            "distinct_contents": len(result.embeddings.hashes),
            **stats.as_metadata(),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "qdrant"},
    partitions_def=tenants_partitions,
)
@materialization_span
def search_index(
    context: dg.AssetExecutionContext,
    platform: PlatformResource,
    chunks: pd.DataFrame,
    chunk_embeddings: EmbeddingSet,
) -> dg.Output[dict[str, Any]]:
    """A new index version: a Qdrant Edge shard (or, with ``RAG_QDRANT_URL``, a server
    collection ``kb_<tenant>_<version>``) holding every current chunk with its dense vector,
    BM25 sparse vector and payload (tenant, doc id, text, title, uri, heading path, ACL groups,
    updated_at, content hash). Vectors come from the embedding cache, never recomputed. The
    version records the run id, the code version and the tenant configuration's fingerprint
    (lineage). When the chunk set,
    payloads and model are identical to the published version, that version is reused and
    nothing is written."""
    build = index_versions(platform).build_or_reuse(
        context.partition_key,
        chunks,
        chunk_embeddings,
        run_id=context.run.run_id,
        provenance=build_provenance(platform.tenant(context.partition_key)),
        progress=platform.progress(context, "index"),
    )
    value = build.summary()
    if build.reused:
        context.log.info(f"index unchanged: reusing published version {build.version}")
        return dg.Output(value, metadata={**value, "seconds": 0.0})
    return dg.Output(
        value,
        metadata={
            **value,
            "bytes": build.bytes or 0,
            "seconds": round(build.seconds, 3),
            "points_per_s": build.points_per_s or 0.0,
            "previous_published": build.previous_published or "none",
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "qdrant"},
    partitions_def=tenants_partitions,
    deps=["index_evaluation"],
)
@materialization_span
def published_index(
    context: dg.AssetExecutionContext, platform: PlatformResource, search_index: dict[str, Any]
) -> dg.Output[dict[str, Any]]:
    """Atomically makes the new index version the one the API serves (one transaction in the
    metadata store, and on the Qdrant server the tenant's alias ``kb_<tenant>`` switched to the
    version's collection; API workers pick it up without restart). Runs only when every blocking
    check upstream passed, so a failed check leaves the previous version serving. The published
    version and the ``RAG_VERSIONS_KEPT - 1`` versions published before it stay for rollback
    (builds that were never published do not count); older unused versions are deleted. Its
    metadata records the version's reconciliation receipt."""
    result = index_versions(platform).publish(
        context.partition_key, search_index["version"], actor=f"dagster:{context.run.run_id}"
    )
    value = {
        "version": result.version,
        "published_now": result.published_now,
        "previous": result.previous,
    }
    return dg.Output(
        value,
        metadata={
            **{k: str(v) for k, v in value.items()},
            "garbage_collected": len(result.deleted),
            "kept_versions": dg.MetadataValue.json(sorted(result.kept)),
            "receipt": dg.MetadataValue.json(result.receipt.to_dict() if result.receipt else {}),
        },
    )
