"""Golden-set evaluation of an index version with the API's own retrieval and answer code.

Used by the ``index_evaluation`` asset (on the version just built, before publishing) and by
``rag-platform eval`` (on the published version, or on any external golden set).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from rag_platform.lib.evaluation.golden import (
    GoldenQuestion,
    GoldenSet,
    load_golden_set,
    resolve_relevance,
)
from rag_platform.lib.index.backend import IndexReader, open_backend
from rag_platform.lib.models import Answer, Hit, SearchFilters, make_doc_id
from rag_platform.lib.progress import ProgressCallback, no_progress
from rag_platform.lib.store import MetadataStore
from rag_platform.lib.tenants import TenantConfig, load_registry
from rag_platform.settings import Settings

#: Questions whose answers are scored with ragas per evaluation (answers cost ~0.1 s each).
ANSWER_SAMPLE = 50


def _documents(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    return [(r.doc_id, r.native_id, r.title) for r in frame.itertuples(index=False)]


def load_tenant_golden_set(
    tenant: TenantConfig,
    documents: pd.DataFrame | Iterable[tuple[str, str, str]],
    path: Path | None = None,
    fmt: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> GoldenSet | None:
    """Loads the tenant's golden set (or the one at ``path``) with relevance resolved to the
    tenant's document ids.

    ``documents`` is the source_documents frame or ``(doc_id, native_id, title)`` tuples.
    Returns None when the tenant has no golden set and no ``path`` is given.
    """
    cfg = tenant.golden_set
    if path is None and cfg is None:
        return None
    golden = load_golden_set(
        Path(path or cfg.path),  # type: ignore[union-attr]
        format=(fmt or (cfg.format if cfg else "auto")),  # type: ignore[arg-type]
        split=split or (cfg.split if cfg else "train"),
        limit=limit if limit is not None else (cfg.limit if cfg else None),
    )
    docs = _documents(documents) if isinstance(documents, pd.DataFrame) else list(documents)
    sources = [s.id for s in tenant.sources]

    def doc_id_for(native: str) -> str | None:
        # BEIR corpus ids are the dataset connector's native ids.
        return make_doc_id(tenant.id, sources[0], native) if len(sources) == 1 else None

    return resolve_relevance(golden, docs, doc_id_for, known_only=True)


def tenant_golden_set(
    tenant: TenantConfig, documents: pd.DataFrame, store: MetadataStore
) -> GoldenSet | None:
    """The ``golden_set`` asset's work: the tenant's golden set (:func:`load_tenant_golden_set`)
    plus its accepted feedback candidates
    (:func:`~rag_platform.lib.evaluation.candidates.with_accepted_candidates`), relevance limited
    to the documents of ``documents``. None when there is neither."""
    from rag_platform.lib.evaluation.candidates import with_accepted_candidates

    golden = load_tenant_golden_set(tenant, documents)
    accepted = store.golden_candidates.find(tenant.id, "accepted")
    known = set(documents["doc_id"]) if "doc_id" in documents.columns else None
    return with_accepted_candidates(golden, accepted, known)


def golden_fingerprint(golden_data: dict[str, Any]) -> str:
    """A SHA-256 of the golden set's questions (ids, text, relevance, reference answers): an
    evaluation is reused only for the same index version *and* the same golden set."""
    import hashlib
    import json

    canonical = [
        [q.get("qid"), q.get("question"), q.get("relevant_doc_ids"), q.get("reference_answer")]
        for q in golden_data.get("questions", [])
    ]
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _golden_from_dict(data: dict[str, Any]) -> GoldenSet:
    return GoldenSet(
        questions=[GoldenQuestion(**q) for q in data.get("questions", [])],
        name=data.get("name") or "golden",
    )


def _acl_groups_of_index(reader: IndexReader) -> tuple[str, ...]:
    groups: set[str] = set()
    for _, payload in reader.payloads():
        groups.update(payload.get("acl_groups") or [])
    return tuple(sorted(groups)) or ("all",)


def run_evaluation(
    settings: Settings,
    tenant: TenantConfig,
    reader: IndexReader,
    golden: GoldenSet,
    k: int = 10,
    answer_sample: int | None = ANSWER_SAMPLE,
    version_details: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Evaluates one index version on ``golden``.

    Retrieval: every judged question through :class:`~rag_platform.lib.retrieval.Retriever`
    (trec_eval metrics), its queries embedded by the version's own embedding model and backend, as
    the API does. Answers: a sample through the API's answerer, scored with ragas (non-LLM
    metrics always; LLM-judged ones when an LLM endpoint is configured). The principal sees every
    ACL group of the index, so permissions never hide relevant documents from the evaluation.

    Args:
        settings: the platform settings (LLM endpoint).
        tenant: the tenant's configuration (retrieval settings).
        reader: the open index version (``IndexBackend.open_reader``); the caller closes it.
        golden: the golden set, relevance resolved to the tenant's document ids.
        k: the cut-off of nDCG@k, recall@k and precision@k.
        answer_sample: questions whose answers are scored (None: all).
        version_details: the version's ``details`` (its recorded embedding identity); None:
            a version embedded with the settings' backend and model.
        progress: called with ``(searches done, searches planned)`` as questions are searched:
            one search per judged question, one per sampled answer.

    Returns:
        ``{"summary", "retrieval", "answers", "queries", "grounding"}`` (JSON-ready; ``grounding``:
        the refusal threshold calibrated on the golden questions, see
        :func:`rag_platform.lib.grounding.calibrate_min_score`).
    """
    from rag_platform.lib.embedding import get_sparse_encoder
    from rag_platform.lib.evaluation.answers import LLMConfig, answer_population, evaluate_answers
    from rag_platform.lib.evaluation.metrics import evaluate_retrieval
    from rag_platform.lib.grounding import calibrate_min_score
    from rag_platform.lib.rag import build_answerer, build_embedder, build_retriever

    embedder = build_embedder(settings)
    answerer = build_answerer(settings, embedder)
    with contextlib.closing(answerer):
        retriever = build_retriever(
            reader,
            tenant.id,
            tenant.retrieval,
            build_embedder(settings, version_details),
            get_sparse_encoder(),
        )
        filters = SearchFilters(acl_groups=_acl_groups_of_index(reader))
        report = progress or no_progress
        judged = sum(1 for q in golden.questions if q.has_relevance)
        population = len(answer_population(golden))
        planned = judged + min(population, answer_sample or population)
        searches = 0
        report(0, planned)

        relevances: dict[str, float] = {}

        def retrieve(question: str, top: int) -> list[Hit]:
            nonlocal searches
            result = retriever.retrieve(question, top, filters, relevance=True)
            if result.relevance is not None:
                relevances[question] = result.relevance
            searches += 1
            report(searches, max(planned, searches))
            return result.hits

        retrieval = evaluate_retrieval(golden, retrieve, k_values=(1, 3, 5, k, 100))

        def answer(question: str, hits: list[Hit]) -> Answer:
            return answerer.answer(question, hits)

        answers = evaluate_answers(
            golden,
            retrieve,
            answer,
            llm=LLMConfig.from_settings(settings),
            embedder_fn=embedder.embed_documents,
            limit=answer_sample,
            prepare=getattr(answerer, "prime", None),
        )
        report(searches, searches)  # "planned" is an estimate: the stage ends at what ran
    summary = {**retrieval.summary, **{f"answer_{k_}": v for k_, v in answers["summary"].items()}}
    quantile = tenant.grounding.auto_quantile
    grounding = {
        "signal": "dense_cosine",
        "quantile": quantile,
        "min_score": calibrate_min_score(list(relevances.values()), quantile),
        "questions": len(relevances),
    }
    return {
        "summary": summary,
        "retrieval": retrieval.to_dict(),
        "answers": answers,
        "queries": int(retrieval.summary.get("questions", 0)),
        "grounding": grounding,
    }


def evaluate_version(
    settings: Settings,
    store: MetadataStore,
    tenant: TenantConfig,
    search_index: dict[str, Any],
    golden_data: dict[str, Any],
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """The ``index_evaluation`` asset's work: evaluate the new version, write the report, record
    the headline numbers on the version, and decide the gate against the published version. A
    new version the gate fails is rejected in the store with the gate's reasons.

    A version that was already evaluated on the same golden set (an unchanged index reused,
    no candidate accepted since) is not evaluated again.
    """
    from rag_platform.lib.evaluation.gate import check_gate
    from rag_platform.lib.evaluation.report import load_history, write_report

    version = search_index["version"]
    record = store.get_version(tenant.id, version)
    fingerprint = golden_fingerprint(golden_data)
    previous = (record.details or {}).get("evaluation") if record is not None else None
    if (
        search_index.get("reused")
        and isinstance(previous, dict)
        and previous.get("golden_fingerprint", fingerprint) == fingerprint
    ):
        return {
            **previous,
            "version": version,
            "reused": True,
            "gate": {"passed": True, "reasons": [], "compared_to": version},
        }
    golden = _golden_from_dict(golden_data)
    if not golden.questions:
        return {
            "version": version,
            "summary": {},
            "queries": 0,
            "gate": {"passed": True, "reasons": ["no golden set"], "compared_to": None},
        }

    location = str(search_index["path"])
    with contextlib.closing(open_backend(settings).open_reader(tenant.id, version, location)) as r:
        evaluation = run_evaluation(
            settings,
            tenant,
            r,
            golden,
            k=tenant.evaluation.k,
            version_details=record.details if record is not None else None,
            progress=progress,
        )
    published = store.get_published_version(tenant.id)
    published_summary = None
    if published is not None and published.version != version:
        published_summary = (published.details or {}).get("evaluation", {}).get("summary")
    gate = check_gate(
        evaluation["summary"],
        tenant.evaluation.thresholds,
        tenant.evaluation.max_regression,
        published_summary,
        published.version if published else None,
    )
    reports_dir = settings.reports_dir / tenant.id
    history = load_history(reports_dir)
    paths = write_report(
        tenant.id,
        version,
        {
            **evaluation,
            "gate": gate.to_dict(),
            "golden_set": golden.name,
            "evaluated_at": datetime.now(UTC).isoformat(),
            "published_version": published.version if published else None,
            "published_summary": published_summary,
        },
        history,
        reports_dir / version,
    )
    headline = {
        "summary": evaluation["summary"],
        "queries": evaluation["queries"],
        "report_html": str(paths.html),
        "report_md": str(paths.markdown),
        "golden_fingerprint": fingerprint,
    }
    # the calibrated refusal threshold of `grounding.min_score: auto` (lib/grounding.py)
    store.set_version_details(
        tenant.id, version, {"evaluation": headline, "grounding": evaluation["grounding"]}
    )
    if not gate.passed and record is not None and record.status in ("building", "built"):
        # The gate's verdict is the version's: a rejected build is never publishable, by any
        # path (the lifecycle in lib/store refuses it), not only skipped by this run.
        store.reject_version(
            tenant.id, version, [{"name": "evaluation_gate", "reasons": list(gate.reasons)}]
        )
    return {
        **headline,
        "version": version,
        "reused": False,
        "gate": gate.to_dict(),
        "markdown": paths.markdown.read_text(),
    }


def evaluate_published(
    settings: Settings,
    store: MetadataStore,
    tenant_id: str,
    golden: Path | None = None,
    golden_format: str = "auto",
    split: str = "train",
    k: int = 10,
    limit: int | None = None,
) -> dict[str, Any]:
    """``rag-platform eval``: evaluates the tenant's published version.

    Raises:
        KeyError: unknown tenant. ValueError: no published version or no golden set.
    """
    tenant = load_registry(settings.tenants_file, settings.data_dir).get(tenant_id)
    published = store.get_published_version(tenant_id)
    if published is None:
        raise ValueError(f"tenant {tenant_id!r} has no published index version")
    documents: dict[str, tuple[str, str, str]] = {}
    backend = open_backend(settings)
    with contextlib.closing(
        backend.open_reader(tenant_id, published.version, published.path)
    ) as reader:
        for _, p in reader.payloads():
            documents.setdefault(p["doc_id"], (p["doc_id"], p.get("uri", ""), p.get("title", "")))
        gs = load_tenant_golden_set(
            tenant,
            list(documents.values()),
            path=golden,
            fmt=golden_format if golden else None,
            split=split,
            limit=limit,
        )
        if gs is None:
            raise ValueError(f"tenant {tenant_id!r} has no golden set; pass --golden")
        result = run_evaluation(
            settings,
            tenant,
            reader,
            gs,
            k=k,
            answer_sample=None if limit else ANSWER_SAMPLE,
            version_details=published.details,
        )
    s = result["summary"]
    return {
        "tenant": tenant_id,
        "version": published.version,
        "golden": gs.name,
        "queries": result["queries"],
        f"ndcg@{k}": s.get(f"ndcg@{k}"),
        "recall@100": s.get("recall@100"),
        "mrr": s.get("mrr"),
        **{key: value for key, value in s.items() if key not in ("questions",)},
    }
