"""The index-version lifecycle (rag_platform.lib.store.lifecycle) through the store, on SQLite
and PostgreSQL: every allowed transition, every forbidden one with its code, rejected versions
and rollback targets, audit rows."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import select, text

from rag_platform.lib.index.receipt import InventoryDocument, reconcile
from rag_platform.lib.store import (
    TRANSITIONS,
    VERSION_STATUSES,
    FailedCheck,
    MetadataStore,
    NotFoundError,
    VersionTransitionError,
)
from rag_platform.lib.store.lifecycle import check_transition
from rag_platform.lib.store.schema import VersionStatus, index_versions_table

GATE: list[FailedCheck] = [
    {"name": "eval_gate", "reasons": ["ndcg@10 0.61 < 0.70", "recall@10 dropped 0.08"]},
    {"name": "receipt", "reasons": ["3 documents missing"]},
]


def _building(store: MetadataStore, version: str) -> None:
    store.register_version("acme", version, f"/idx/acme/{version}", 3, 10, "cfg")


def _built(store: MetadataStore, version: str) -> None:
    _building(store, version)
    store.mark_version_built("acme", version)


def _published(store: MetadataStore, version: str) -> None:
    _built(store, version)
    store.publish_version("acme", version)


def _retired(store: MetadataStore, version: str) -> None:
    _published(store, version)
    _published(store, f"{version}-next")


def _rejected(store: MetadataStore, version: str) -> None:
    _building(store, version)
    store.reject_version("acme", version, GATE)


def _deleted(store: MetadataStore, version: str) -> None:
    _built(store, version)
    store.delete_version("acme", version)


#: Puts version ``v`` of tenant acme into each status through the public API.
SETUP: dict[VersionStatus, Callable[[MetadataStore, str], None]] = {
    "building": _building,
    "built": _built,
    "published": _published,
    "retired": _retired,
    "rejected": _rejected,
    "deleted": _deleted,
}


def _status(store: MetadataStore, version: str = "v") -> str:
    return store.get_version("acme", version).status  # type: ignore[union-attr]


def _transitions(store: MetadataStore) -> list[tuple[str, str | None, str, str]]:
    """``(action, from, to, version)`` of every lifecycle audit row, in order."""
    return [
        (e.action, e.details["from"], e.details["to"], e.details["version"])
        for e in store.list_audit("acme")
        if e.action.startswith("index.")
    ]


#: Each allowed transition and the public call that makes it on version ``v``.
ALLOWED: dict[tuple[VersionStatus, VersionStatus], Callable[[MetadataStore], object]] = {
    ("building", "built"): lambda s: s.mark_version_built("acme", "v"),
    ("building", "rejected"): lambda s: s.reject_version("acme", "v", GATE),
    ("built", "rejected"): lambda s: s.reject_version("acme", "v", GATE),
    ("built", "published"): lambda s: s.publish_version("acme", "v"),
    ("built", "deleted"): lambda s: s.delete_version("acme", "v"),
    ("published", "retired"): lambda s: _published(s, "w"),
    ("retired", "published"): lambda s: s.rollback("acme", "v"),
    ("retired", "deleted"): lambda s: s.delete_version("acme", "v"),
    ("rejected", "deleted"): lambda s: s.delete_version("acme", "v"),
}


def _forbidden() -> list[tuple[VersionStatus, VersionStatus]]:
    return [(a, b) for a in VERSION_STATUSES for b in VERSION_STATUSES if b not in TRANSITIONS[a]]


def _expected_code(current: VersionStatus, to: VersionStatus) -> str:
    if current == "rejected":
        return "version_rejected"
    if current == to == "published":
        return "already_published"
    return "invalid_transition"


class TestTransitions:
    def test_the_table_is_the_brief(self) -> None:
        allowed = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
        assert allowed == set(ALLOWED)
        assert set(TRANSITIONS) == set(VERSION_STATUSES)

    @pytest.mark.parametrize(("current", "to"), list(ALLOWED), ids=lambda s: str(s))
    def test_every_allowed_transition_is_applied_and_audited(
        self, store: MetadataStore, current: VersionStatus, to: VersionStatus
    ) -> None:
        SETUP[current](store, "v")
        assert _status(store) == current
        before = len(_transitions(store))
        ALLOWED[(current, to)](store)
        assert _status(store) == to
        rows = [r for r in _transitions(store)[before:] if r[3] == "v"]
        action = {"published": "index.rollback" if current == "retired" else "index.publish"}
        assert rows == [(action.get(to, "index.transition"), current, to, "v")]

    @pytest.mark.parametrize(("current", "to"), _forbidden(), ids=lambda s: str(s))
    def test_every_forbidden_transition_raises_its_code(
        self, store: MetadataStore, current: VersionStatus, to: VersionStatus
    ) -> None:
        SETUP[current](store, "v")
        stmt = select(index_versions_table).where(index_versions_table.c.version == "v")
        with store.engine.connect() as conn:
            row = conn.execute(stmt).mappings().one()
        with pytest.raises(VersionTransitionError) as err:
            check_transition(row, to)
        assert err.value.code == _expected_code(current, to)
        assert isinstance(err.value, ValueError) and err.value.reason == str(err.value)

    @pytest.mark.parametrize(
        ("current", "call"),
        [
            ("building", lambda s: s.delete_version("acme", "v")),
            ("building", lambda s: s.publish_version("acme", "v")),
            ("built", lambda s: s.mark_version_built("acme", "v")),
            ("published", lambda s: s.reject_version("acme", "v", GATE)),
            ("published", lambda s: s.delete_version("acme", "v")),
            ("retired", lambda s: s.reject_version("acme", "v", GATE)),
            ("deleted", lambda s: s.delete_version("acme", "v")),
            ("deleted", lambda s: s.publish_version("acme", "v")),
            ("rejected", lambda s: s.mark_version_built("acme", "v")),
            ("rejected", lambda s: s.reject_version("acme", "v", GATE)),
        ],
    )
    def test_forbidden_calls_change_nothing_and_write_no_audit(
        self, store: MetadataStore, current: VersionStatus, call: Callable[[MetadataStore], object]
    ) -> None:
        SETUP[current](store, "v")
        audit = store.list_audit("acme")
        with pytest.raises(VersionTransitionError) as err:
            call(store)
        assert err.value.code == (
            "version_rejected" if current == "rejected" else "invalid_transition"
        )
        assert _status(store) == current
        assert store.list_audit("acme") == audit

    def test_audit_rows_of_a_whole_lifecycle(self, store: MetadataStore) -> None:
        _built(store, "v1")
        store.publish_version("acme", "v1", actor="dagster:r1")
        _built(store, "v2")
        store.publish_version("acme", "v2", actor="dagster:r2")
        store.rollback("acme", actor="oncall")
        store.delete_version("acme", "v2", actor="gc")
        assert _transitions(store) == [
            ("index.transition", None, "building", "v1"),
            ("index.transition", "building", "built", "v1"),
            ("index.publish", "built", "published", "v1"),
            ("index.transition", None, "building", "v2"),
            ("index.transition", "building", "built", "v2"),
            ("index.transition", "published", "retired", "v1"),
            ("index.publish", "built", "published", "v2"),
            ("index.transition", "published", "retired", "v2"),
            ("index.rollback", "retired", "published", "v1"),
            ("index.transition", "retired", "deleted", "v2"),
        ]
        entries = [e for e in store.list_audit("acme") if e.action.startswith("index.")]
        assert [e.actor for e in entries[-5:]] == [
            "dagster:r2",
            "dagster:r2",
            "oncall",
            "oncall",
            "gc",
        ]
        assert entries[-2].details["previous"] == "v2"
        assert entries[-3].details["reasons"] == ["superseded by 'v1' (index.rollback)"]

    def test_first_published_at_is_kept_published_at_moves(self, store: MetadataStore) -> None:
        _published(store, "v1")
        first = store.get_version("acme", "v1")
        assert first is not None and first.first_published_at == first.published_at
        _published(store, "v2")
        again = store.rollback("acme", "v1")
        assert again.first_published_at == first.first_published_at
        assert again.published_at is not None and again.published_at >= first.published_at  # type: ignore[operator]
        retired = store.get_version("acme", "v2")
        assert retired is not None and retired.status == "retired"
        assert retired.first_published_at is not None


class TestRejectedVersions:
    def test_rejection_records_the_failed_checks_and_audits_them(
        self, store: MetadataStore
    ) -> None:
        _built(store, "v1")
        v = store.reject_version("acme", "v1", GATE, actor="dagster:r7")
        assert v.status == "rejected" and v.failed_checks == GATE
        entry = store.list_audit("acme", action="index.transition")[-1]
        assert (entry.actor, entry.details["from"], entry.details["to"]) == (
            "dagster:r7",
            "built",
            "rejected",
        )
        assert entry.details["reasons"] == GATE

    @pytest.mark.parametrize(
        "call",
        [
            lambda s: s.publish_version("acme", "v2"),
            lambda s: s.rollback("acme", "v2"),
        ],
        ids=["publish", "rollback"],
    )
    def test_a_rejected_version_is_never_served_and_the_error_says_why(
        self, store: MetadataStore, call: Callable[[MetadataStore], object]
    ) -> None:
        _published(store, "v1")
        _rejected(store, "v2")
        with pytest.raises(VersionTransitionError) as err:
            call(store)
        assert err.value.code == "version_rejected"
        for reason in ("ndcg@10 0.61 < 0.70", "recall@10 dropped 0.08", "3 documents missing"):
            assert reason in err.value.reason
        assert "eval_gate" in err.value.reason and "receipt" in err.value.reason
        assert store.get_published_version("acme").version == "v1"  # type: ignore[union-attr]
        assert _status(store, "v2") == "rejected"

    def test_rollback_default_skips_rejected_versions(self, store: MetadataStore) -> None:
        _published(store, "v1")
        _rejected(store, "v2")
        _published(store, "v3")
        assert store.rollback("acme").version == "v1"

    def test_a_failed_receipt_blocks_publish(self, store: MetadataStore) -> None:
        _built(store, "v1")
        receipt = reconcile(
            [InventoryDocument("d1", ["all"], 2)],
            set(),
            [("c1", {"doc_id": "d1", "acl_groups": ["all"]})],
        )
        store.set_version_details("acme", "v1", {"receipt": receipt.to_dict()})
        with pytest.raises(VersionTransitionError) as err:
            store.publish_version("acme", "v1")
        assert err.value.code == "receipt_failed"
        assert "1 chunk_count_mismatches" in err.value.reason
        assert store.get_receipt("acme", "v1") == receipt
        assert store.get_published_version("acme") is None


class TestRollbackTargets:
    def test_rollback_to_a_built_version_is_refused(self, store: MetadataStore) -> None:
        _published(store, "v1")
        _built(store, "v2")
        with pytest.raises(VersionTransitionError) as err:
            store.rollback("acme", "v2")
        assert err.value.code == "never_published"
        assert "never published" in err.value.reason

    @pytest.mark.parametrize(
        ("status", "code"),
        [
            ("deleted", "invalid_transition"),
            ("building", "invalid_transition"),
            ("published", "already_published"),
        ],
    )
    def test_rollback_refusals_have_codes(
        self, store: MetadataStore, status: VersionStatus, code: str
    ) -> None:
        _published(store, "v0")
        if status != "published":
            _published(store, "v1")
        SETUP[status](store, "v")
        with pytest.raises(VersionTransitionError) as err:
            store.rollback("acme", "v")
        assert err.value.code == code
        with pytest.raises(NotFoundError):
            store.rollback("acme", "nope")

    def test_no_target_has_its_code(self, store: MetadataStore) -> None:
        _built(store, "v1")  # built, never published: not a target
        with pytest.raises(VersionTransitionError) as err:
            store.rollback("acme")
        assert err.value.code == "no_rollback_target"

    def test_default_rollback_needs_a_first_publish(self, store: MetadataStore) -> None:
        """A retired row without ``first_published_at`` (impossible through the API) is no
        rollback target, by default or by name."""
        _retired(store, "v1")
        _published(store, "v2")
        with store.engine.begin() as conn:
            conn.execute(
                text("UPDATE index_versions SET first_published_at = NULL WHERE version = 'v1'")
            )
        with pytest.raises(VersionTransitionError) as err:
            store.rollback("acme", "v1")
        assert err.value.code == "never_published"
        assert store.rollback("acme").version == "v1-next"

    def test_get_receipt_of_the_published_version(self, store: MetadataStore) -> None:
        with pytest.raises(NotFoundError):
            store.get_receipt("acme")
        _published(store, "v1")
        assert store.get_receipt("acme") is None
        receipt = reconcile([], set(), [])
        store.set_version_details("acme", "v1", {"receipt": receipt.to_dict()})
        assert store.get_receipt("acme") == receipt
        with pytest.raises(NotFoundError):
            store.get_receipt("acme", "v9")
