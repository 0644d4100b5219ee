"""Retrieval benchmark on SciFact train: BM25, dense, plain RRF and the default hybrid settings.

Each SciFact document (title + ". " + abstract) is one chunk in a Qdrant Edge shard built with
the platform's own writer; every query goes through the platform's ``Retriever`` (the code path
the API and the golden-set evaluation use), with an ACL filter inside the query as in serving.
Metrics are doc-level nDCG@10 and recall@100 computed with ranx; latency is the median per query,
query embedding included.

The corpus embedding (about 260 s on 2 cores) is cached under
``$RAG_HOME/bench_cache/`` as ``.npy`` keyed by model name and a hash of the texts.

Usage::

    .venv/bin/python benchmarks/retrieval.py                 # all 809 train queries
    .venv/bin/python benchmarks/retrieval.py --limit-queries 100
    .venv/bin/python benchmarks/retrieval.py --sweep all     # also print the tuning sweep (stderr)

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag_platform.settings import PROJECT_ROOT, configure_runtime_env, get_settings  # noqa: E402

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "scifact"
TENANT = "bench"


def load_scifact(
    data_dir: Path, split: str = "train"
) -> tuple[list[tuple[str, str, str]], dict[str, str], dict[str, dict[str, int]]]:
    """Reads a BEIR-format SciFact folder.

    Returns:
        ``(docs, queries, qrels)``: docs as ``(doc_id, title + ". " + text, title)`` in corpus
        order; queries ``{query_id: text}`` restricted to those with qrels in ``split``; qrels
        ``{query_id: {doc_id: relevance}}``.
    """
    docs: list[tuple[str, str, str]] = []
    with open(data_dir / "corpus.jsonl") as f:
        for line in f:
            row = json.loads(line)
            title = row.get("title") or ""
            docs.append((str(row["_id"]), f"{title}. {row.get('text') or ''}", title))
    qrels: dict[str, dict[str, int]] = {}
    with open(data_dir / "qrels" / f"{split}.tsv") as f:
        next(f)
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")
            if int(score) > 0:
                qrels.setdefault(qid, {})[did] = int(score)
    queries: dict[str, str] = {}
    with open(data_dir / "queries.jsonl") as f:
        for line in f:
            row = json.loads(line)
            if str(row["_id"]) in qrels:
                queries[str(row["_id"])] = row["text"]
    return docs, queries, qrels


def cache_dir() -> Path:
    d = get_settings().home / "bench_cache"
    d.mkdir(parents=True, exist_ok=True)
    return d


def cached_embeddings(embedder: Any, texts: list[str]) -> np.ndarray:
    """Embeds ``texts`` once; later calls with the same model and texts load the ``.npy``.

    Returns:
        float32 array ``(len(texts), dim)``, L2-normalised.
    """
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x1e")
    slug = re.sub(r"[^A-Za-z0-9]+", "_", embedder.model_name)
    path = cache_dir() / f"{slug}_{len(texts)}_{h.hexdigest()[:16]}.npy"
    if path.exists():
        return np.load(path)
    t0 = time.perf_counter()
    matrix = embedder.embed_documents(texts)
    print(f"embedded {len(texts)} texts in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, matrix)
    tmp.replace(path)
    return matrix


def build_shard(
    path: Path, docs: list[tuple[str, str, str]], matrix: np.ndarray, sparse_encoder: Any
) -> float:
    """Writes one Edge shard (one chunk per document, ACL group ``all``); returns seconds."""
    from rag_platform.lib.index.edge import EdgeIndexWriter, IndexPoint, make_payload
    from rag_platform.lib.models import make_chunk_id, make_doc_id, sha256_hex

    t0 = time.perf_counter()
    sparse = sparse_encoder.encode_documents([d[1] for d in docs])
    points = []
    for (native_id, text, title), dense, sp in zip(docs, matrix, sparse, strict=True):
        doc_id = make_doc_id(TENANT, "scifact", native_id)
        chunk_id = make_chunk_id(doc_id, 0, sha256_hex(text))
        payload = make_payload(
            tenant=TENANT,
            doc_id=doc_id,
            chunk_id=chunk_id,
            ordinal=0,
            text=text,
            title=title,
            uri=f"scifact:{native_id}",
            source_id="scifact",
            mime_type="text/plain",
            acl_groups=["all"],
        )
        payload["native_id"] = native_id
        points.append(IndexPoint(id=chunk_id, dense=dense, sparse=sp, payload=payload))
    writer = EdgeIndexWriter.create(path, matrix.shape[1])
    writer.upsert(points)
    writer.close()
    return time.perf_counter() - t0


def evaluate_run(run: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """nDCG@10 and recall@100 with ranx; ``run`` maps a query id to doc ids, best first.

    Scores given to ranx are ``1 / (rank + 1)`` so ties in fused scores keep the engine's order.
    """
    from ranx import Qrels, Run, evaluate

    ranx_run = {
        qid: ({d: 1.0 / (i + 1) for i, d in enumerate(docs)} if docs else {"__none__": 0.0})
        for qid, docs in run.items()
    }
    sub_qrels = {q: qrels[q] for q in run}
    scores = evaluate(Qrels(sub_qrels), Run(ranx_run), ["ndcg@10", "recall@100"])
    return {k: round(float(v), 4) for k, v in scores.items()}


def doc_ranking(hits: Iterable[Any]) -> list[str]:
    """Doc-level ranking (SciFact ids from ``uri = "scifact:<id>"``): each document at the
    rank of its best chunk."""
    seen: dict[str, None] = {}
    for h in hits:
        seen.setdefault(h.uri.split(":", 1)[1])
    return list(seen)


def run_config(
    retriever: Any,
    queries: dict[str, str],
    filters: Any,
    top_k: int,
    encoded: dict[str, tuple[np.ndarray, Any]] | None = None,
) -> tuple[dict[str, list[str]], float]:
    """Runs every query; returns the doc-level run and the median ms per query.

    With ``encoded`` (precomputed query vectors, for the sweep) the time excludes encoding;
    without it each query goes through ``Retriever.retrieve`` and the time includes the dense
    and sparse query encoding.
    """
    run: dict[str, list[str]] = {}
    times: list[float] = []
    for qid, text in queries.items():
        t0 = time.perf_counter()
        if encoded is None:
            hits = retriever.retrieve(text, top_k, filters).hits
        else:
            dense, sparse = encoded[qid]
            hits = retriever.retrieve_vectors(dense, sparse, top_k, filters).hits
        times.append((time.perf_counter() - t0) * 1000.0)
        run[qid] = doc_ranking(hits)
    return run, round(statistics.median(times), 2)


def sweep_grid(kind: str = "all") -> list[dict[str, Any]]:
    """The settings tried when tuning (train split only): ``rrf``, ``convex`` or ``all``."""
    grid: list[dict[str, Any]] = []
    if kind in ("convex", "all"):
        for c in (2.0, 5.0, 10.0, 20.0):
            for ws in (0.25, 0.5, 0.75, 1.0, 1.5):
                grid.append({"fusion": "convex", "sparse_saturation": c, "sparse_weight": ws})
    if kind == "convex":
        return grid
    for k in (2, 5, 10, 20, 40, 60):
        for ws in (1.0, 1.25, 1.5, 2.0, 3.0):
            grid.append({"fusion": "rrf", "rrf_k": k, "dense_weight": 1.0, "sparse_weight": ws})
    for depth in (50, 200):
        for k, ws in ((10, 1.5), (20, 1.5), (60, 1.0)):
            grid.append(
                {
                    "fusion": "rrf",
                    "rrf_k": k,
                    "sparse_weight": ws,
                    "dense_prefetch": depth,
                    "sparse_prefetch": depth,
                }
            )
    grid.append({"fusion": "dbsf"})
    grid.append({"fusion": "dbsf", "dense_prefetch": 200, "sparse_prefetch": 200})
    return grid


def main(argv: list[str] | None = None) -> int:
    configure_runtime_env()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR SciFact folder")
    parser.add_argument("--split", default="train")
    parser.add_argument("--limit-queries", type=int, default=None)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument(
        "--sweep",
        choices=["rrf", "convex", "all"],
        default=None,
        help="also run the tuning grid (precomputed query vectors) and print it to stderr",
    )
    parser.add_argument(
        "--sweep-only",
        action="store_true",
        help="skip the four reported configurations (tuning runs)",
    )
    args = parser.parse_args(argv)

    from rag_platform.lib.embedding import Embedder, SparseEncoder
    from rag_platform.lib.index.edge import EdgeIndexReader
    from rag_platform.lib.models import SearchFilters
    from rag_platform.lib.rag import build_retriever
    from rag_platform.lib.tenants import RetrievalSettings

    docs, queries, qrels = load_scifact(args.data, args.split)
    if args.limit_queries:
        queries = dict(list(queries.items())[: args.limit_queries])
    embedder = Embedder(batch_size=get_settings().embedding_batch_size)
    sparse_encoder = SparseEncoder()
    matrix = cached_embeddings(embedder, [d[1] for d in docs])
    filters = SearchFilters(acl_groups=("all",))

    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        shard = Path(tmp) / "v1"
        build_s = build_shard(shard, docs, matrix, sparse_encoder)
        reader = EdgeIndexReader(shard)
        embedder.embed_query("warm up")
        configs: dict[str, RetrievalSettings] = {
            "bm25": RetrievalSettings(fusion="sparse"),
            "dense": RetrievalSettings(fusion="dense"),
            "hybrid_rrf": RetrievalSettings(
                fusion="rrf",
                rrf_k=60,
                dense_weight=1.0,
                sparse_weight=1.0,
                dense_prefetch=100,
                sparse_prefetch=100,
            ),
            "default": RetrievalSettings(),
        }
        out: dict[str, Any] = {}
        for name, settings in configs.items():
            if args.sweep_only:
                break
            retriever = build_retriever(reader, TENANT, settings, embedder, sparse_encoder)
            run, median_ms = run_config(retriever, queries, filters, args.top_k)
            out[name] = {**evaluate_run(run, qrels), "median_ms": median_ms}
        if args.sweep:
            texts = list(queries.values())
            dense_q = embedder.embed_documents(texts)
            encoded = {
                qid: (dense_q[i], sparse_encoder.encode_query(t))
                for i, (qid, t) in enumerate(queries.items())
            }
            for overrides in sweep_grid(args.sweep):
                settings = RetrievalSettings(**overrides)
                retriever = build_retriever(reader, TENANT, settings, embedder, sparse_encoder)
                run, ms = run_config(retriever, queries, filters, args.top_k, encoded)
                print(
                    json.dumps({**overrides, **evaluate_run(run, qrels), "search_ms": ms}),
                    file=sys.stderr,
                    flush=True,
                )
        reader.close()

    out.update(
        {
            "split": args.split,
            "queries": len(queries),
            "documents": len(docs),
            "index_build_s": round(build_s, 2),
            "default_settings": RetrievalSettings().model_dump(),
        }
    )
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
