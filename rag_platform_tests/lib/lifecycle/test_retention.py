"""Retention: the sweep on SQLite and PostgreSQL with real Edge shards, and the Dagster job and
schedule that run it."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import update

from rag_platform.lib.index.backend import open_backend
from rag_platform.lib.lifecycle.retention import RETENTION_KINDS, RetentionSweep
from rag_platform.lib.store import MetadataStore, QueryLogEntry
from rag_platform.lib.store.conversations import ConversationMessage
from rag_platform.lib.store.schema import (
    audit_log_table,
    conversations_table,
    feedback_table,
    index_versions_table,
    query_log_table,
)
from rag_platform.lib.tenants import TenantConfig
from rag_platform.runner import dagster_instance, load_definitions
from rag_platform.settings import Settings
from rag_platform_tests.conftest import TenantWriter, files_tenant
from rag_platform_tests.serving.factories import publish_tenant, scifact_docs
from rag_platform_tests.utils.services import fresh_postgres_database

TENANT = "acme"
NOW = datetime.now(UTC)


def _age(store: MetadataStore, table, where, days: int) -> None:  # type: ignore[no-untyped-def]
    with store.engine.begin() as conn:
        conn.execute(update(table).where(where).values(created_at=NOW - timedelta(days=days)))


def _sweep_world(settings: Settings) -> tuple[MetadataStore, dict[str, Any]]:
    store = MetadataStore.from_settings(settings)
    store.migrate()
    store.upsert_tenant(TENANT)
    old, recent = QueryLogEntry(tenant=TENANT), QueryLogEntry(tenant=TENANT)
    store.log_queries([old, recent])
    store.add_feedback(old.query_id, TENANT, "k", 5, "answer")
    stale_feedback = store.add_feedback(recent.query_id, TENANT, "k", 1, "answer")
    stale_conv = store.conversations.create(TENANT, "k", "old")
    store.conversations.append(
        TENANT, "k", stale_conv.conversation_id, [ConversationMessage(0, "user", "old q")]
    )
    fresh_conv = store.conversations.create(TENANT, "k", "recent")
    with store.engine.begin() as conn:  # last message 366 days ago: beyond 365 days
        conn.execute(
            update(conversations_table)
            .where(conversations_table.c.conversation_id == stale_conv.conversation_id)
            .values(updated_at=NOW - timedelta(days=366))
        )
    store.audit("old.action", TENANT, "t", {})
    _age(store, query_log_table, query_log_table.c.query_id == old.query_id, 91)
    _age(store, feedback_table, feedback_table.c.feedback_id == stale_feedback, 366)
    # The audit log is one hash chain: retention deletes its oldest rows, a prefix. Every row
    # so far is 400 days old, then one recent row follows.
    old_rows = len(store.list_audit())
    _age(store, audit_log_table, audit_log_table.c.id > 0, 400)
    store.audit("recent.action", TENANT, "t", {})
    return store, {
        "old": old.query_id,
        "recent": recent.query_id,
        "old_audit_rows": old_rows,
        "fresh_conversation": fresh_conv.conversation_id,
    }


@pytest.mark.parametrize(
    "db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def test_sweep_deletes_what_the_policy_no_longer_keeps(
    rag_home: Settings, db: str, tmp_path: Path
) -> None:
    def run(url: str) -> None:
        settings = rag_home.model_copy(update={"database_url": url})
        store, ids = _sweep_world(settings)
        docs = scifact_docs(0, 2)
        for version in ("v1", "v2", "v3", "v4"):
            publish_tenant(store, settings, TENANT, version, docs)
        with store.engine.begin() as conn:  # v2 was last served 10 days ago
            conn.execute(
                update(index_versions_table)
                .where(index_versions_table.c.version == "v2")
                .values(published_at=NOW - timedelta(days=10))
            )
        state = settings.cache_dir / TENANT
        state.mkdir(parents=True, exist_ok=True)
        stale, fresh = state / "quarantine_parse.json", state / "quarantine_mask.json"
        stale.write_text(json.dumps([{"doc_id": "a"}, {"doc_id": "b"}]))
        fresh.write_text(json.dumps([{"doc_id": "c"}]))
        month_ago = time.time() - 31 * 86400
        os.utime(stale, (month_ago, month_ago))

        tenant = TenantConfig(id=TENANT, retention={"retired_versions_days": 7})
        result = RetentionSweep(settings, store, open_backend(settings)).run(tenant)

        assert set(result.deleted) == set(RETENTION_KINDS)
        assert result.deleted == {
            "query_log": 1,
            "feedback_on_deleted_queries": 1,
            "feedback": 1,
            "conversations": 1,
            "conversation_messages": 1,
            "audit_log": ids["old_audit_rows"],
            "quarantine": 2,
            "retired_versions": 2,  # v1: beyond the 3 kept; v2: retired for over 7 days
        }
        assert result.deleted_versions == ["v1", "v2"]
        assert [q.query_id for q in store.list_queries(TENANT)] == [ids["recent"]]
        assert store.list_feedback(TENANT) == []
        assert [c.conversation_id for c in store.conversations.find(TENANT)] == [
            ids["fresh_conversation"]
        ]
        assert not stale.exists() and fresh.exists()
        status = {v.version: v.status for v in store.list_versions(TENANT)}
        assert status == {"v1": "deleted", "v2": "deleted", "v3": "retired", "v4": "published"}
        assert not (settings.index_dir / TENANT / "v2").exists()
        assert (settings.index_dir / TENANT / "v3").is_dir()
        [audit] = store.list_audit(TENANT, "retention.sweep")
        assert audit.details["deleted"]["query_log"] == 1
        assert "old.action" not in {a.action for a in store.list_audit(TENANT)}
        assert "recent.action" in {a.action for a in store.list_audit(TENANT)}
        assert store.audit_log.verify().intact

        again = RetentionSweep(settings, store, open_backend(settings)).run(tenant)
        assert sum(again.deleted.values()) == 0
        store.dispose()

    if db == "sqlite":
        run(f"sqlite:///{tmp_path / 'meta.db'}")
    else:
        with fresh_postgres_database() as url:
            run(url)


def test_retention_job_run_reports_counts_and_schedule_covers_every_tenant(
    rag_home: Settings, write_tenants: TenantWriter, tmp_path: Path
) -> None:
    write_tenants(files_tenant(TENANT, tmp_path), files_tenant("globex", tmp_path))
    store, ids = _sweep_world(rag_home)
    instance = dagster_instance(rag_home)
    instance.add_dynamic_partitions("tenants", [TENANT, "globex"])
    defs = load_definitions()

    result = defs.resolve_job_def("tenant_retention").execute_in_process(
        partition_key=TENANT, instance=instance
    )
    assert result.success
    [mat] = [
        e.step_materialization_data.materialization
        for e in result.get_asset_materialization_events()
    ]
    md = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    assert mat.asset_key.to_user_string() == "retention_sweep"
    assert md["deleted_query_log"] == 1 and md["deleted_feedback"] == 1
    assert md["deleted_audit_log"] == ids["old_audit_rows"]
    # the stale conversation and its one message
    assert md["deleted_conversations"] == 1 and md["deleted_conversation_messages"] == 1
    assert md["deleted_total"] == 5 + ids["old_audit_rows"]
    assert len(store.list_queries(TENANT)) == 1

    schedule = next(s for s in defs.schedules if s.name == "daily_retention")
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 12, 1, 3, tzinfo=UTC),
        repository_def=defs.get_repository_def(),
    )
    requests = schedule.evaluate_tick(context).run_requests or []
    assert sorted((r.partition_key, r.run_key) for r in requests) == [
        ("acme", "retention:acme:2026-12-01"),
        ("globex", "retention:globex:2026-12-01"),
    ]
    store.dispose()
