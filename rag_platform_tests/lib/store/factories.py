"""Constants and row builders shared by the metadata-store tests."""

from __future__ import annotations

from typing import Any

from rag_platform.lib.store import MetadataStore, QueryLogEntry

PEPPER = "test-pepper"
TABLES = {
    "tenants",
    "api_keys",
    "index_versions",
    "query_log",
    "feedback",
    "audit_log",
    "usage_events",
    "document_suppressions",
    "conversations",
    "conversation_messages",
    "golden_candidates",
}


def query_entry(tenant: str = "acme", **kw: Any) -> QueryLogEntry:
    """A query-log entry of ``tenant`` with a masked question; ``kw`` overrides fields."""
    kw = {"key_id": "0123456789ab", "question_masked": "q <PERSON>", **kw}
    return QueryLogEntry(tenant=tenant, **kw)


def log_query(store: MetadataStore, tenant: str = "acme", **kw: Any) -> str:
    """Log one new :func:`query_entry` through ``store.log_queries``; returns its query id."""
    entry = query_entry(tenant, **kw)
    assert store.log_queries([entry]) == 1
    return entry.query_id
