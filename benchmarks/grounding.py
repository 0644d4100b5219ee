"""Refusal on SQuAD 2.0-style data built from SQuAD 1.1: which threshold, and how good it is.

The data (``../shared/data/squad11``: 24 Wikipedia articles, 913 paragraphs, 4,961 questions) is
made SQuAD 2.0-like by removing passages from the corpus: half of the articles (every other one
in title order) are held out, so their questions have no answer in the index — *unanswerable*;
the questions of the other articles keep their gold paragraph — *answerable*. Whole articles are
held out rather than single paragraphs because a sibling paragraph of the same article often
answers the question too (then "unanswerable" would be wrong); the paragraph-level variant is
measured as well (``paragraph_holdout``: within the kept articles, each unanswerable question
loses only its own paragraph) to show how much harder it is.

Each kept paragraph (title + ". " + text) is one chunk in a Qdrant Edge shard built with the
platform's writer; every question goes through the platform's ``Retriever`` with the default
retrieval settings (DBSF fusion) and ``relevance=True``: the relevance is the dense cosine of
the question and the best chunk (``lib/grounding.py``), what ``/v1/query`` compares with the
tenant's ``min_score``.

Calibration follows the platform: a golden set of answerable questions only (``--golden``
questions of the kept articles, disjoint from the test questions) gives the threshold
``calibrate_min_score(relevances, quantile)`` for each quantile; refusal precision and recall
(unanswerable = positive) are measured on ``--test`` answerable + ``--test`` unanswerable
questions. The paragraph-level variant's relevances are exact cosines over the matrix.

Usage::

    .venv/bin/python benchmarks/grounding.py              # 200 golden, 300 + 300 test
    .venv/bin/python benchmarks/grounding.py --test 100

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.retrieval import build_shard, cache_dir, cached_embeddings  # noqa: E402
from rag_platform.settings import PROJECT_ROOT, configure_runtime_env, get_settings  # noqa: E402

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "squad11"
TENANT = "bench"
SEED = 20240229
QUANTILES = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2)


def load_squad(
    data_dir: Path,
) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    """Reads the SQuAD 1.1 folder.

    Returns:
        ``(paragraphs, questions)``: paragraphs as ``(paragraph_id, title + ". " + text,
        title)`` in corpus order; questions as the ``answers.jsonl`` records (``id``,
        ``question``, ``gold_doc``, ``answers``).
    """
    paragraphs: list[tuple[str, str, str]] = []
    with (data_dir / "corpus.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            paragraphs.append((row["_id"], f"{row['title']}. {row['text']}", row["title"]))
    with (data_dir / "answers.jsonl").open() as f:
        questions = [json.loads(line) for line in f]
    return paragraphs, questions


def holdout_articles(paragraphs: list[tuple[str, str, str]]) -> set[str]:
    """Every other article title in sorted order (12 of 24): their paragraphs are removed."""
    titles = sorted({p[2] for p in paragraphs})
    return set(titles[1::2])


def sweep(
    golden: list[float], answerable: list[float], unanswerable: list[float]
) -> list[dict[str, float]]:
    """Refusal precision/recall on the test questions for each calibration quantile."""
    from rag_platform.lib.grounding import calibrate_min_score, refusal_scores

    rows = []
    for q in QUANTILES:
        threshold = calibrate_min_score(golden, q)
        assert threshold is not None
        relevances = [*answerable, *unanswerable]
        truth = [False] * len(answerable) + [True] * len(unanswerable)
        s = refusal_scores([r < threshold for r in relevances], truth)
        rows.append(
            {
                "quantile": q,
                "min_score": threshold,
                "refusal_precision": round(s.precision, 4),
                "refusal_recall": round(s.recall, 4),
                "answerable_refused": round(
                    sum(r < threshold for r in answerable) / len(answerable), 4
                ),
            }
        )
    return rows


def squad_relevances(data_dir: Path, n_golden: int, n_test: int) -> dict[str, Any]:
    """Builds the held-out corpus, retrieves every sampled question; returns the relevances
    ``{"golden", "answerable", "unanswerable", "paragraph_answerable",
    "paragraph_unanswerable"}`` and the corpus sizes."""
    from rag_platform.lib.embedding import Embedder, SparseEncoder
    from rag_platform.lib.index.edge import EdgeIndexReader
    from rag_platform.lib.models import SearchFilters
    from rag_platform.lib.rag import build_retriever
    from rag_platform.lib.tenants import RetrievalSettings

    paragraphs, questions = load_squad(data_dir)
    held = holdout_articles(paragraphs)
    title_of = {p[0]: p[2] for p in paragraphs}
    rng = random.Random(SEED)
    kept_q = [q for q in questions if title_of[q["gold_doc"]] not in held]
    held_q = [q for q in questions if title_of[q["gold_doc"]] in held]
    rng.shuffle(kept_q)
    rng.shuffle(held_q)
    golden_q = kept_q[:n_golden]
    answerable_q = kept_q[n_golden : n_golden + n_test]
    unanswerable_q = held_q[:n_test]

    embedder = Embedder(batch_size=get_settings().embedding_batch_size)
    sparse_encoder = SparseEncoder()
    keep = [i for i, p in enumerate(paragraphs) if p[2] not in held]
    docs = [paragraphs[i] for i in keep]
    matrix = cached_embeddings(embedder, [p[1] for p in docs])  # the kept ones, cached once
    filters = SearchFilters(acl_groups=("all",))
    out: dict[str, Any] = {"paragraphs_indexed": len(docs), "articles_held_out": len(held)}
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        shard = Path(tmp) / "v1"
        build_shard(shard, docs, matrix, sparse_encoder)
        with EdgeIndexReader(shard) as reader:
            retriever = build_retriever(
                reader, TENANT, RetrievalSettings(), embedder, sparse_encoder
            )
            for name, group in (
                ("golden", golden_q),
                ("answerable", answerable_q),
                ("unanswerable", unanswerable_q),
            ):
                values = []
                for q in group:
                    r = retriever.retrieve(q["question"], 5, filters, relevance=True)
                    values.append(float(r.relevance if r.relevance is not None else -1.0))
                out[name] = values

    # paragraph-level hold-out within the kept articles: each unanswerable question loses only
    # its own paragraph (its article's other paragraphs stay)
    index_of = {p[0]: i for i, p in enumerate(docs)}
    sample = kept_q[n_golden : n_golden + 2 * n_test]
    para_unans = sample[n_test:]
    qvecs = embedder.embed_documents([q["question"] for q in sample])
    removed = {index_of[q["gold_doc"]] for q in para_unans}
    visible = np.array([i not in removed for i in range(len(docs))])
    sims = qvecs @ matrix.T
    sims[:, ~visible] = -1.0
    ans_idx = [i for i, q in enumerate(sample[:n_test]) if index_of[q["gold_doc"]] not in removed]
    out["paragraph_answerable"] = [float(sims[i].max()) for i in ans_idx]
    out["paragraph_unanswerable"] = [float(sims[n_test + i].max()) for i in range(len(para_unans))]
    return out


def main(argv: list[str] | None = None) -> int:
    configure_runtime_env()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SQuAD 1.1 folder")
    parser.add_argument("--golden", type=int, default=200, help="answerable calibration questions")
    parser.add_argument("--test", type=int, default=300, help="test questions per class")
    args = parser.parse_args(argv)
    r = squad_relevances(args.data, args.golden, args.test)
    result = {
        "data": "squad11, half the articles held out",
        "paragraphs_indexed": r["paragraphs_indexed"],
        "articles_held_out": r["articles_held_out"],
        "golden_questions": len(r["golden"]),
        "test_answerable": len(r["answerable"]),
        "test_unanswerable": len(r["unanswerable"]),
        "relevance_median": {
            "answerable": round(float(np.median(r["answerable"])), 4),
            "unanswerable": round(float(np.median(r["unanswerable"])), 4),
        },
        "article_holdout": sweep(r["golden"], r["answerable"], r["unanswerable"]),
        "paragraph_holdout": sweep(
            r["golden"], r["paragraph_answerable"], r["paragraph_unanswerable"]
        ),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
