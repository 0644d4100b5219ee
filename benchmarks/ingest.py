"""Ingestion benchmark: materializes the scifact tenant from empty state, then again with nothing
changed, and compares the embedding stage with a bare encode of the same chunk texts by the same
embedder object at the same batch size in the same process (``embed_documents``: one
``SentenceTransformer.encode`` call for ``torch``, the onnxruntime batches for ``onnx-int8``).

Prints one JSON object: backend, documents, chunks, seconds_by_stage, chunks_per_s (embedding
stage: chunks embedded / stage wall time), bare_encode_chunks_per_s, ratio, first_run_seconds,
resync_seconds, resync_speedup, resync_embedded, and for ``onnx-int8`` onnx_build_seconds (the
int8 artefact is built, or reused, under the settings' models folder before the timed runs, so
neither run includes the build). Targets: ratio ≥ 0.9, resync ≥ 50× faster.

Usage::

    .venv/bin/python benchmarks/ingest.py [--backend torch|onnx-int8] [--limit 1000]
        [--home /tmp/bench_home]
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
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx-int8"),
        default=None,
        help="embedding backend (default: RAG_EMBEDDING_BACKEND, resolved)",
    )
    args = parser.parse_args()

    from rag_platform.lib.embedding import resolve_backend
    from rag_platform.lib.tenants import load_registry
    from rag_platform.settings import get_settings

    # The configured models folder, outside the benchmark's fresh RAG_HOME: the int8 artefact
    # is built once, not by every run.
    configured = get_settings()
    backend = args.backend or resolve_backend(configured.embedding_backend)
    os.environ["RAG_EMBEDDING_BACKEND"] = backend
    os.environ["RAG_MODELS_DIR"] = str(configured.resolved_models_dir)
    home = args.home or Path(tempfile.mkdtemp(prefix="rag_bench_ingest_"))
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    os.environ["RAG_HOME"] = str(home)
    logging.disable(logging.WARNING)
    get_settings.cache_clear()

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

    from rag_platform.lib.embedding import load_embedder

    embedder = load_embedder(
        backend,
        settings.embedding_model,
        settings.embedding_batch_size,
        settings.resolved_models_dir,
    )
    onnx_build_seconds = None
    if backend == "onnx-int8":
        from rag_platform.lib.embedding.dense import default_model_path
        from rag_platform.lib.embedding.onnx import agreement_sample, build_onnx_int8_model

        t0 = time.perf_counter()
        build_onnx_int8_model(
            default_model_path(), settings.resolved_models_dir, list(agreement_sample())
        )
        onnx_build_seconds = round(time.perf_counter() - t0, 1)

    from rag_platform.runner import materialize_tenant

    first = materialize_tenant(args.tenant, settings)
    if not first.success:
        raise SystemExit(f"first materialization failed: {first.as_json()}")
    second = materialize_tenant(args.tenant, settings)

    # Bare encode of the same chunk texts, same embedder object and batch size, same process.
    import pandas as pd

    chunks = pd.read_parquet(settings.storage_dir / "chunks" / args.tenant)
    texts = chunks.drop_duplicates("content_hash")["embedding_text"].tolist()
    t0 = time.perf_counter()
    embedder.embed_documents(texts)
    bare_seconds = time.perf_counter() - t0

    emb = first.metadata["chunk_embeddings"]
    stage_seconds = float(emb["seconds"])
    chunks_per_s = emb["embedded"] / stage_seconds
    bare = len(texts) / bare_seconds
    print(
        json.dumps(
            {
                "tenant": args.tenant,
                "backend": backend,
                "embedding": first.metadata["chunk_embeddings"]["model"],
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
                "onnx_build_seconds": onnx_build_seconds,
            }
        )
    )
    if args.home is None:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
