"""Load test of the query API: uvicorn in a subprocess, concurrent httpx clients in another.

Serves the ``scifact`` tenant's published index from ``RAG_HOME`` (materialize it first, e.g.
with the Dagster job), runs ``--clients`` concurrent closed-loop clients for ``--seconds`` with
the SciFact queries, publishes a new index version halfway through (a copy of the published
shard registered as a new version: the API must switch without errors and without a restart),
then measures bare in-process retrieval (``Retriever.retrieve``: query embedding + Qdrant query)
on the same shard, once with as many concurrent callers as there were clients (the same load
without HTTP, auth, limits, cache and query log) and once alone. Prints one JSON object:

    requests, errors_5xx, errors_other, wrong_tenant_hits, versions_seen, p50_ms, p95_ms, p99_ms,
    rps, server_retrieval: {p50_ms, p95_ms, p99_ms}, bare_retrieval: {concurrency, p50_ms,
    p95_ms, p99_ms, rps}, bare_retrieval_single: {...}, p95_ratio, targets_met

``p95_ratio`` is the API's p95 over the bare p95 at the same concurrency (target <= 1.5).

``wrong_tenant_hits`` counts hits whose ``doc_id`` is not a SciFact document id of the tenant
(``make_doc_id("scifact", "corpus", _id)``): it must be 0.

Usage::

    .venv/bin/python benchmarks/serve.py --clients 8 --seconds 30
    # smoke test on a throw-away home with a 300-abstract index built on the fly:
    RAG_HOME=/tmp/bench-home .venv/bin/python benchmarks/serve.py --bootstrap 300 --seconds 10

The response cache is off by default (``--cache`` turns it on) so every request retrieves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rag_platform.lib.models import SearchFilters, make_doc_id
from rag_platform.lib.net import free_port, wait_for_http
from rag_platform.lib.store import IndexVersion, MetadataStore
from rag_platform.settings import Settings, configure_runtime_env, get_settings

TENANT = "scifact"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def load_queries(data_dir: Path) -> list[str]:
    path = data_dir / "scifact" / "queries.jsonl"
    with path.open() as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def scifact_doc_ids(data_dir: Path) -> set[str]:
    with (data_dir / "scifact" / "corpus.jsonl").open() as f:
        return {make_doc_id(TENANT, "corpus", str(json.loads(line)["_id"])) for line in f}


def bootstrap(store: MetadataStore, settings: Settings, n: int) -> IndexVersion:
    """Builds and publishes a small scifact index (first ``n`` abstracts) for smoke tests."""
    from rag_platform.lib.embedding import get_embedder, get_sparse_encoder
    from rag_platform.lib.index.edge import EdgeIndexWriter, IndexPoint, make_payload
    from rag_platform.lib.models import make_chunk_id, sha256_hex

    rows = []
    with (settings.data_dir / "scifact" / "corpus.jsonl").open() as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) >= n:
                break
    texts = [f"{r['title']}. {r['text']}" for r in rows]
    dense = get_embedder().embed_documents(texts)
    sparse = get_sparse_encoder().encode_documents(texts)
    version = f"bootstrap-{int(time.time())}"
    path = settings.index_dir / TENANT / version
    writer = EdgeIndexWriter.create(path, dense.shape[1])
    points = []
    for r, text, d, s in zip(rows, texts, dense, sparse, strict=True):
        doc_id = make_doc_id(TENANT, "corpus", str(r["_id"]))
        chunk_id = make_chunk_id(doc_id, 0, sha256_hex(text))
        points.append(
            IndexPoint(
                chunk_id,
                d,
                s,
                make_payload(
                    tenant=TENANT,
                    doc_id=doc_id,
                    chunk_id=chunk_id,
                    ordinal=0,
                    text=text,
                    title=r["title"],
                    uri=f"scifact://{r['_id']}",
                    source_id="corpus",
                ),
            )
        )
    writer.upsert(points)
    writer.close()
    store.register_version(TENANT, version, str(path), len(rows), len(rows), "bootstrap")
    store.mark_version_built(TENANT, version)
    return store.publish_version(TENANT, version, actor="benchmark")


# -- client process ------------------------------------------------------------------------------
async def _client_main(
    url: str,
    key: str,
    queries: list[str],
    clients: int,
    seconds: float,
    endpoint: str,
    top_k: int,
) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    versions: dict[str, int] = {}
    hits_seen: list[str] = []
    server_ms: list[float] = []
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(i: int, client: httpx.AsyncClient) -> None:
        n = i
        while time.monotonic() < deadline:
            q = queries[n % len(queries)]
            n += clients
            t0 = time.perf_counter()
            try:
                r = await client.post(
                    f"{url}/v1/{endpoint}", json={"query": q, "top_k": top_k}, headers=headers
                )
            except httpx.HTTPError:
                statuses[-1] = statuses.get(-1, 0) + 1
                continue
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                body = r.json()
                versions[body["index_version"]] = versions.get(body["index_version"], 0) + 1
                hits_seen.extend(h["doc_id"] for h in body["hits"])
                timings = body.get("timings") or {}
                server_ms.append(timings.get("embed_ms", 0.0) + timings.get("search_ms", 0.0))

    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(worker(i, client) for i in range(clients)))
    elapsed = time.monotonic() - started
    return {
        "latencies": latencies,
        "statuses": statuses,
        "versions": versions,
        "hit_doc_ids": hits_seen,
        "server_retrieval_ms": server_ms,
        "elapsed": elapsed,
    }


def _client_process(conn: Any, *args: Any) -> None:
    conn.send(asyncio.run(_client_main(*args)))
    conn.close()


# -- orchestration -------------------------------------------------------------------------------
def bare_retrieval(
    version: IndexVersion, queries: list[str], concurrency: int, seconds: float
) -> dict[str, float]:
    """Latency of ``Retriever.retrieve`` (query embedding + Qdrant query) in this process, with
    ``concurrency`` threads calling it back to back for ``seconds``: the same load as the HTTP
    phase without HTTP, auth, rate limits, cache or query log. ``concurrency=1`` gives the
    single-query service time."""
    from concurrent.futures import ThreadPoolExecutor

    from rag_platform.lib.embedding import get_sparse_encoder
    from rag_platform.lib.index.edge import EdgeIndexReader
    from rag_platform.lib.rag import build_embedder, build_retriever
    from rag_platform.lib.tenants import RetrievalSettings
    from rag_platform.settings import get_settings

    filters = SearchFilters(acl_groups=("all",))
    # the query encoder of the version's own backend, as the API's (torch for an int8 index
    # would measure another model)
    encoder = build_embedder(get_settings(), version.details)
    with EdgeIndexReader(Path(version.path)) as reader:
        retriever = build_retriever(
            reader, TENANT, RetrievalSettings(), encoder, get_sparse_encoder()
        )
        retriever.retrieve("warm up", 10, filters)
        deadline = time.monotonic() + seconds

        def worker(i: int) -> list[float]:
            times: list[float] = []
            n = i
            while time.monotonic() < deadline:
                q = queries[n % len(queries)]
                n += concurrency
                t0 = time.perf_counter()
                retriever.retrieve(q, 10, filters)
                times.append((time.perf_counter() - t0) * 1000)
            return times

        started = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            times = [t for part in pool.map(worker, range(concurrency)) for t in part]
        elapsed = time.monotonic() - started
    return {
        "concurrency": concurrency,
        "queries": len(times),
        "p50_ms": round(percentile(times, 50), 2),
        "p95_ms": round(percentile(times, 95), 2),
        "p99_ms": round(percentile(times, 99), 2),
        "rps": round(len(times) / elapsed, 1) if elapsed else 0.0,
    }


def main() -> None:
    configure_runtime_env()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--endpoint", choices=["search", "query"], default="search")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--cache", action="store_true", help="keep the response cache on")
    parser.add_argument("--no-publish", action="store_true", help="skip the mid-run publish")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        help="build a small scifact index of N abstracts if none is published",
    )
    parser.add_argument(
        "--bare-seconds",
        type=float,
        default=None,
        help="how long each bare-retrieval phase runs (default: min(seconds, 20))",
    )
    args = parser.parse_args()

    settings = get_settings()
    settings.ensure_dirs()
    store = MetadataStore.from_settings(settings)
    store.migrate()
    published = store.get_published_version(TENANT)
    if published is None and args.bootstrap:
        published = bootstrap(store, settings, args.bootstrap)
    if published is None:
        sys.exit(
            f"no published index for tenant {TENANT!r} in {settings.home}; materialize it "
            "first (or pass --bootstrap N for a smoke test)"
        )
    queries = load_queries(settings.data_dir)
    allowed_doc_ids = scifact_doc_ids(settings.data_dir)
    key_info, key = store.create_api_key(TENANT, ["all"], name="benchmark", actor="benchmark")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "RAG_HOME": str(settings.home),
        "RAG_RATE_LIMIT_PER_KEY": "100000000/minute",
        "RAG_RATE_LIMIT_PER_TENANT": "100000000/minute",
    }
    if not args.cache:
        env["RAG_CACHE_TTL_SECONDS"] = "0"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "serving.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    copy_path: Path | None = None
    new_version: str | None = None
    try:
        wait_for_http(f"{url}/health/ready", server, timeout=180)
        parent, child = mp.Pipe(duplex=False)
        client = mp.get_context("spawn").Process(
            target=_client_process,
            args=(child, url, key, queries, args.clients, args.seconds, args.endpoint, args.top_k),
        )
        client.start()
        if not args.no_publish:
            time.sleep(args.seconds / 2)
            new_version = f"{published.version}-bench{int(time.time())}"
            copy_path = Path(published.path).parent / new_version
            shutil.copytree(published.path, copy_path)
            store.register_version(
                TENANT,
                new_version,
                str(copy_path),
                published.documents,
                published.chunks,
                published.config_hash,
                {"benchmark_copy_of": published.version},
            )
            store.mark_version_built(TENANT, new_version)
            store.publish_version(TENANT, new_version, actor="benchmark")
        result = parent.recv()
        client.join()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        if new_version is not None:
            store.publish_version(TENANT, published.version, actor="benchmark")  # restore
        if copy_path is not None:
            shutil.rmtree(copy_path, ignore_errors=True)
        store.revoke_api_key(key_info.key_id, actor="benchmark")

    bare_seconds = args.bare_seconds or min(args.seconds, 20.0)
    bare = bare_retrieval(published, queries, args.clients, bare_seconds)
    bare_single = bare if args.clients == 1 else bare_retrieval(published, queries, 1, bare_seconds)
    lat = result["latencies"]
    server_ms = result["server_retrieval_ms"]
    statuses = {int(k): v for k, v in result["statuses"].items()}
    report = {
        "endpoint": f"/v1/{args.endpoint}",
        "clients": args.clients,
        "seconds": round(result["elapsed"], 2),
        "cache": args.cache,
        "requests": len(lat),
        "statuses": statuses,
        "errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "errors_other": sum(v for k, v in statuses.items() if k < 0 or 400 <= k < 500),
        "wrong_tenant_hits": sum(1 for d in result["hit_doc_ids"] if d not in allowed_doc_ids),
        "versions_seen": result["versions"],
        "published_mid_run": new_version,
        "p50_ms": round(percentile(lat, 50), 2),
        "p95_ms": round(percentile(lat, 95), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "mean_ms": round(statistics.fmean(lat), 2) if lat else 0.0,
        "rps": round(len(lat) / result["elapsed"], 1) if result["elapsed"] else 0.0,
        # the retrieval time the API itself measured (embed + Qdrant query) for these requests
        "server_retrieval": {
            "p50_ms": round(percentile(server_ms, 50), 2),
            "p95_ms": round(percentile(server_ms, 95), 2),
            "p99_ms": round(percentile(server_ms, 99), 2),
        },
        # bare in-process retrieval on the same shard, at the same concurrency and single
        "bare_retrieval": bare,
        "bare_retrieval_single": bare_single,
    }
    ratio = report["p95_ms"] / bare["p95_ms"] if bare["p95_ms"] else float("inf")
    report["p95_ratio"] = round(ratio, 3)
    report["targets_met"] = {
        "errors_5xx": report["errors_5xx"] == 0,
        "wrong_tenant_hits": report["wrong_tenant_hits"] == 0,
        "p95_within_1.5x_bare": ratio <= 1.5,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
