"""The cost of encryption at rest: the same small SciFact tenant materialized by a real Dagster
run into a fresh RAG_HOME with ``RAG_ENCRYPTION_AT_REST=false`` and ``true`` (alternating,
``--repeat`` times each), then a re-materialization with nothing changed (every stage reads its
sealed caches), and the raw AES-GCM seal/open throughput of one tenant's cipher.

Prints one JSON object per line::

    {"mode": "plain"|"sealed", "run": n, "documents": ..., "first_seconds": ...,
     "resync_seconds": ...}
    {"summary": {"plain_first": median, "sealed_first": ..., "first_overhead_pct": ...,
                 "plain_resync": ..., "sealed_resync": ..., "resync_overhead_pct": ...}}
    {"cipher": {"bytes": ..., "seal_mb_per_s": ..., "open_mb_per_s": ...}}

Usage (CPU-heavy: run it alone)::

    flock /tmp/heavy.lock .venv/bin/python benchmarks/encryption.py [--docs 200] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from rag_platform.settings import PROJECT_ROOT, configure_runtime_env, get_settings

DATA = Path(os.environ.get("RAG_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))


def _tenant(docs: int) -> dict[str, object]:
    return {
        "id": "bench",
        "sources": [
            {
                "id": "corpus",
                "type": "dataset",
                "path": str(DATA / "scifact" / "corpus.jsonl"),
                "id_column": "_id",
                "title_column": "title",
                "text_column": "text",
                "limit": docs,
            }
        ],
        "pii": {"ner": False},
        "chunking": {"max_tokens": 200, "overlap_tokens": 32},
    }


def _run(mode: str, docs: int, models_dir: Path) -> dict[str, object]:
    from rag_platform.runner import materialize_tenant

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        os.environ.update(
            RAG_HOME=str(home),
            RAG_TENANTS_FILE=str(Path(tmp) / "tenants.yaml"),
            RAG_MODELS_DIR=str(models_dir),
            RAG_ENCRYPTION_AT_REST="true" if mode == "sealed" else "false",
        )
        os.environ.pop("RAG_DATABASE_URL", None)
        Path(tmp, "tenants.yaml").write_text(yaml.safe_dump({"tenants": [_tenant(docs)]}))
        get_settings.cache_clear()
        settings = get_settings()
        settings.ensure_dirs()
        start = time.perf_counter()
        summary = materialize_tenant("bench", settings, console=False, log_file=home / "run.log")
        first = time.perf_counter() - start
        start = time.perf_counter()
        again = materialize_tenant("bench", settings, console=False, log_file=home / "run.log")
        resync = time.perf_counter() - start
        assert summary.success and again.success
        return {
            "mode": mode,
            "documents": summary.documents,
            "first_seconds": round(first, 2),
            "resync_seconds": round(resync, 2),
        }


def _cipher_throughput(size: int = 64 * 1024 * 1024) -> dict[str, float]:
    from rag_platform.lib.crypto import LocalMasterKey
    from rag_platform.lib.store import MetadataStore

    with tempfile.TemporaryDirectory() as tmp:
        store = MetadataStore(
            f"sqlite:///{tmp}/meta.db", master_keys=[LocalMasterKey(os.urandom(32))]
        )
        store.migrate()
        cipher = store.keyring.cipher("bench")
        data = os.urandom(size)
        start = time.perf_counter()
        blob = cipher.seal(data, "asset")
        seal = time.perf_counter() - start
        start = time.perf_counter()
        assert cipher.open(blob, "asset") == data
        opened = time.perf_counter() - start
        store.dispose()
    mb = size / 1e6
    return {"bytes": size, "seal_mb_per_s": round(mb / seal), "open_mb_per_s": round(mb / opened)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    configure_runtime_env()
    results: dict[str, list[dict[str, object]]] = {"plain": [], "sealed": []}
    with tempfile.TemporaryDirectory() as models:
        # a warm-up run builds the int8 model once, outside the measurements
        _run("plain", 10, Path(models))
        for n in range(args.repeat):
            for mode in ("plain", "sealed"):
                row = _run(mode, args.docs, Path(models))
                results[mode].append(row)
                print(json.dumps({**row, "run": n}), flush=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(float(str(r[key])) for r in results[mode])

    summary: dict[str, float] = {}
    for key, name in (("first_seconds", "first"), ("resync_seconds", "resync")):
        plain, sealed = median("plain", key), median("sealed", key)
        summary[f"plain_{name}"] = plain
        summary[f"sealed_{name}"] = sealed
        summary[f"{name}_overhead_pct"] = round(100 * (sealed - plain) / plain, 1)
    print(json.dumps({"summary": summary}))
    print(json.dumps({"cipher": _cipher_throughput()}))


if __name__ == "__main__":
    main()
