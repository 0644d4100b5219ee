"""Reconciliation receipts (rag_platform.lib.index.receipt): inventory against index points."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rag_platform.lib.index.receipt import (
    SAMPLE_KINDS,
    SAMPLE_SIZE,
    InventoryDocument,
    Payload,
    Receipt,
    reconcile,
)

INVENTORY = [
    InventoryDocument("d1", ["all"], 2),
    InventoryDocument("d2", ["eng", "hr"], 1),
    InventoryDocument("d3", [], 1),  # empty ACL: nobody may read it, fail closed
]


def _points(*docs: tuple[str, list[str] | None, int]) -> list[tuple[str, Payload]]:
    """``n`` points per ``(doc_id, acl_groups, n)``, chunk ids ``<doc>#<i>``."""
    points: list[tuple[str, Payload]] = []
    for doc_id, acl, n in docs:
        payload: dict[str, object] = {"doc_id": doc_id, "text": "..."}
        if acl is not None:
            payload["acl_groups"] = acl
        points.extend((f"{doc_id}#{i}", payload) for i in range(n))
    return points


CLEAN = _points(("d1", ["all"], 2), ("d2", ["hr", "eng"], 1), ("d3", [], 1))


def _counts(r: Receipt) -> tuple[int, int, int, int, int]:
    return (
        r.documents_missing,
        r.orphans,
        r.acl_mismatches,
        r.chunk_count_mismatches,
        r.quarantined,
    )


class TestReconcile:
    def test_clean_index_passes(self) -> None:
        r = reconcile(INVENTORY, set(), CLEAN)
        assert r.passed and _counts(r) == (0, 0, 0, 0, 0)
        assert (r.documents, r.chunks) == (3, 4)
        assert r.samples == {k: [] for k in SAMPLE_KINDS}

    def test_missing_document(self) -> None:
        r = reconcile(INVENTORY, set(), CLEAN[:2] + CLEAN[3:])  # d2 not indexed
        assert not r.passed and _counts(r) == (1, 0, 0, 0, 0)
        assert r.samples["documents_missing"] == ["d2"]

    def test_orphan_document_and_point_without_doc_id(self) -> None:
        extra = _points(("gone", ["all"], 2)) + [("x#0", {"acl_groups": ["all"]})]
        r = reconcile(INVENTORY, set(), CLEAN + extra)
        assert not r.passed and _counts(r) == (0, 2, 0, 0, 0)
        assert r.samples["orphans"] == ["gone", "x#0"]

    @pytest.mark.parametrize(
        ("acl", "indexed"),
        [
            ([], ["all"]),  # fail-closed document indexed as public
            (["all"], []),
            (["eng"], ["eng", "hr"]),
            (["eng"], None),  # payload without acl_groups
        ],
    )
    def test_acl_mismatch(self, acl: list[str], indexed: list[str] | None) -> None:
        r = reconcile([InventoryDocument("d", acl, 1)], set(), _points(("d", indexed, 1)))
        assert not r.passed and _counts(r) == (0, 0, 1, 0, 0)
        assert r.samples["acl_mismatches"] == ["d"]

    def test_acl_compared_as_sets(self) -> None:
        inventory = [InventoryDocument("d", ["hr", "eng", "eng"], 1)]
        assert reconcile(inventory, set(), _points(("d", ["eng", "hr"], 1))).passed

    def test_one_point_with_another_acl_is_a_mismatch(self) -> None:
        points = _points(("d1", ["all"], 1)) + [("d1#1", {"doc_id": "d1", "acl_groups": ["hr"]})]
        r = reconcile(INVENTORY[:1], set(), points)
        assert _counts(r) == (0, 0, 1, 0, 0)

    def test_chunk_count_mismatch(self) -> None:
        points = _points(("d1", ["all"], 3), ("d2", ["eng", "hr"], 1), ("d3", [], 1))
        r = reconcile(INVENTORY, set(), points)
        assert not r.passed and _counts(r) == (0, 0, 0, 1, 0)
        assert r.samples["chunk_count_mismatches"] == ["d1"]

    def test_duplicate_chunk_id_is_a_chunk_count_mismatch(self) -> None:
        # d1 expects 2 chunks and the index holds 2 points, but both are the same chunk.
        dup = ("d1#0", {"doc_id": "d1", "acl_groups": ["all"]})
        r = reconcile(INVENTORY, set(), [dup, dup] + CLEAN[2:])
        assert not r.passed and _counts(r) == (0, 0, 0, 1, 0)
        assert r.samples["duplicate_chunk_ids"] == ["d1#0"]
        assert r.samples["chunk_count_mismatches"] == ["d1"]

    def test_quarantined_document_is_not_missing(self) -> None:
        r = reconcile(INVENTORY, {"d2", "unknown"}, CLEAN[:2] + CLEAN[3:])
        assert r.passed and _counts(r) == (0, 0, 0, 0, 1)
        assert (r.documents, r.samples["quarantined"]) == (2, ["d2"])

    def test_quarantined_document_in_the_index_is_an_orphan(self) -> None:
        r = reconcile(INVENTORY, {"d2"}, CLEAN)
        assert not r.passed and _counts(r) == (0, 1, 0, 0, 1)
        assert r.samples["orphans"] == ["d2"]

    def test_samples_are_capped_and_counts_are_not(self) -> None:
        inventory = [InventoryDocument(f"d{i:02}", ["all"], 1) for i in range(25)]
        r = reconcile(inventory, set(), [])
        assert r.documents_missing == 25
        assert r.samples["documents_missing"] == [f"d{i:02}" for i in range(SAMPLE_SIZE)]

    def test_index_points_are_streamed_once(self) -> None:
        consumed: list[str] = []

        def stream() -> Iterator[tuple[str, Payload]]:
            for chunk_id, payload in CLEAN:
                consumed.append(chunk_id)
                yield chunk_id, payload

        assert reconcile(iter(INVENTORY), set(), stream()).passed
        assert consumed == [c for c, _ in CLEAN]

    def test_negative_expected_chunks_is_refused(self) -> None:
        with pytest.raises(ValueError, match="expected_chunks"):
            reconcile([InventoryDocument("d", [], -1)], set(), [])


class TestReceipt:
    def test_round_trip_through_json_data(self) -> None:
        r = reconcile(INVENTORY, set(), CLEAN[:1])
        data = r.to_dict()
        assert data["passed"] is False and data["documents_missing"] == 2
        assert Receipt.from_dict(data) == r
        assert Receipt.from_dict({**data, "passed": True}).passed is False

    def test_from_dict_refuses_bad_counts(self) -> None:
        data = reconcile([], set(), []).to_dict()
        with pytest.raises(ValueError, match="orphans"):
            Receipt.from_dict({**data, "orphans": "0"})
        del data["chunks"]
        with pytest.raises(KeyError):
            Receipt.from_dict(data)
