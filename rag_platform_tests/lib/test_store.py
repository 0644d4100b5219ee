"""The metadata store on SQLite (a file under tmp_path) and on the real PostgreSQL.

PostgreSQL tests use one fresh database per module (``fresh_postgres_database``), migrated once
and truncated before each test.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from rag_platform.lib.store import (
    USAGE_KINDS,
    MetadataStore,
    NotFoundError,
    QueryLogEntry,
    hash_secret,
    keys,
    normalize_database_url,
)
from rag_platform.lib.store.schema import Base
from rag_platform_tests.utils.services import (
    fresh_postgres_database,
    postgres_dsn,
    require_postgres,
)

PEPPER = "test-pepper"
TABLES = {
    "tenants",
    "api_keys",
    "index_versions",
    "query_log",
    "feedback",
    "audit_log",
    "usage_events",
}
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        store = MetadataStore(url)
        store.migrate()
        store.dispose()
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    if request.param == "sqlite":
        s = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}", pepper=PEPPER)
        s.migrate()
    else:
        s = MetadataStore(request.getfixturevalue("pg_url"), pepper=PEPPER)
        with s.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(sorted(TABLES))} RESTART IDENTITY CASCADE"))
    yield s
    s.dispose()


def _fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a database with no tables at all."""
    yield from _fresh_url(request, tmp_path)


def _secret(plaintext: str) -> str:
    parsed = keys.parse_api_key(plaintext)
    assert parsed is not None
    return parsed[1]


def _tamper(plaintext: str) -> str:
    return plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")


class TestTenants:
    def test_upsert_and_list(self, store: MetadataStore) -> None:
        store.upsert_tenant("zeta")
        store.upsert_tenant("acme", name="Acme Corp")
        store.upsert_tenant("acme")  # no name: keeps the old one
        store.upsert_tenant("acme", name="ACME")
        assert store.list_tenants() == ["acme", "zeta"]
        with store.engine.connect() as conn:
            assert (
                conn.execute(text("SELECT name FROM tenants WHERE tenant_id='acme'")).scalar()
                == "ACME"
            )

    @pytest.mark.parametrize("bad", ["", "Acme", "a b", "-x", "x" * 64])
    def test_invalid_tenant_id_is_refused(self, store: MetadataStore, bad: str) -> None:
        with pytest.raises(ValueError, match="invalid tenant id"):
            store.upsert_tenant(bad)


class TestApiKeyStore:
    def test_create_then_authenticate(self, store: MetadataStore) -> None:
        info, plaintext = store.create_api_key(
            "acme", ["finance", "all"], role="admin", name="app", actor="alice"
        )
        assert plaintext.startswith(f"rag_{info.key_id}_")
        assert (info.tenant, info.groups, info.role, info.name) == (
            "acme",
            ["finance", "all"],
            "admin",
            "app",
        )
        assert info.created_at.tzinfo is not None and info.created_at.utcoffset() == timedelta(0)
        principal = store.authenticate(plaintext)
        assert principal is not None
        assert principal.key_id == info.key_id
        assert principal.tenant == "acme"
        assert principal.groups == ("finance", "all")
        assert principal.role == "admin" and principal.is_admin
        assert principal.name == "app"
        assert store.list_tenants() == ["acme"]  # tenant row created with the key

    def test_only_the_peppered_hash_is_stored(self, store: MetadataStore) -> None:
        info, plaintext = store.create_api_key("acme", ["all"])
        with store.engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM api_keys")).one()
        assert _secret(plaintext) not in str(tuple(row))
        assert row.secret_hash == hash_secret(_secret(plaintext), PEPPER)
        listed = store.list_api_keys("acme")
        assert [k.key_id for k in listed] == [info.key_id]
        assert not hasattr(listed[0], "secret_hash")

    def test_wrong_secret_unknown_and_malformed_keys_fail(self, store: MetadataStore) -> None:
        info, plaintext = store.create_api_key("acme", ["all"])
        assert store.authenticate(_tamper(plaintext)) is None
        unknown_id = "f" * 12 if info.key_id != "f" * 12 else "e" * 12
        assert store.authenticate(plaintext.replace(info.key_id, unknown_id)) is None
        for bad in ["", "garbage", f"rag_{info.key_id}_", plaintext + " x", plaintext.upper()]:
            assert store.authenticate(bad) is None
        assert store.authenticate(plaintext) is not None

    def test_other_pepper_does_not_authenticate(self, store: MetadataStore) -> None:
        _, plaintext = store.create_api_key("acme", ["all"])
        other = MetadataStore(store.url, pepper="another-pepper")
        try:
            assert other.authenticate(plaintext) is None
        finally:
            other.dispose()

    def test_authenticate_uses_constant_time_compare(
        self, store: MetadataStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _, plaintext = store.create_api_key("acme", ["all"])
        calls: list[tuple[str, str]] = []
        real = keys.hmac.compare_digest

        def spy(a: str, b: str) -> bool:
            calls.append((a, b))
            return real(a, b)

        monkeypatch.setattr(keys.hmac, "compare_digest", spy)
        assert store.authenticate(_tamper(plaintext)) is None
        assert store.authenticate(plaintext) is not None
        stored = hash_secret(_secret(plaintext), PEPPER)
        assert calls == [
            (hash_secret(_secret(_tamper(plaintext)), PEPPER), stored),
            (stored, stored),
        ]
        # An unknown key id goes through a comparison too (no timing shortcut).
        assert store.authenticate("rag_000000000000_" + "x" * 43) is None
        assert len(calls) == 3

    def test_revoked_key_fails_immediately(self, store: MetadataStore) -> None:
        info, plaintext = store.create_api_key("acme", ["all"])
        assert store.authenticate(plaintext) is not None
        assert store.revoke_api_key(info.key_id, actor="bob") is True
        assert store.authenticate(plaintext) is None
        assert store.revoke_api_key(info.key_id) is False  # already revoked
        assert store.revoke_api_key("000000000000") is False  # unknown
        (listed,) = store.list_api_keys()
        assert listed.revoked_at is not None and not listed.is_active()

    def test_expired_key_fails(self, store: MetadataStore) -> None:
        expires = datetime.now(UTC) + timedelta(seconds=1.5)
        info, plaintext = store.create_api_key("acme", ["all"], expires_at=expires)
        assert store.authenticate(plaintext) is not None
        assert store.list_api_keys("acme")[0].expires_at == info.expires_at
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
        assert store.authenticate(plaintext) is None

    def test_naive_expiry_is_taken_as_utc(self, store: MetadataStore) -> None:
        naive = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)
        info, plaintext = store.create_api_key("acme", ["all"], expires_at=naive)
        assert info.expires_at == naive.replace(tzinfo=UTC)
        assert store.list_api_keys()[0].expires_at == naive.replace(tzinfo=UTC)
        assert store.authenticate(plaintext) is not None

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"role": "owner"}, "invalid role"),
            ({"groups": "all"}, "groups"),
            ({"groups": ["ok", ""]}, "groups"),
            ({"expires_at": datetime(2000, 1, 1, tzinfo=UTC)}, "not in the future"),
        ],
    )
    def test_bad_key_arguments_are_refused(
        self, store: MetadataStore, kwargs: dict, message: str
    ) -> None:
        args = {"tenant": "acme", "groups": ["all"], **kwargs}
        with pytest.raises(ValueError, match=message):
            store.create_api_key(**args)
        assert store.list_api_keys() == []

    def test_list_filters_by_tenant(self, store: MetadataStore) -> None:
        a, _ = store.create_api_key("acme", ["all"])
        b, _ = store.create_api_key("beta", ["all"])
        assert [k.key_id for k in store.list_api_keys("acme")] == [a.key_id]
        assert {k.key_id for k in store.list_api_keys()} == {a.key_id, b.key_id}

    def test_key_create_and_revoke_are_audited(self, store: MetadataStore) -> None:
        info, _ = store.create_api_key("acme", ["all"], role="reader", actor="alice")
        store.revoke_api_key(info.key_id, actor="bob")
        entries = store.list_audit("acme")
        assert [(e.action, e.actor) for e in entries] == [
            ("key.create", "alice"),
            ("key.revoke", "bob"),
        ]
        assert entries[0].details["key_id"] == info.key_id
        assert entries[0].details["role"] == "reader"
        assert entries[1].details == {"key_id": info.key_id}


def _register(store: MetadataStore, tenant: str, version: str, **kw: Any) -> None:
    store.register_version(
        tenant,
        version,
        path=f"/idx/{tenant}/{version}",
        documents=3,
        chunks=10,
        config_hash="cfg",
        **kw,
    )


class TestIndexVersions:
    def test_register_get_and_list_newest_first(self, store: MetadataStore) -> None:
        v1 = store.register_version("acme", "v1", "/idx/acme/v1", 3, 10, "h1", {"ndcg@10": 0.7})
        assert (v1.status, v1.documents, v1.chunks, v1.details) == (
            "built",
            3,
            10,
            {"ndcg@10": 0.7},
        )
        assert v1.published_at is None and v1.created_at.utcoffset() == timedelta(0)
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

    @pytest.mark.parametrize("status", ["building", "failed_checks", "deleted"])
    def test_publish_refuses_unpublishable_versions(
        self, store: MetadataStore, status: str
    ) -> None:
        _register(store, "acme", "v1")
        store.publish_version("acme", "v1")
        _register(store, "acme", "v2")
        store.set_version_status("acme", "v2", status)
        with pytest.raises(ValueError, match=status):
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
        store.set_version_status("acme", "v2", "deleted")
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

    def test_status_and_details_updates(self, store: MetadataStore) -> None:
        _register(store, "acme", "v1", details={"a": 1})
        store.set_version_details("acme", "v1", {"metrics": {"recall@10": 0.9}})
        v = store.set_version_status("acme", "v1", "failed_checks", {"reason": "ndcg@10 dropped"})
        assert v.status == "failed_checks"
        assert v.details == {"a": 1, "metrics": {"recall@10": 0.9}, "reason": "ndcg@10 dropped"}
        assert store.get_version("acme", "v1") == v
        with pytest.raises(ValueError, match="invalid status"):
            store.set_version_status("acme", "v1", "bogus")
        with pytest.raises(ValueError, match="publish_version"):
            store.set_version_status("acme", "v1", "published")
        with pytest.raises(NotFoundError):
            store.set_version_details("acme", "v9", {})

    def test_published_version_status_cannot_be_changed_directly(
        self, store: MetadataStore
    ) -> None:
        _register(store, "acme", "v1")
        store.publish_version("acme", "v1")
        with pytest.raises(ValueError, match="is published"):
            store.set_version_status("acme", "v1", "deleted")
        with pytest.raises(ValueError, match="is published"):
            _register(store, "acme", "v1")
        assert store.get_published_version("acme").version == "v1"  # type: ignore[union-attr]

    def test_re_registering_an_unpublished_version_overwrites_it(
        self, store: MetadataStore
    ) -> None:
        _register(store, "acme", "v1")
        store.set_version_status("acme", "v1", "failed_checks")
        again = store.register_version("acme", "v1", "/new", 5, 20, "h2")
        assert (again.status, again.path, again.documents, again.chunks) == ("built", "/new", 5, 20)
        assert len(store.list_versions("acme")) == 1


class TestQueryLogAndFeedback:
    def _entry(self, tenant: str = "acme", **kw: Any) -> QueryLogEntry:
        return QueryLogEntry(
            tenant=tenant, key_id="0123456789ab", question_masked="q <PERSON>", **kw
        )

    def test_log_and_read_back_every_field(self, store: MetadataStore) -> None:
        entry = QueryLogEntry(
            tenant="acme",
            key_id="0123456789ab",
            question_masked="What did <PERSON> say?",
            top_k=5,
            filters={"source_ids": ["docs"], "acl_groups": ["all"]},
            cited_chunk_ids=["c1"],
            hit_chunk_ids=["c1", "c2"],
            index_version="v3",
            latency_ms=12.5,
            embed_ms=3.25,
            search_ms=1.5,
            prompt_tokens=100,
            completion_tokens=20,
            cache_hit=True,
            status_code=200,
        )
        assert store.log_query(entry) == entry.query_id
        assert store.get_query(entry.query_id) == entry
        assert store.get_query("00000000-0000-0000-0000-000000000000") is None
        with pytest.raises(IntegrityError):
            store.log_query(entry)  # the query id is the primary key

    def test_list_queries_by_tenant_and_time(self, store: MetadataStore) -> None:
        t0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
        for i in range(3):
            store.log_query(self._entry(created_at=t0 + timedelta(hours=i)))
        store.log_query(self._entry(tenant="beta", created_at=t0))
        assert len(store.list_queries("acme")) == 3
        window = store.list_queries(
            "acme", since=t0 + timedelta(hours=1), until=t0 + timedelta(hours=2)
        )
        assert [q.created_at for q in window] == [t0 + timedelta(hours=1)]
        assert [
            q.created_at for q in store.list_queries("acme", since=t0 + timedelta(hours=1))
        ] == [t0 + timedelta(hours=1), t0 + timedelta(hours=2)]

    def test_feedback_on_own_query(self, store: MetadataStore) -> None:
        qid = store.log_query(self._entry())
        fid = store.add_feedback(qid, "acme", "0123456789ab", 4, "answer", "good")
        (fb,) = store.list_feedback("acme")
        assert (fb.feedback_id, fb.query_id, fb.rating, fb.type, fb.comment) == (
            fid,
            qid,
            4,
            "answer",
            "good",
        )
        assert store.list_feedback("acme", query_id="other") == []

    def test_cross_tenant_and_unknown_query_feedback_is_refused(self, store: MetadataStore) -> None:
        qid = store.log_query(self._entry(tenant="acme"))
        with pytest.raises(ValueError, match="no query"):
            store.add_feedback(qid, "beta", "0123456789ab", 5, "answer")
        with pytest.raises(ValueError, match="no query"):
            store.add_feedback("missing", "acme", "0123456789ab", 5, "answer")
        assert store.list_feedback("acme") == [] and store.list_feedback("beta") == []

    @pytest.mark.parametrize("rating", [0, 6, -1, True, 3.5])
    def test_rating_out_of_range_is_refused(self, store: MetadataStore, rating: object) -> None:
        qid = store.log_query(self._entry())
        with pytest.raises(ValueError, match="rating"):
            store.add_feedback(qid, "acme", "k", rating, "answer")  # type: ignore[arg-type]


class TestAuditAndUsage:
    def test_audit_rows_in_order_with_filters(self, store: MetadataStore) -> None:
        store.audit("tenant.sync", "acme", "sensor", {"added": 3})
        store.audit("config.reload", None, "cli", {})
        store.audit("tenant.sync", "beta", "sensor", {"added": 1})
        assert [e.action for e in store.list_audit()] == [
            "tenant.sync",
            "config.reload",
            "tenant.sync",
        ]
        (acme,) = store.list_audit("acme")
        assert (acme.tenant, acme.actor, acme.details) == ("acme", "sensor", {"added": 3})
        assert acme.created_at.utcoffset() == timedelta(0)
        assert [e.tenant for e in store.list_audit(action="tenant.sync")] == ["acme", "beta"]
        with pytest.raises(ValueError, match="action"):
            store.audit("", "acme", "x", {})

    def test_usage_by_day_sums_events_and_query_log(self, store: MetadataStore) -> None:
        day = date(2026, 3, 14)
        start = datetime(2026, 3, 14, tzinfo=UTC)
        store.record_usage("acme", "embedding_tokens", 1000, run_id="r1", at=start)  # 00:00 in
        store.record_usage("acme", "embedding_tokens", 500, at=start + timedelta(hours=23.99))
        store.record_usage("acme", "compute_seconds", 12.5, at=start + timedelta(hours=5))
        store.record_usage("acme", "storage_bytes", 4096, at=start + timedelta(hours=6))
        store.record_usage("acme", "embedding_tokens", 7, at=start - timedelta(microseconds=1))
        store.record_usage("acme", "embedding_tokens", 9, at=start + timedelta(days=1))
        store.record_usage("beta", "embedding_tokens", 11, at=start + timedelta(hours=1))
        # A UTC+2 timestamp of 01:00 local is 23:00 UTC the day before: not counted.
        store.record_usage(
            "acme",
            "compute_seconds",
            100,
            at=datetime(2026, 3, 14, 1, tzinfo=timezone(timedelta(hours=2))),
        )
        for i, (p, c) in enumerate([(100, 10), (50, 5)]):
            store.log_query(
                QueryLogEntry(
                    tenant="acme",
                    question_masked="q",
                    prompt_tokens=p,
                    completion_tokens=c,
                    created_at=start + timedelta(hours=8 + i),
                )
            )
        store.log_query(
            QueryLogEntry(tenant="acme", prompt_tokens=999, created_at=start - timedelta(hours=1))
        )
        usage = store.usage_by_day("acme", day)
        assert set(usage) == set(USAGE_KINDS)
        assert usage == {
            "embedding_tokens": 1500.0,
            "compute_seconds": 12.5,
            "storage_bytes": 4096.0,
            "llm_prompt_tokens": 150.0,
            "llm_completion_tokens": 15.0,
            "queries": 2.0,
        }
        assert store.usage_by_day("acme", date(2026, 3, 16)) == dict.fromkeys(USAGE_KINDS, 0.0)

    @pytest.mark.parametrize(
        ("kind", "quantity", "message"),
        [
            ("gpu_hours", 1, "invalid usage kind"),
            ("queries", -1, ">= 0"),
            ("queries", float("nan"), "finite"),
        ],
    )
    def test_bad_usage_is_refused(
        self, store: MetadataStore, kind: str, quantity: float, message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            store.record_usage("acme", kind, quantity)


class TestMetadataStore:
    def test_ping_true_when_reachable(self, store: MetadataStore) -> None:
        assert store.ping() is True

    def test_ping_false_fast_for_unreachable_postgres(self) -> None:
        start = time.monotonic()
        store = MetadataStore("postgresql://postgres@127.0.0.1:1/test")
        try:
            assert store.ping() is False
        finally:
            store.dispose()
        assert time.monotonic() - start < 5.0

    def test_ping_false_for_unopenable_sqlite(self, tmp_path: Path) -> None:
        store = MetadataStore(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
        assert store.ping() is False

    def test_migrate_is_idempotent_and_keeps_data(self, store: MetadataStore) -> None:
        info, plaintext = store.create_api_key("acme", ["all"])
        store.migrate()
        store.migrate()
        with store.engine.connect() as conn:
            assert conn.execute(
                text("SELECT version_num FROM alembic_version")
            ).scalars().all() == ["0001"]
        assert store.authenticate(plaintext).key_id == info.key_id  # type: ignore[union-attr]

    def test_url_normalisation(self) -> None:
        assert (
            normalize_database_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
        )
        assert normalize_database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
        assert (
            normalize_database_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
        )
        assert normalize_database_url("sqlite:///x.db") == "sqlite:///x.db"
        with pytest.raises(ValueError, match="unsupported database"):
            MetadataStore("mysql://u@h/db")
        with pytest.raises(ValueError, match="invalid database URL"):
            MetadataStore("not a url")

    def test_from_settings_creates_the_sqlite_folder(self, tmp_path: Path) -> None:
        from rag_platform.settings import Settings

        settings = Settings(home=tmp_path / "deep" / "home", key_pepper="p1")
        store = MetadataStore.from_settings(settings)
        try:
            assert (tmp_path / "deep" / "home").is_dir()
            store.migrate()
            _, plaintext = store.create_api_key("acme", ["all"])
            assert store.authenticate(plaintext) is not None
            assert (tmp_path / "deep" / "home" / "metadata.db").is_file()
        finally:
            store.dispose()
        with MetadataStore(settings.resolved_database_url, pepper="p2") as other:
            assert other.authenticate(plaintext) is None  # the pepper comes from settings

    def test_sqlite_uses_wal(self, tmp_path: Path) -> None:
        with MetadataStore(f"sqlite:///{tmp_path / 'm.db'}") as store:
            store.migrate()
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


class TestMigrations:
    def test_migration_matches_the_models(self, empty_db_url: str) -> None:
        store = MetadataStore(empty_db_url)
        try:
            store.migrate()
            with store.engine.connect() as conn:
                assert set(inspect(conn).get_table_names()) >= TABLES
                context = MigrationContext.configure(conn, opts={"compare_type": True})
                diff = compare_metadata(context, Base.metadata)
            assert diff == []
        finally:
            store.dispose()

    def test_comparison_detects_a_drift(self, empty_db_url: str) -> None:
        """Guard against a comparison that can never fail."""
        store = MetadataStore(empty_db_url)
        try:
            store.migrate()
            with store.engine.begin() as conn:
                conn.exec_driver_sql("DROP INDEX ix_feedback_tenant")
            with store.engine.connect() as conn:
                diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert [d[0] for d in diff] == ["add_index"]
        finally:
            store.dispose()

    def test_two_processes_migrating_at_once(self, empty_db_url: str) -> None:
        code = (
            "import sys; from rag_platform.lib.store import MetadataStore; "
            "s = MetadataStore(sys.argv[1]); s.migrate(); s.dispose()"
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, empty_db_url],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], results
        engine = create_engine(normalize_database_url(empty_db_url))
        try:
            with engine.connect() as conn:
                versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars()
                assert list(versions) == ["0001"]
        finally:
            engine.dispose()

    @pytest.mark.integration
    def test_fresh_postgres_database_is_dropped_afterwards(self) -> None:
        require_postgres()
        import psycopg

        with fresh_postgres_database() as url:
            name = url.rsplit("/", 1)[1]
            assert name.startswith("rag_test_")
            with MetadataStore(url) as store:
                assert store.ping()
        with psycopg.connect(postgres_dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        assert row is None
