"""The audit log (rag_platform.lib.store.audit), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from typer.testing import CliRunner

from rag_platform.cli import app
from rag_platform.lib.store import MetadataStore
from rag_platform.lib.store.audit import GENESIS_HASH, entry_hash
from rag_platform.lib.store.db import MIGRATIONS_DIR
from rag_platform.lib.store.schema import audit_log_table, utcnow
from rag_platform.settings import get_settings


class TestAudit:
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


def _audit_cli(store: MetadataStore, monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict]:
    """``rag-platform audit verify`` on ``store``'s database: exit code and last JSON line."""
    monkeypatch.setenv("RAG_DATABASE_URL", store.url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["audit", "verify"])
    finally:
        get_settings.cache_clear()
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return result.exit_code, json.loads(lines[-1])


def _fill(store: MetadataStore, n: int = 5) -> list[int]:
    store.create_api_key("acme", ["all"], actor="cli")  # a row written inside another aggregate
    for i in range(n - 1):
        store.audit("tenant.sync", "acme", "sensor", {"added": i, "note": "naïve ✓"})
    return [e.id for e in store.list_audit()]


class TestAuditChain:
    def test_intact_chain_links_every_row(
        self, store: MetadataStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert store.verify_audit().to_dict() == {
            "intact": True,
            "rows": 0,
            "head_hash": GENESIS_HASH,
            "broken_id": None,
            "reason": None,
        }
        _fill(store)
        rows = store.list_audit()
        assert rows[0].prev_hash == GENESIS_HASH
        assert [r.prev_hash for r in rows[1:]] == [r.row_hash for r in rows[:-1]]
        code, report = _audit_cli(store, monkeypatch)
        assert code == 0 and report["intact"] is True and report["rows"] == 5
        assert report["head_hash"] == rows[-1].row_hash

    def test_an_edited_row_is_reported(
        self, store: MetadataStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ids = _fill(store)
        with store.engine.begin() as conn:
            conn.execute(
                text("UPDATE audit_log SET actor = 'mallory' WHERE id = :i"), {"i": ids[2]}
            )
        code, report = _audit_cli(store, monkeypatch)
        assert code == 1
        assert report["broken_id"] == ids[2] and "row_hash mismatch" in report["reason"]
        assert report["rows"] == 3

    def test_edited_details_or_time_are_reported(self, store: MetadataStore) -> None:
        ids = _fill(store)
        with store.engine.begin() as conn:
            conn.execute(
                text("UPDATE audit_log SET details = :d WHERE id = :i"),
                {"d": json.dumps({"added": 99, "note": "naïve ✓"}), "i": ids[3]},
            )
        assert (store.verify_audit().broken_id, store.verify_audit().reason) == (
            ids[3],
            "row_hash mismatch (the row was edited)",
        )
        with store.engine.begin() as conn:
            conn.execute(
                text("UPDATE audit_log SET details = :d WHERE id = :i"),
                {"d": json.dumps({"added": 2, "note": "naïve ✓"}), "i": ids[3]},
            )
        assert store.verify_audit().intact  # put back byte for byte: intact again
        later = store.list_audit()[1].created_at + timedelta(seconds=1)
        with store.engine.begin() as conn:
            conn.execute(
                audit_log_table.update()
                .where(audit_log_table.c.id == ids[1])
                .values(created_at=later)
            )
        assert store.verify_audit().broken_id == ids[1]

    def test_a_deleted_row_is_reported_at_its_successor(
        self, store: MetadataStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ids = _fill(store)
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_log WHERE id = :i"), {"i": ids[1]})
        code, report = _audit_cli(store, monkeypatch)
        assert code == 1 and report["broken_id"] == ids[2]
        assert report["reason"].startswith(f"prev_hash does not match row {ids[0]}")

    def test_deleting_the_first_rows_is_reported(self, store: MetadataStore) -> None:
        ids = _fill(store)
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_log WHERE id <= :i"), {"i": ids[1]})
        report = store.verify_audit()
        assert report.broken_id == ids[2] and "first row" in (report.reason or "")

    def test_a_recomputed_hash_still_breaks_the_next_link(self, store: MetadataStore) -> None:
        ids = _fill(store)
        row = store.list_audit()[1]
        row.actor = "mallory"
        forged = entry_hash(row)
        with store.engine.begin() as conn:
            conn.execute(
                audit_log_table.update()
                .where(audit_log_table.c.id == ids[1])
                .values(actor="mallory", row_hash=forged)
            )
        report = store.verify_audit()
        assert report.broken_id == ids[2] and "prev_hash" in (report.reason or "")

    def test_concurrent_writers_never_fork_the_chain(self, store: MetadataStore) -> None:
        writers, each = 4, 15
        barrier = threading.Barrier(writers)

        def write(w: int) -> None:
            barrier.wait()
            for i in range(each):
                store.audit("tenant.sync", "acme", f"writer-{w}", {"i": i})

        with ThreadPoolExecutor(writers) as pool:
            list(pool.map(write, range(writers)))
        report = store.verify_audit()
        assert report.intact and report.rows == writers * each
        prevs = [e.prev_hash for e in store.list_audit()]
        assert len(set(prevs)) == len(prevs)  # no two rows claim the same predecessor


class TestAuditPrune:
    def test_pruned_log_verifies_and_a_forged_prune_does_not(self, store: MetadataStore) -> None:
        ids = _fill(store)
        with store.engine.begin() as conn:  # the first two rows are a year old
            conn.execute(
                audit_log_table.update()
                .where(audit_log_table.c.id <= ids[1])
                .values(created_at=utcnow() - timedelta(days=400))
            )
        with store.engine.begin() as conn:  # re-chain them as if written then
            conn.execute(text("UPDATE audit_log SET row_hash = NULL"))
        _rechain(store)
        assert store.verify_audit().intact
        assert store.prune_audit(utcnow() - timedelta(days=365)) == 2
        report = store.verify_audit()
        assert report.intact and report.rows == len(ids) - 2 + 1
        assert store.list_audit()[-1].action == "audit.prune"
        assert store.prune_audit(utcnow() - timedelta(days=365)) == 0  # nothing older left
        # deleting the new first row without a prune row is still reported
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_log WHERE id = :i"), {"i": ids[2]})
        assert store.verify_audit().broken_id == ids[3]


def _rechain(store: MetadataStore) -> None:
    """Recompute every link (what a log written at those times would hold)."""
    prev = GENESIS_HASH
    with store.engine.begin() as conn:
        for e in store.list_audit():
            h = entry_hash(e, prev)
            conn.execute(
                audit_log_table.update()
                .where(audit_log_table.c.id == e.id)
                .values(prev_hash=prev, row_hash=h)
            )
            prev = h


class TestAuditMigration:
    def test_0004_chains_existing_rows(self, empty_db_url: str) -> None:
        store = MetadataStore(empty_db_url)
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        try:
            with store.engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, "0003")
                for i in range(3):
                    conn.execute(
                        text(
                            "INSERT INTO audit_log (action, tenant, actor, details, created_at) "
                            "VALUES ('key.create', NULL, 'cli', :d, :c)"
                        ),
                        {"d": json.dumps({"i": i}), "c": f"2026-01-0{i + 1} 00:00:00"},
                    )
            store.migrate()
            assert store.verify_audit().intact and store.verify_audit().rows == 3
            store.audit("key.revoke", None, "cli", {})
            assert store.verify_audit().rows == 4 and store.verify_audit().intact
        finally:
            store.dispose()
