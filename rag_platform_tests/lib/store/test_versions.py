"""Index versions, publish and rollback (rag_platform.lib.store.versions), on SQLite and
PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from rag_platform.lib.store import (
    FailedCheck,
    MetadataStore,
    NotFoundError,
    VersionTransitionError,
)


def _register(store: MetadataStore, tenant: str, version: str, **kw: Any) -> None:
    """Register ``version`` and mark it built (a complete shard)."""
    store.register_version(
        tenant,
        version,
        path=f"/idx/{tenant}/{version}",
        documents=3,
        chunks=10,
        config_hash="cfg",
        **kw,
    )
    store.mark_version_built(tenant, version)


class TestIndexVersions:
    def test_register_get_and_list_newest_first(self, store: MetadataStore) -> None:
        v1 = store.register_version("acme", "v1", "/idx/acme/v1", 3, 10, "h1", {"ndcg@10": 0.7})
        assert (v1.status, v1.documents, v1.chunks, v1.details) == (
            "building",
            3,
            10,
            {"ndcg@10": 0.7},
        )
        v1 = store.mark_version_built("acme", "v1", {"bytes": 42})
        assert (v1.status, v1.details) == ("built", {"ndcg@10": 0.7, "bytes": 42})
        assert v1.published_at is None and v1.first_published_at is None
        assert v1.created_at.utcoffset() == timedelta(0)
        _register(store, "acme", "v2")
        _register(store, "beta", "v1")
        assert [v.version for v in store.list_versions("acme")] == ["v2", "v1"]
        assert store.get_version("acme", "v1") == v1
        assert store.get_version("acme", "nope") is None
        assert store.get_published_version("acme") is None

    def test_publish_retires_the_previous_version(self, store: MetadataStore) -> None:
        _register(store, "acme", "v1")
        _register(store, "acme", "v2")
        _register(store, "beta", "v1")
        p1 = store.publish_version("acme", "v1")
        assert p1.status == "published" and p1.published_at is not None
        store.publish_version("beta", "v1")
        p2 = store.publish_version("acme", "v2", actor="run-42")
        assert store.get_published_version("acme") == p2
        assert store.get_version("acme", "v1").status == "retired"  # type: ignore[union-attr]
        assert store.get_published_version("beta").version == "v1"  # type: ignore[union-attr]
        publishes = store.list_audit("acme", action="index.publish")
        assert [(e.details["version"], e.details["previous"], e.actor) for e in publishes] == [
            ("v1", None, "pipeline"),
            ("v2", "v1", "run-42"),
        ]

    def test_republishing_the_published_version_is_a_no_op(self, store: MetadataStore) -> None:
        _register(store, "acme", "v1")
        first = store.publish_version("acme", "v1")
        assert store.publish_version("acme", "v1") == first
        assert len(store.list_audit("acme", action="index.publish")) == 1

    @pytest.mark.parametrize("status", ["building", "rejected", "deleted"])
    def test_publish_refuses_unpublishable_versions(
        self, store: MetadataStore, status: str
    ) -> None:
        _register(store, "acme", "v1")
        store.publish_version("acme", "v1")
        store.register_version("acme", "v2", "/idx/acme/v2", 3, 10, "cfg")
        if status == "rejected":
            store.reject_version("acme", "v2", [{"name": "eval_gate", "reasons": ["too low"]}])
        elif status == "deleted":
            store.mark_version_built("acme", "v2")
            store.delete_version("acme", "v2")
        with pytest.raises(VersionTransitionError, match=status):
            store.publish_version("acme", "v2")
        assert store.get_published_version("acme").version == "v1"  # type: ignore[union-attr]
        with pytest.raises(NotFoundError):
            store.publish_version("acme", "v9")

    def test_database_allows_one_published_row_per_tenant(self, store: MetadataStore) -> None:
        _register(store, "acme", "v1")
        _register(store, "acme", "v2")
        _register(store, "beta", "v1")
        store.publish_version("acme", "v1")
        store.publish_version("beta", "v1")  # another tenant: allowed
        with pytest.raises(IntegrityError), store.engine.begin() as conn:
            conn.execute(text("UPDATE index_versions SET status='published' WHERE version='v2'"))
        assert [v.version for v in store.list_versions("acme") if v.status == "published"] == ["v1"]

    def test_concurrent_publishes_leave_exactly_one_published(self, store: MetadataStore) -> None:
        versions = [f"v{i}" for i in range(6)]
        for v in versions:
            _register(store, "acme", v)
        barrier = threading.Barrier(len(versions))
        errors: list[BaseException] = []

        def publish(version: str) -> None:
            try:
                barrier.wait(timeout=10)
                store.publish_version("acme", version)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=publish, args=(v,)) for v in versions]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        statuses = {v.version: v.status for v in store.list_versions("acme")}
        assert sorted(statuses.values()) == ["published"] + ["retired"] * 5
        # The publishes were serialised: each retired the one before it, the last one won.
        audit = store.list_audit("acme", action="index.publish")
        assert len(audit) == 6
        assert [e.details["previous"] for e in audit[1:]] == [
            e.details["version"] for e in audit[:-1]
        ]
        assert statuses[audit[-1].details["version"]] == "published"

    def test_rollback_defaults_to_the_previous_retired_version(self, store: MetadataStore) -> None:
        for v in ("v1", "v2", "v3"):
            _register(store, "acme", v)
            store.publish_version("acme", v)
        _register(store, "acme", "v4")  # built, never published: not a rollback target
        back = store.rollback("acme", actor="oncall")
        assert back.version == "v2" and back.status == "published"
        assert store.get_version("acme", "v3").status == "retired"  # type: ignore[union-attr]
        assert store.rollback("acme").version == "v1"
        with pytest.raises(ValueError, match="no retired index version older than 'v1'"):
            store.rollback("acme")
        rollbacks = store.list_audit("acme", action="index.rollback")
        assert [(e.details["version"], e.details["previous"], e.actor) for e in rollbacks] == [
            ("v2", "v3", "oncall"),
            ("v1", "v2", "cli"),
        ]

    def test_rollback_to_a_named_version(self, store: MetadataStore) -> None:
        for v in ("v1", "v2", "v3"):
            _register(store, "acme", v)
            store.publish_version("acme", v)
        assert store.rollback("acme", to_version="v1").version == "v1"
        assert store.get_published_version("acme").version == "v1"  # type: ignore[union-attr]
        store.delete_version("acme", "v2")
        with pytest.raises(ValueError, match="deleted"):
            store.rollback("acme", to_version="v2")
        with pytest.raises(ValueError, match="already published"):
            store.rollback("acme", to_version="v1")
        with pytest.raises(NotFoundError):
            store.rollback("acme", to_version="v9")
        assert store.get_published_version("acme").version == "v1"  # type: ignore[union-attr]

    def test_rollback_without_history_is_refused(self, store: MetadataStore) -> None:
        with pytest.raises(ValueError, match="no retired index version"):
            store.rollback("acme")

    def test_details_updates_and_rejection(self, store: MetadataStore) -> None:
        _register(store, "acme", "v1", details={"a": 1})
        store.set_version_details("acme", "v1", {"metrics": {"recall@10": 0.9}})
        checks: list[FailedCheck] = [{"name": "eval_gate", "reasons": ["ndcg@10 dropped"]}]
        v = store.reject_version("acme", "v1", checks)
        assert v.status == "rejected" and v.failed_checks == checks
        assert v.details == {"a": 1, "metrics": {"recall@10": 0.9}, "failed_checks": checks}
        assert store.get_version("acme", "v1") == v
        with pytest.raises(ValueError, match="at least one failed check"):
            store.reject_version("acme", "v1", [])
        with pytest.raises(NotFoundError):
            store.set_version_details("acme", "v9", {})
        with pytest.raises(NotFoundError):
            store.mark_version_built("acme", "v9")

    def test_published_version_status_cannot_be_changed_directly(
        self, store: MetadataStore
    ) -> None:
        _register(store, "acme", "v1")
        store.publish_version("acme", "v1")
        with pytest.raises(VersionTransitionError, match="publish or roll back to another"):
            store.delete_version("acme", "v1")
        with pytest.raises(VersionTransitionError, match="is 'published'"):
            store.register_version("acme", "v1", "/x", 1, 1, "cfg")
        assert store.get_published_version("acme").version == "v1"  # type: ignore[union-attr]

    def test_re_registering_a_building_version_overwrites_it(self, store: MetadataStore) -> None:
        store.register_version("acme", "v1", "/old", 1, 2, "h1", {"run_id": "r1"})
        again = store.register_version("acme", "v1", "/new", 5, 20, "h2")
        assert (again.status, again.path, again.documents, again.chunks, again.details) == (
            "building",
            "/new",
            5,
            20,
            {},
        )
        assert len(store.list_versions("acme")) == 1

    def test_re_registering_a_rejected_version_is_refused(self, store: MetadataStore) -> None:
        store.register_version("acme", "v1", "/old", 1, 2, "h1")
        store.reject_version("acme", "v1", [{"name": "receipt", "reasons": ["2 orphans"]}])
        with pytest.raises(VersionTransitionError) as err:
            store.register_version("acme", "v1", "/new", 5, 20, "h2")
        assert err.value.code == "version_rejected"
        assert store.get_version("acme", "v1").status == "rejected"  # type: ignore[union-attr]
