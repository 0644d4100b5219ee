"""Masking time of pathological input: one whitespace-free token holding an "@" (issue 9: a
400 KB token took 518 s to mask with the tenant's pattern policy before runs were bounded;
measured after, on 2 shared cores: 400 KB of "a.b-" in 0.9 s, 100 KB in 1.4 s, i.e. well
under 15 s per MB).

Masks, with the default pattern-only PII policy (no NER), a token of each ``--sizes`` (KB)
built from ``--unit`` repeated around one "@", and prints one JSON object:

    {"unit", "runs": [{"kb", "seconds", "seconds_per_mb"}]}

Usage::

    .venv/bin/python benchmarks/masking_pathological.py --sizes 100 400 1000
"""

from __future__ import annotations

import argparse
import json
import time

from rag_platform.lib.ingestion.mask import PIIMasker
from rag_platform.lib.tenants import PIIPolicy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--unit", default="a.b-", help="repeated to build the token")
    args = parser.parse_args()

    masker = PIIMasker(PIIPolicy(ner=False))
    masker.run("warm-up: jane.doe@example.com")  # engines loaded before timing
    runs = []
    for kb in args.sizes:
        half = args.unit * (kb * 1000 // (2 * len(args.unit)))
        token = half + "@" + half
        started = time.perf_counter()
        masker.run(token)
        seconds = time.perf_counter() - started
        runs.append(
            {
                "kb": kb,
                "seconds": round(seconds, 2),
                "seconds_per_mb": round(seconds * 1000 / kb, 2),
            }
        )
    print(json.dumps({"unit": args.unit, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
