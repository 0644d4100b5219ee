"""Golden-set candidates: low-rated queries proposed for the tenant's golden set, and their
review (``golden_candidates``).

The ``golden_candidates`` asset adds them (:meth:`GoldenCandidateRepository.add`, once per
query); an ML team lists, accepts (with the relevant document ids and/or a reference answer) or
rejects them; accepted candidates join the tenant's golden set at its next evaluation.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import delete, select, update

from rag_platform.lib.crypto import Keyring
from rag_platform.lib.store.conversations import TextSealer
from rag_platform.lib.store.db import Database, NotFoundError, dialect_insert
from rag_platform.lib.store.rows import check_text
from rag_platform.lib.store.schema import JSONObject, golden_candidates_table, utcnow
from rag_platform.lib.store.tenants import check_tenant

#: Review status of a candidate.
CandidateStatus = Literal["pending", "accepted", "rejected"]


@dataclass(kw_only=True)
class GoldenCandidate:
    """A low-rated query proposed for the golden set.

    Attributes:
        candidate_id: uuid4.
        tenant: tenant id.
        query_id: the rated query-log row.
        key_id: the principal who asked (erasure of the principal removes its candidates).
        question: the question, PII-masked as in the query log.
        retrieved: the chunks the query retrieved, best first: ``{chunk_id, doc_id, title,
            text}`` (``doc_id``, ``title`` and ``text`` empty when the index version is gone).
        index_version: the version that answered.
        rating: the lowest rating the query received (1..5).
        comment: the raters' comments, joined.
        status: ``pending``, ``accepted`` or ``rejected``.
        relevant_doc_ids: set on acceptance: the documents that answer the question.
        reference_answer: set on acceptance: the reviewed answer.
        reviewer: who reviewed it.
        reviewed_at: when (UTC).
        created_at: when it was proposed (UTC).
    """

    candidate_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    tenant: str
    query_id: str
    key_id: str = ""
    question: str = ""
    retrieved: list[JSONObject] = field(default_factory=list)
    index_version: str = ""
    rating: int
    comment: str = ""
    status: CandidateStatus = "pending"
    relevant_doc_ids: list[str] = field(default_factory=list)
    reference_answer: str = ""
    reviewer: str = ""
    reviewed_at: datetime | None = None
    created_at: datetime = field(default_factory=utcnow)


#: The purpose golden-set candidate text is sealed for.
PURPOSE_GOLDEN_CANDIDATE = "golden_candidate"


def _from_row(row: object, text: TextSealer) -> GoldenCandidate:
    r = dict(row)  # type: ignore[call-overload]
    tenant = r["tenant"]
    return GoldenCandidate(
        candidate_id=r["candidate_id"],
        tenant=tenant,
        query_id=r["query_id"],
        key_id=r["key_id"],
        question=text.open(tenant, r["question_masked"]),
        retrieved=[
            {**c, "text": text.open(tenant, str(c.get("text", "")))} for c in (r["retrieved"] or [])
        ],
        index_version=r["index_version"],
        rating=r["rating"],
        comment=text.open(tenant, r["comment"]),
        status=r["status"],
        relevant_doc_ids=list(r["relevant_doc_ids"] or []),
        reference_answer=text.open(tenant, r["reference_answer"]),
        reviewer=r["reviewer"],
        reviewed_at=r["reviewed_at"],
        created_at=r["created_at"],
    )


class GoldenCandidateRepository:
    """The ``golden_candidates`` table.

    Args:
        db: The database handle.
        keyring: Seals the question, retrieved text, comments and reference answer at rest
            (plaintext when None).
    """

    def __init__(self, db: Database, keyring: Keyring | None = None) -> None:
        self._db = db
        self._text = TextSealer(keyring, PURPOSE_GOLDEN_CANDIDATE)

    def add(self, candidates: list[GoldenCandidate]) -> int:
        """Inserts candidates; a query that already has one (any status) is skipped, so a
        rejected candidate is never proposed again.

        Returns:
            How many were new.

        Raises:
            ValueError: A bad tenant id.
        """
        for c in candidates:
            check_tenant(c.tenant)
        if not candidates:
            return 0
        values = [
            {
                "candidate_id": c.candidate_id,
                "tenant": c.tenant,
                "query_id": c.query_id,
                "key_id": c.key_id,
                "question_masked": self._text.seal(c.tenant, c.question),
                "retrieved": [
                    {**r, "text": self._text.seal(c.tenant, str(r.get("text", "")))}
                    for r in c.retrieved
                ],
                "index_version": c.index_version,
                "rating": c.rating,
                "comment": self._text.seal(c.tenant, c.comment),
                "status": c.status,
                "relevant_doc_ids": list(c.relevant_doc_ids),
                "reference_answer": self._text.seal(c.tenant, c.reference_answer),
                "reviewer": c.reviewer,
                "reviewed_at": c.reviewed_at,
                "created_at": c.created_at,
            }
            for c in candidates
        ]
        with self._db.transaction() as conn:
            stmt = (
                dialect_insert(conn, golden_candidates_table)
                .on_conflict_do_nothing(index_elements=["tenant", "query_id"])
                .returning(golden_candidates_table.c.candidate_id)
            )
            return len(conn.execute(stmt, values).all())

    def known_query_ids(self, tenant: str) -> set[str]:
        """Query ids of the tenant that already have a candidate."""
        stmt = select(golden_candidates_table.c.query_id).where(
            golden_candidates_table.c.tenant == tenant
        )
        with self._db.transaction(write=False) as conn:
            return set(conn.execute(stmt).scalars())

    def find(self, tenant: str, status: CandidateStatus | None = None) -> list[GoldenCandidate]:
        """The tenant's candidates (of one status when given), oldest first."""
        stmt = select(golden_candidates_table).where(golden_candidates_table.c.tenant == tenant)
        if status is not None:
            stmt = stmt.where(golden_candidates_table.c.status == status)
        stmt = stmt.order_by(
            golden_candidates_table.c.created_at, golden_candidates_table.c.candidate_id
        )
        with self._db.transaction(write=False) as conn:
            return [_from_row(r, self._text) for r in conn.execute(stmt).mappings()]

    def get(self, tenant: str, candidate_id: str) -> GoldenCandidate:
        """One candidate of the tenant.

        Raises:
            NotFoundError: No such candidate in this tenant.
        """
        stmt = select(golden_candidates_table).where(
            golden_candidates_table.c.tenant == tenant,
            golden_candidates_table.c.candidate_id == candidate_id[:36],
        )
        with self._db.transaction(write=False) as conn:
            row = conn.execute(stmt).mappings().first()
        if row is None:
            raise NotFoundError(f"no golden-set candidate {candidate_id[:40]!r}")
        return _from_row(row, self._text)

    def review(
        self,
        tenant: str,
        candidate_id: str,
        status: Literal["accepted", "rejected"],
        reviewer: str,
        *,
        relevant_doc_ids: list[str] | None = None,
        reference_answer: str = "",
    ) -> GoldenCandidate:
        """Accepts or rejects a candidate (a reviewed one may be reviewed again).

        Args:
            tenant: Tenant id.
            candidate_id: The candidate.
            status: ``accepted`` or ``rejected``.
            reviewer: Who decides (e.g. ``cli``, ``key:<id>``).
            relevant_doc_ids: For ``accepted``: the documents that answer the question.
            reference_answer: For ``accepted``: the reviewed answer.

        Raises:
            NotFoundError: No such candidate in this tenant.
            ValueError: Accepted without relevant documents or reference answer (the question
                could not be scored), an unknown status, text too long.
        """
        if status not in ("accepted", "rejected"):
            raise ValueError(f"status must be accepted or rejected, got {status!r}")
        docs = [d.strip() for d in (relevant_doc_ids or []) if d.strip()]
        if status == "accepted" and not docs and not reference_answer.strip():
            raise ValueError(
                "an accepted candidate needs relevant document ids or a reference answer"
            )
        check_text(reviewer, "reviewer", 200)
        check_text(reference_answer, "reference answer", 20_000, allow_empty=True)
        for d in docs:
            check_text(d, "document id", 36)
        stmt = (
            update(golden_candidates_table)
            .where(
                golden_candidates_table.c.tenant == tenant,
                golden_candidates_table.c.candidate_id == candidate_id[:36],
            )
            .values(
                status=status,
                relevant_doc_ids=docs if status == "accepted" else [],
                reference_answer=self._text.seal(
                    tenant, reference_answer if status == "accepted" else ""
                ),
                reviewer=reviewer,
                reviewed_at=utcnow(),
            )
        )
        with self._db.transaction() as conn:
            if conn.execute(stmt).rowcount == 0:
                raise NotFoundError(f"no golden-set candidate {candidate_id[:40]!r}")
        return self.get(tenant, candidate_id)

    def scrub_document(self, tenant: str, doc_id: str) -> int:
        """Removes an erased document from the tenant's candidates: its retrieved chunks (ids
        and text) and its relevance.

        Returns:
            How many candidates changed.
        """
        changed = 0
        with self._db.transaction() as conn:
            rows = conn.execute(
                select(
                    golden_candidates_table.c.candidate_id,
                    golden_candidates_table.c.retrieved,
                    golden_candidates_table.c.relevant_doc_ids,
                ).where(golden_candidates_table.c.tenant == tenant)
            ).all()
            for cid, retrieved, relevant in rows:
                kept = [r for r in retrieved or [] if r.get("doc_id") != doc_id]
                docs = [d for d in relevant or [] if d != doc_id]
                if len(kept) != len(retrieved or []) or len(docs) != len(relevant or []):
                    conn.execute(
                        update(golden_candidates_table)
                        .where(golden_candidates_table.c.candidate_id == cid)
                        .values(retrieved=kept, relevant_doc_ids=docs)
                    )
                    changed += 1
        return changed

    def mentions(self, tenant: str, doc_id: str) -> int:
        """How many of the tenant's candidates still name ``doc_id`` (retrieved or relevant)."""
        return sum(
            1
            for c in self.find(tenant)
            if doc_id in c.relevant_doc_ids or any(r.get("doc_id") == doc_id for r in c.retrieved)
        )

    def delete(self, tenant: str, *, key_id: str) -> int:
        """Deletes the candidates made from one principal's queries (erasure).

        Returns:
            Rows deleted.
        """
        stmt = delete(golden_candidates_table).where(
            golden_candidates_table.c.tenant == tenant, golden_candidates_table.c.key_id == key_id
        )
        with self._db.transaction() as conn:
            return int(conn.execute(stmt).rowcount)
