"""PII masking throughput of the ``masked_documents`` stage on the sec-filings tenant.

Syncs and parses the tenant's 10-Q PDFs into a throw-away folder, then masks the first
``--docs`` of them with the tenant's policy (spaCy NER + Presidio recognizers), once per
``--workers`` value (worker processes, each document within the tenant's ``mask_seconds``),
each from an empty cache. Prints one JSON object:

    {"docs", "characters", "runs": [{"workers", "seconds", "docs_per_s", "entities",
     "quarantined", "output_sha256"}], "same_output"}

``same_output`` is true when every run produced byte-identical masked documents.

Usage::

    .venv/bin/python benchmarks/masking.py --docs 8 --workers 1 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

from rag_platform.lib.ingestion.mask import DocumentMasker
from rag_platform.lib.ingestion.parse import DocumentParser
from rag_platform.lib.ingestion.sync import SourceSync
from rag_platform.lib.models import sections_from_json
from rag_platform.lib.tenants import load_registry
from rag_platform.settings import configure_runtime_env, get_settings


def main() -> None:
    configure_runtime_env()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenant", default="sec-filings")
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    settings = get_settings()
    tenant = load_registry(settings.tenants_file, settings.data_dir).get(args.tenant)
    work = Path(tempfile.mkdtemp(prefix="rag-mask-bench-"))
    synced = SourceSync(work).run(tenant)
    parser = DocumentParser(work, tenant.budgets, workers=settings.parse_workers)
    parsed = parser.run(synced.frame).frame.head(args.docs)
    characters = int(
        sum(len(s.text) for raw in parsed["sections"] for s in sections_from_json(raw))
    )
    runs = []
    for workers in args.workers:
        started = time.perf_counter()
        masked = DocumentMasker(
            work / f"masked-{workers}",
            tenant.pii,
            settings.spacy_model,
            budgets=tenant.budgets,
            workers=workers,
        ).run(parsed)
        frame, counts = masked.frame, masked.entity_counts
        seconds = time.perf_counter() - started
        runs.append(
            {
                "workers": workers,
                "seconds": round(seconds, 1),
                "docs_per_s": round(len(parsed) / seconds, 3),
                "entities": dict(counts),
                "quarantined": len(masked.quarantined),
                "output_sha256": hashlib.sha256("".join(frame["masked_hash"]).encode()).hexdigest(),
            }
        )
    print(
        json.dumps(
            {
                "tenant": args.tenant,
                "docs": len(parsed),
                "characters": characters,
                "runs": runs,
                "same_output": len({r["output_sha256"] for r in runs}) == 1,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
