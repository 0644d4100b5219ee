"""Feedback as data: low-rated queries become golden-set candidates; accepted ones join the
tenant's golden set.

:class:`CandidateCollector` (the ``golden_candidates`` asset) reads the tenant's feedback, takes
every query whose lowest rating is at most ``max_rating`` (default 2 of 5) and that has no
candidate yet, and stores a candidate: the PII-masked question as logged, the chunks it
retrieved (id, document id, title and text, read from the index version that answered, when it
still exists), the rating and the comments. An ML team reviews them (``rag-platform golden
candidates|accept|reject``, or ``/v1/admin/golden-candidates``); accepting records the
documents that answer the question and/or a reference answer.

:func:`with_accepted_candidates` adds the accepted candidates to the golden set the
``golden_set`` asset loads, so the next ``index_evaluation`` (and its blocking gate) scores them.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from rag_platform.lib.evaluation.golden import GoldenQuestion, GoldenSet
from rag_platform.lib.index.backend import IndexBackend
from rag_platform.lib.store import MetadataStore
from rag_platform.lib.store.golden_candidates import GoldenCandidate

logger = logging.getLogger(__name__)

#: Ratings at or below this make a candidate (1 bad .. 5 good).
DEFAULT_MAX_RATING = 2
#: Retrieved chunks kept per candidate.
MAX_RETRIEVED = 10
#: Prefix of a golden question id made from a candidate.
CANDIDATE_QID_PREFIX = "feedback-"


@dataclass
class CollectResult:
    """What one collection found.

    Attributes:
        tenant: tenant id.
        low_rated: queries rated at most ``max_rating``.
        added: new candidates stored.
        already_known: low-rated queries that had a candidate already (any status).
        missing_queries: low-rated queries whose query-log row is gone (retention, erasure).
        pending: the tenant's pending candidates after the collection.
        accepted: the tenant's accepted candidates.
    """

    tenant: str
    low_rated: int = 0
    added: int = 0
    already_known: int = 0
    missing_queries: int = 0
    pending: int = 0
    accepted: int = 0
    candidate_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "low_rated": self.low_rated,
            "added": self.added,
            "already_known": self.already_known,
            "missing_queries": self.missing_queries,
            "pending": self.pending,
            "accepted": self.accepted,
            "candidate_ids": list(self.candidate_ids),
        }


class CandidateCollector:
    """Turns the tenant's low-rated queries into golden-set candidates.

    Args:
        store: the metadata store (migrated).
        backend: the index backend (to read the retrieved chunks' documents and text).
        max_rating: a query whose lowest rating is at most this becomes a candidate.
    """

    def __init__(
        self, store: MetadataStore, backend: IndexBackend, max_rating: int = DEFAULT_MAX_RATING
    ) -> None:
        if not 1 <= max_rating <= 5:
            raise ValueError(f"max_rating must be 1..5, got {max_rating}")
        self.store = store
        self.backend = backend
        self.max_rating = max_rating

    def _chunks(self, tenant: str, version: str, chunk_ids: list[str]) -> dict[str, dict[str, Any]]:
        """``chunk id -> {doc_id, title, text}`` from the version, or {} when it is gone."""
        record = self.store.get_version(tenant, version) if version else None
        if record is None or record.status == "deleted" or not chunk_ids:
            return {}
        try:
            with contextlib.closing(self.backend.open_reader(tenant, version, record.path)) as r:
                points = r.get_points(chunk_ids)
        except Exception as exc:  # a shard another process holds, a missing collection
            logger.warning(
                "cannot read index version %s of %s for candidates: %s", version, tenant, exc
            )
            return {}
        return {
            p.id: {
                "doc_id": str(p.payload.get("doc_id", "")),
                "title": str(p.payload.get("title", "")),
                "text": str(p.payload.get("text", "")),
            }
            for p in points
            if p.payload.get("tenant") == tenant
        }

    def run(self, tenant: str) -> CollectResult:
        """Stores a candidate for every new low-rated query of ``tenant``.

        Returns:
            The counts (also the asset's metadata).
        """
        result = CollectResult(tenant)
        lowest: dict[str, int] = {}
        comments: dict[str, list[str]] = {}
        for f in self.store.list_feedback(tenant):
            lowest[f.query_id] = min(f.rating, lowest.get(f.query_id, 5))
            if f.comment.strip():
                comments.setdefault(f.query_id, []).append(f.comment.strip())
        low = {q: r for q, r in lowest.items() if r <= self.max_rating}
        result.low_rated = len(low)
        known = self.store.golden_candidates.known_query_ids(tenant)
        new: list[GoldenCandidate] = []
        for query_id, rating in low.items():
            if query_id in known:
                result.already_known += 1
                continue
            row = self.store.get_query(query_id)
            if row is None or row.tenant != tenant:
                result.missing_queries += 1
                continue
            hit_ids = list(row.hit_chunk_ids)[:MAX_RETRIEVED]
            chunks = self._chunks(tenant, row.index_version, hit_ids)
            new.append(
                GoldenCandidate(
                    tenant=tenant,
                    query_id=query_id,
                    key_id=row.key_id,
                    question=row.question_masked,
                    retrieved=[
                        {"chunk_id": c, **chunks.get(c, {"doc_id": "", "title": "", "text": ""})}
                        for c in hit_ids
                    ],
                    index_version=row.index_version,
                    rating=rating,
                    comment="\n".join(comments.get(query_id, []))[:4000],
                )
            )
        result.added = self.store.golden_candidates.add(new)
        result.candidate_ids = [c.candidate_id for c in new]
        result.pending = len(self.store.golden_candidates.find(tenant, "pending"))
        result.accepted = len(self.store.golden_candidates.find(tenant, "accepted"))
        return result


def candidate_question(candidate: GoldenCandidate) -> GoldenQuestion:
    """The golden question of an accepted candidate: relevance grade 1 for each document the
    reviewer named, the reviewed reference answer, type ``feedback``."""
    return GoldenQuestion(
        qid=f"{CANDIDATE_QID_PREFIX}{candidate.candidate_id}",
        question=candidate.question,
        relevant_doc_ids=dict.fromkeys(candidate.relevant_doc_ids, 1),
        reference_answer=candidate.reference_answer or None,
        question_type="feedback",
        metadata={"candidate_id": candidate.candidate_id, "query_id": candidate.query_id},
    )


def with_accepted_candidates(
    golden: GoldenSet | None, candidates: list[GoldenCandidate], known_doc_ids: set[str] | None
) -> GoldenSet | None:
    """``golden`` plus one question per accepted candidate (a golden set named ``feedback``
    when the tenant has none). Relevance to documents no longer in ``known_doc_ids`` (erased or
    deleted at the source) is dropped; a candidate left with neither relevance nor a reference
    answer is skipped.

    Args:
        golden: the tenant's golden set (relevance resolved), or None.
        candidates: the tenant's accepted candidates.
        known_doc_ids: the tenant's current document ids; None: keep every id.
    """
    questions: list[GoldenQuestion] = []
    for c in candidates:
        q = candidate_question(c)
        if known_doc_ids is not None:
            q.relevant_doc_ids = {d: g for d, g in q.relevant_doc_ids.items() if d in known_doc_ids}
        if q.relevant_doc_ids or q.reference_answer:
            questions.append(q)
    if not questions:
        return golden
    if golden is None:
        return GoldenSet(questions=questions, name="feedback", format="feedback", resolved=True)
    seen = {q.qid for q in golden.questions}
    golden.questions.extend(q for q in questions if q.qid not in seen)
    return golden
