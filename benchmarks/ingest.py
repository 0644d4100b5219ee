"""Ingestion benchmark: materializes the scifact tenant from empty state, then again with nothing
changed, and compares the embedding stage with a bare ``SentenceTransformer.encode`` of the same
chunk texts at the same batch size in the same process.

Prints one JSON object: documents, chunks, seconds_by_stage, chunks_per_s (embedding stage:
chunks embedded / stage wall time), bare_encode_chunks_per_s, ratio, first_run_seconds,
resync_seconds, resync_speedup, resync_embedded. Targets: ratio ≥ 0.9, resync ≥ 50× faster.

Usage::

    .venv/bin/python benchmarks/ingest.py [--limit 1000] [--home /tmp/bench_home]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from rag_platform.settings import configure_runtime_env

    configure_runtime_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenant", default="scifact")
    parser.add_argument("--limit", type=int, default=None, help="first N documents only")
    parser.add_argument("--home", type=Path, default=None, help="RAG_HOME (default: a temp dir)")
    args = parser.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="rag_bench_ingest_"))
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    os.environ["RAG_HOME"] = str(home)
    logging.disable(logging.WARNING)

    from rag_platform.lib.tenants import load_registry
    from rag_platform.settings import get_settings

    settings = get_settings()
    registry = load_registry(settings.tenants_file, settings.data_dir)
    tenant = registry.get(args.tenant)
    if args.limit:
        for source in tenant.sources:
            if source.type == "dataset":
                source.limit = args.limit
    tenants_file = home / "tenants.yaml"
    tenants_file.write_text(
        yaml.safe_dump({"tenants": [tenant.model_dump(mode="json", exclude_none=True)]})
    )
    os.environ["RAG_TENANTS_FILE"] = str(tenants_file)
    get_settings.cache_clear()
    settings = get_settings()

    from rag_platform.runner import materialize_tenant

    first = materialize_tenant(args.tenant, settings)
    if not first.success:
        raise SystemExit(f"first materialization failed: {first.as_json()}")
    second = materialize_tenant(args.tenant, settings)

    # Bare encode of the same chunk texts, same model object and batch size, same process.
    import pandas as pd

    from rag_platform.lib.embedding import get_embedder

    chunks = pd.read_parquet(settings.storage_dir / "chunks" / args.tenant)
    texts = chunks.drop_duplicates("content_hash")["embedding_text"].tolist()
    embedder = get_embedder(settings.embedding_model, settings.embedding_batch_size)
    t0 = time.perf_counter()
    embedder.model.encode(
        texts,
        batch_size=settings.embedding_batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    bare_seconds = time.perf_counter() - t0

    emb = first.metadata["chunk_embeddings"]
    stage_seconds = float(emb["seconds"])
    chunks_per_s = emb["embedded"] / stage_seconds
    bare = len(texts) / bare_seconds
    print(
        json.dumps(
            {
                "tenant": args.tenant,
                "documents": first.documents,
                "chunks": first.chunks,
                "embedded": first.embedded,
                "seconds_by_stage": {k: round(v, 2) for k, v in first.seconds_by_stage.items()},
                "chunks_per_s": round(chunks_per_s, 1),
                "bare_encode_chunks_per_s": round(bare, 1),
                "ratio": round(chunks_per_s / bare, 3),
                "first_run_seconds": round(first.seconds, 1),
                "resync_seconds": round(second.seconds, 2),
                "resync_speedup": round(first.seconds / second.seconds, 1),
                "resync_embedded": second.embedded,
                "batch_size": settings.embedding_batch_size,
                "published": first.published,
            }
        )
    )
    if args.home is None:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
