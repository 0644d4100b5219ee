"""The metadata store (SQLite by default, PostgreSQL when the URL says so).

Usage::

    store = MetadataStore.from_settings(get_settings())
    store.migrate()
    info, plaintext = store.create_api_key("scifact", ["all"])
    principal = store.authenticate(plaintext)
"""

from rag_platform.lib.store.keys import generate_api_key, hash_secret, parse_api_key, verify_secret
from rag_platform.lib.store.schema import ROLES, USAGE_KINDS, VERSION_STATUSES
from rag_platform.lib.store.store import (
    ApiKeyInfo,
    AuditEntry,
    FeedbackEntry,
    IndexVersion,
    MetadataStore,
    NotFoundError,
    QueryLogEntry,
    normalize_database_url,
)

__all__ = [
    "ROLES",
    "USAGE_KINDS",
    "VERSION_STATUSES",
    "ApiKeyInfo",
    "AuditEntry",
    "FeedbackEntry",
    "IndexVersion",
    "MetadataStore",
    "NotFoundError",
    "QueryLogEntry",
    "generate_api_key",
    "hash_secret",
    "normalize_database_url",
    "parse_api_key",
    "verify_secret",
]
