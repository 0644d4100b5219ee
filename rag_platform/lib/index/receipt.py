"""Reconciliation receipts: the source inventory against the points of a new index version.

Before a version is published, :func:`reconcile` compares what the sources hold (the manifest:
each document's ACL groups and expected chunk count) with what the index holds (each point's
chunk id, document id and ACL groups). A publish needs all four mismatch counts of the
:class:`Receipt` to be 0; the receipt (counts and up to :data:`SAMPLE_SIZE` sample ids per kind)
is stored in the version's details under ``"receipt"`` and recorded as asset metadata.

Pure Python: the inventory is read once into a map of ids (no texts), the index points are
streamed, and only chunk ids and per-document counts are kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: Most sample ids kept per kind of finding.
SAMPLE_SIZE = 10

#: The kinds of finding with sample ids, in :attr:`Receipt.samples`.
SAMPLE_KINDS: tuple[str, ...] = (
    "documents_missing",
    "orphans",
    "acl_mismatches",
    "chunk_count_mismatches",
    "duplicate_chunk_ids",
    "quarantined",
)

#: A point's payload as the index returns it; the receipt reads ``doc_id`` and ``acl_groups``.
Payload = Mapping[str, object]


@dataclass(frozen=True)
class InventoryDocument:
    """One document the sources hold, as the new index version must contain it.

    Attributes:
        doc_id: Document id (the ``doc_id`` of its chunks' payloads).
        acl_groups: Groups allowed to read it; an empty list is a valid ACL (nobody: fail
            closed) and must be indexed as empty too.
        expected_chunks: Chunks the chunking stage produced for it (>= 0).
    """

    doc_id: str
    acl_groups: list[str]
    expected_chunks: int


@dataclass
class Receipt:
    """The result of one reconciliation.

    Attributes:
        documents: Inventory documents expected in the index (quarantined ones excluded).
        chunks: Points read from the index (duplicates included).
        documents_missing: Expected documents with no point in the index.
        orphans: Distinct documents in the index that are not expected: not in the inventory
            (deleted at the source), quarantined, or points without a ``doc_id``.
        acl_mismatches: Expected documents with at least one point whose ACL groups (as a set)
            differ from the inventory's, or have no ``acl_groups`` list.
        chunk_count_mismatches: Expected documents whose number of points differs from
            ``expected_chunks`` or that hold a chunk id more than once.
        quarantined: Inventory documents held back by quarantine (not expected in the index).
        samples: Up to :data:`SAMPLE_SIZE` ids per kind (:data:`SAMPLE_KINDS`), sorted: document
            ids, chunk ids for ``duplicate_chunk_ids`` and for orphan points without a doc id.
    """

    documents: int
    chunks: int
    documents_missing: int
    orphans: int
    acl_mismatches: int
    chunk_count_mismatches: int
    quarantined: int
    samples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether the index matches the inventory: all four mismatch counts are 0."""
        return (
            self.documents_missing == 0
            and self.orphans == 0
            and self.acl_mismatches == 0
            and self.chunk_count_mismatches == 0
        )

    def to_dict(self) -> dict[str, int | bool | dict[str, list[str]]]:
        """The receipt as JSON-serialisable data, ``passed`` included."""
        return {
            "documents": self.documents,
            "chunks": self.chunks,
            "documents_missing": self.documents_missing,
            "orphans": self.orphans,
            "acl_mismatches": self.acl_mismatches,
            "chunk_count_mismatches": self.chunk_count_mismatches,
            "quarantined": self.quarantined,
            "samples": {k: list(v) for k, v in self.samples.items()},
            "passed": self.passed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Receipt:
        """The receipt stored by :meth:`to_dict` (``passed`` is recomputed, not read).

        Raises:
            KeyError: A count is missing.
            ValueError: A count is not an integer.
        """

        def count(key: str) -> int:
            value = data[key]
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"receipt field {key!r} must be an integer, got {value!r}")
            return value

        raw = data.get("samples")
        samples = (
            {str(k): [str(i) for i in v] for k, v in raw.items() if isinstance(v, list)}
            if isinstance(raw, Mapping)
            else {}
        )
        return cls(
            documents=count("documents"),
            chunks=count("chunks"),
            documents_missing=count("documents_missing"),
            orphans=count("orphans"),
            acl_mismatches=count("acl_mismatches"),
            chunk_count_mismatches=count("chunk_count_mismatches"),
            quarantined=count("quarantined"),
            samples=samples,
        )


def _sample(ids: Iterable[str]) -> list[str]:
    return sorted(ids)[:SAMPLE_SIZE]


def _acl_set(value: object) -> frozenset[str] | None:
    """The ACL groups of a payload as a set; None when absent or not a list of strings."""
    if not isinstance(value, list | tuple) or not all(isinstance(g, str) for g in value):
        return None
    return frozenset(value)


def reconcile(
    inventory: Iterable[InventoryDocument],
    quarantined: set[str],
    index_points: Iterable[tuple[str, Payload]],
) -> Receipt:
    """Compare the source inventory with the points of an index version.

    Args:
        inventory: Every document the sources hold (one entry per ``doc_id``; a repeated id
            keeps its last entry).
        quarantined: Ids of documents held back by quarantine: not expected in the index, and
            an orphan if found there.
        index_points: ``(chunk_id, payload)`` of every point in the index, streamed once; the
            payload's ``doc_id`` (str) and ``acl_groups`` (list of str) are read, nothing else
            is kept.

    Returns:
        The receipt; ``receipt.passed`` says whether the version may be published.

    Raises:
        ValueError: An inventory document with ``expected_chunks`` < 0.
    """
    expected: dict[str, tuple[frozenset[str], int]] = {}
    for doc in inventory:
        if doc.expected_chunks < 0:
            raise ValueError(
                f"document {doc.doc_id!r}: expected_chunks must be >= 0, got {doc.expected_chunks}"
            )
        expected[doc.doc_id] = (frozenset(doc.acl_groups), doc.expected_chunks)
    held_back = {d for d in expected if d in quarantined}
    for held in held_back:
        del expected[held]

    seen_chunks: set[str] = set()
    duplicates: set[str] = set()
    points_per_doc: dict[str, int] = {}
    docs_with_duplicates: set[str] = set()
    acl_mismatched: set[str] = set()
    orphan_docs: set[str] = set()
    orphan_points: set[str] = set()
    chunks = 0
    for chunk_id, payload in index_points:
        chunks += 1
        doc_id = payload.get("doc_id")
        if chunk_id in seen_chunks:
            duplicates.add(chunk_id)
            if isinstance(doc_id, str):
                docs_with_duplicates.add(doc_id)
        seen_chunks.add(chunk_id)
        if not isinstance(doc_id, str):
            orphan_points.add(chunk_id)
            continue
        if doc_id not in expected:
            orphan_docs.add(doc_id)
            continue
        points_per_doc[doc_id] = points_per_doc.get(doc_id, 0) + 1
        if _acl_set(payload.get("acl_groups")) != expected[doc_id][0]:
            acl_mismatched.add(doc_id)

    missing = {d for d in expected if d not in points_per_doc}
    count_mismatched = {
        d for d, n in points_per_doc.items() if n != expected[d][1] or d in docs_with_duplicates
    }
    return Receipt(
        documents=len(expected),
        chunks=chunks,
        documents_missing=len(missing),
        orphans=len(orphan_docs) + len(orphan_points),
        acl_mismatches=len(acl_mismatched),
        chunk_count_mismatches=len(count_mismatched),
        quarantined=len(held_back),
        samples={
            "documents_missing": _sample(missing),
            "orphans": _sample(orphan_docs | orphan_points),
            "acl_mismatches": _sample(acl_mismatched),
            "chunk_count_mismatches": _sample(count_mismatched),
            "duplicate_chunk_ids": _sample(duplicates),
            "quarantined": _sample(held_back),
        },
    )
