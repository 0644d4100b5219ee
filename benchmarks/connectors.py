"""Connector sync at scale: the ``source_documents`` stage only (listing, fetching, diffing;
``SourceSync.run``, no parsing or embedding) of a generated 100,000-row PostgreSQL table and a
20,000-object bucket on moto's S3 server, from empty and again after 1% of the items changed.

Prints one JSON object per connector and line::

    {"connector": "sql", "documents": 100000, "first_seconds": ..., "resync_seconds": ...,
     "speedup": ..., "documents_per_s": ..., "resync_changed": 1000, "peak_rss_mb": ...}

``documents_per_s`` is of the first (full) sync; ``peak_rss_mb`` is the peak resident set of the
process that ran both syncs (a fresh spawned process per connector, so data generation and the
other connector do not count). Targets: ``speedup`` >= 20, ``peak_rss_mb`` < 1024.

Usage (CPU-heavy: run it alone)::

    flock /tmp/heavy.lock .venv/bin/python benchmarks/connectors.py [--rows 100000]
        [--objects 20000] [--only sql|s3]

Needs the machine's PostgreSQL (127.0.0.1:5432) and ``moto[server]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from rag_platform_tests.utils.processes import MotoServer
from rag_platform_tests.utils.services import fresh_postgres_database


def _child(tenant_dict: dict[str, Any], env: dict[str, str], state: str, conn: Any) -> None:
    """Runs in a fresh process: the first sync, waits for the parent's 1% change, the resync."""
    os.environ.update(env)
    from rag_platform.lib.ingestion.sync import SourceSync
    from rag_platform.lib.tenants import TenantConfig

    tenant = TenantConfig.model_validate(tenant_dict)
    sync = SourceSync(Path(state))
    start = time.perf_counter()
    first = sync.run(tenant)
    conn.send(
        {
            "first": time.perf_counter() - start,
            "documents": first.documents,
            "failed": first.failed_sources,
        }
    )
    conn.recv()  # the parent changed 1% of the items
    start = time.perf_counter()
    second = sync.run(tenant)
    conn.send(
        {
            "resync": time.perf_counter() - start,
            "changed": len(second.changed),
            "added": len(second.added),
            "deleted": len(second.deleted),
            "resync_documents": second.documents,
            "failed": second.failed_sources,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def _measure(
    connector: str, tenant: dict[str, Any], env: dict[str, str], change: Callable[[], int]
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    with tempfile.TemporaryDirectory(prefix=f"bench-{connector}-") as state:
        proc = ctx.Process(target=_child, args=(tenant, env, state, child))
        proc.start()
        first = parent.recv()
        if first["failed"]:
            proc.kill()
            raise RuntimeError(f"{connector}: first sync failed: {first['failed']}")
        changed = change()
        parent.send("go")
        second = parent.recv()
        proc.join()
    if second["failed"]:
        raise RuntimeError(f"{connector}: resync failed: {second['failed']}")
    return {
        "connector": connector,
        "documents": first["documents"],
        "first_seconds": round(first["first"], 2),
        "resync_seconds": round(second["resync"], 2),
        "speedup": round(first["first"] / second["resync"], 1),
        "documents_per_s": round(first["documents"] / first["first"], 1),
        "items_changed_at_source": changed,
        "resync_changed": second["changed"],
        "resync_added": second["added"],
        "resync_deleted": second["deleted"],
        "peak_rss_mb": round(second["peak_rss_mb"], 1),
    }


def bench_sql(rows: int) -> dict[str, Any]:
    """A table of ``rows`` documents (~600 characters each) generated inside PostgreSQL."""
    with fresh_postgres_database() as url:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE docs (id text PRIMARY KEY, title text, body text, "
                    "updated_at timestamptz NOT NULL, groups text)"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO docs SELECT 'doc-' || g, 'Document ' || g, "
                    "repeat(md5(g::text) || ' policy text ', 12), "
                    "timestamptz '2026-01-01' + g * interval '1 second', "
                    "CASE WHEN g % 10 = 0 THEN 'hr' END FROM generate_series(1, :n) g"
                ),
                {"n": rows},
            )
            conn.execute(sa.text("CREATE INDEX ON docs (updated_at)"))
            conn.execute(sa.text("ANALYZE docs"))

        def change() -> int:
            with engine.begin() as conn:
                result = conn.execute(
                    sa.text(
                        "UPDATE docs SET body = body || ' edited', updated_at = now() "
                        "WHERE (substr(id, 5))::int % 100 = 0"
                    )
                )
                return int(result.rowcount)

        tenant = {
            "id": "bench-sql",
            "sources": [
                {
                    "id": "docs",
                    "type": "sql",
                    "url_env": "BENCH_DB_URL",
                    "table": "docs",
                    "text_column": "body",
                    "acl_column": "groups",
                    "batch_rows": 5000,
                    "full_sync_every": "P1D",
                }
            ],
        }
        try:
            return _measure("sql", tenant, {"BENCH_DB_URL": url}, change)
        finally:
            engine.dispose()


def bench_s3(objects: int) -> dict[str, Any]:
    """A bucket of ``objects`` Markdown objects (~1 KB each) on moto's server."""
    with tempfile.TemporaryDirectory(prefix="bench-moto-") as work, MotoServer(Path(work)) as moto:
        s3: Any = moto.client()
        s3.create_bucket(Bucket="bench")

        def put(i: int, suffix: str = "") -> None:
            body = (f"# Object {i}\n\n" + f"Policy text {i} " * 60 + suffix).encode()
            meta = {"acl-groups": "hr"} if i % 10 == 0 else {}
            s3.put_object(Bucket="bench", Key=f"docs/{i:06d}.md", Body=body, Metadata=meta)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, range(objects)))

        def change() -> int:
            edited = [i for i in range(objects) if i % 100 == 0]
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i: put(i, " edited"), edited))
            return len(edited)

        tenant = {
            "id": "bench-s3",
            "sources": [
                {
                    "id": "bucket",
                    "type": "s3",
                    "bucket": "bench",
                    "prefix": "docs/",
                    "endpoint_url": moto.url,
                    "access_key_id_env": "BENCH_KEY",
                    "secret_access_key_env": "BENCH_SECRET",
                }
            ],
        }
        env = {"BENCH_KEY": "testing", "BENCH_SECRET": "testing"}
        return _measure("s3", tenant, env, change)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="SQL rows (default 100000)")
    parser.add_argument("--objects", type=int, default=20_000, help="S3 objects (default 20000)")
    parser.add_argument("--only", choices=["sql", "s3"], help="run one connector only")
    args = parser.parse_args()
    if args.only in (None, "sql"):
        print(json.dumps(bench_sql(args.rows)), flush=True)
    if args.only in (None, "s3"):
        print(json.dumps(bench_s3(args.objects)), flush=True)


if __name__ == "__main__":
    main()
