"""The metadata store (SQLite by default, PostgreSQL when the URL says so).

Usage::

    store = MetadataStore.from_settings(get_settings())
    store.migrate()
    info, plaintext = store.create_api_key("scifact", ["all"])
    principal = store.authenticate(plaintext)

Modules: ``db`` (engine, transactions, locks, migrations), ``schema`` (the tables), ``rows``
(the one row ↔ dataclass mapping), one repository per aggregate (``tenants``, ``api_keys`` with
``keys`` for the key format and hash, ``versions`` with ``lifecycle`` for the allowed status
transitions, ``query_log``, ``feedback``, ``audit``, ``usage``), and ``store``
(:class:`MetadataStore`, the facade over them).
"""

from rag_platform.lib.store.api_keys import ApiKeyInfo
from rag_platform.lib.store.audit import AuditEntry
from rag_platform.lib.store.db import NotFoundError, normalize_database_url
from rag_platform.lib.store.feedback import FeedbackEntry
from rag_platform.lib.store.keys import generate_api_key, hash_secret, parse_api_key, verify_secret
from rag_platform.lib.store.lifecycle import (
    TRANSITIONS,
    FailedCheck,
    TransitionErrorCode,
    VersionTransitionError,
)
from rag_platform.lib.store.query_log import QueryLogEntry
from rag_platform.lib.store.schema import ROLES, USAGE_KINDS, VERSION_STATUSES
from rag_platform.lib.store.store import MetadataStore
from rag_platform.lib.store.versions import IndexVersion

__all__ = [
    "ROLES",
    "TRANSITIONS",
    "USAGE_KINDS",
    "VERSION_STATUSES",
    "ApiKeyInfo",
    "AuditEntry",
    "FailedCheck",
    "FeedbackEntry",
    "IndexVersion",
    "MetadataStore",
    "NotFoundError",
    "QueryLogEntry",
    "TransitionErrorCode",
    "VersionTransitionError",
    "generate_api_key",
    "hash_secret",
    "normalize_database_url",
    "parse_api_key",
    "verify_secret",
]
