"""The metadata store: one facade over the repositories of its aggregates.

One :class:`MetadataStore` per process, shared by threads. Each aggregate has its repository
(``store.tenants``, ``store.api_keys``, ``store.versions``, ``store.query_log``,
``store.feedback``, ``store.audit_log``, ``store.usage``, ``store.suppressions``,
``store.ingest_jobs``, ``store.webhook_deliveries``, ``store.data_keys`` behind
``store.keyring``, ``store.conversations``, ``store.golden_candidates``) over one
:class:`Database`
(``store.db``: engine, transactions, locks, migrations). The methods below are the store's
public interface, each one call of a repository; every one is its own transaction and returns
plain dataclasses (or :class:`rag_platform.lib.models.Principal`), never ORM objects.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from rag_platform.lib.crypto import Keyring, MasterKey, master_keys_from_settings
from rag_platform.lib.models import Principal
from rag_platform.lib.store.api_keys import ApiKeyInfo, ApiKeyRepository
from rag_platform.lib.store.audit import AuditEntry, AuditRepository, ChainReport
from rag_platform.lib.store.conversations import ConversationRepository
from rag_platform.lib.store.data_keys import DataKeyRepository
from rag_platform.lib.store.db import (
    Database,
    NotFoundError,
    create_sqlite_folder,
    normalize_database_url,
)
from rag_platform.lib.store.feedback import FeedbackEntry, FeedbackRepository
from rag_platform.lib.store.golden_candidates import GoldenCandidateRepository
from rag_platform.lib.store.ingest_jobs import IngestJobRepository
from rag_platform.lib.store.lifecycle import FailedCheck
from rag_platform.lib.store.query_log import QueryLogEntry, QueryLogRepository
from rag_platform.lib.store.schema import JSONObject
from rag_platform.lib.store.suppressions import Suppression, SuppressionRepository
from rag_platform.lib.store.tenants import TenantRepository
from rag_platform.lib.store.usage import UsageRepository
from rag_platform.lib.store.versions import IndexVersion, VersionRepository
from rag_platform.lib.store.webhook_deliveries import WebhookDeliveryRepository

if TYPE_CHECKING:
    from rag_platform.lib.index.receipt import Receipt
    from rag_platform.settings import Settings


class MetadataStore:
    """Tenants, API keys, index versions, query log, feedback, audit log and usage events.

    Args:
        url: SQLAlchemy URL: ``sqlite:///path/metadata.db`` or ``postgresql://user@host/db``
            (rewritten to ``postgresql+psycopg://``). ``sqlite://`` (in memory) shares one
            connection and suits single-threaded tests only.
        pepper: Server-side secret mixed into API-key hashes (``Settings.key_pepper``). Keys
            created under one pepper do not authenticate under another.
        master_keys: The master key (then keys that may still wrap data keys) of
            :attr:`keyring`: question and comment text is sealed with the tenant's data key.
            None or empty: stored as plaintext (sealed rows then fail to open).
        seal: Whether new text is sealed (``RAG_ENCRYPTION_AT_REST``); off, sealed rows still
            open with ``master_keys``.

    Raises:
        ValueError: For an unsupported or malformed URL, or an empty pepper.

    Database errors (``sqlalchemy.exc.OperationalError`` when the database is unreachable)
    propagate from every method except :meth:`ping`.
    """

    def __init__(
        self,
        url: str,
        pepper: str = "dev",
        master_keys: list[MasterKey] | None = None,
        seal: bool = True,
    ) -> None:
        if not pepper:
            raise ValueError("the key pepper must not be empty")
        self.db = Database(url)
        self.data_keys = DataKeyRepository(self.db)
        self.keyring = Keyring(self.data_keys, master_keys or [], seal=seal)
        self.tenants = TenantRepository(self.db)
        self.api_keys = ApiKeyRepository(self.db, pepper)
        self.versions = VersionRepository(self.db)
        self.query_log = QueryLogRepository(self.db, self.keyring)
        self.feedback = FeedbackRepository(self.db, self.keyring)
        self.audit_log = AuditRepository(self.db)
        self.usage = UsageRepository(self.db)
        self.suppressions = SuppressionRepository(self.db)
        self.ingest_jobs = IngestJobRepository(self.db)
        self.webhook_deliveries = WebhookDeliveryRepository(self.db)
        self.conversations = ConversationRepository(self.db, self.keyring)
        self.golden_candidates = GoldenCandidateRepository(self.db, self.keyring)

    @classmethod
    def from_settings(cls, settings: Settings) -> MetadataStore:
        """The store configured by ``settings.resolved_database_url``, ``key_pepper`` and the
        master key (:func:`rag_platform.lib.crypto.master_keys_from_settings`: none when
        ``RAG_ENCRYPTION_AT_REST`` is off; the key file is generated on first use).

        Creates the parent folder of a SQLite database file. Does not migrate.

        Raises:
            ValueError: For an unsupported or malformed URL, an empty pepper, or a master key
                that is not base64 of 32 bytes.
        """
        url = normalize_database_url(settings.resolved_database_url)
        create_sqlite_folder(url)
        return cls(
            url,
            pepper=settings.key_pepper,
            master_keys=master_keys_from_settings(settings),
            seal=settings.encryption_at_rest,
        )

    @property
    def url(self) -> str:
        """The normalized database URL."""
        return self.db.url

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tests and tooling)."""
        return self.db.engine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.db.dialect

    # Lifecycle: Database -------------------------------------------------------------------

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision; see :meth:`Database.migrate`."""
        self.db.migrate()

    def ping(self) -> bool:
        """Whether the database answers within 2-3 s; never raises (:meth:`Database.ping`)."""
        return self.db.ping()

    def dispose(self) -> None:
        """Close every pooled connection (call before the process exits or forks)."""
        self.db.dispose()

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    # Tenants: TenantRepository -------------------------------------------------------------

    def upsert_tenant(self, tenant_id: str, name: str = "") -> None:
        """Create the tenant or rename it; see :meth:`TenantRepository.upsert`."""
        self.tenants.upsert(tenant_id, name)

    def list_tenants(self) -> list[str]:
        """Tenant ids, sorted."""
        return self.tenants.find()

    def tenant_exists(self, tenant_id: str) -> bool:
        """Whether the tenant is known; see :meth:`TenantRepository.exists`."""
        return self.tenants.exists(tenant_id)

    # API keys: ApiKeyRepository ------------------------------------------------------------

    def create_api_key(
        self,
        tenant: str,
        groups: list[str],
        role: str = "reader",
        expires_at: datetime | None = None,
        name: str = "",
        actor: str = "cli",
    ) -> tuple[ApiKeyInfo, str]:
        """Create a key, returning ``(info, plaintext)``; see :meth:`ApiKeyRepository.create`."""
        return self.api_keys.create(tenant, groups, role, expires_at, name, actor)

    def authenticate(self, plaintext: str) -> Principal | None:
        """The principal of an active key, or None; see :meth:`ApiKeyRepository.authenticate`."""
        return self.api_keys.authenticate(plaintext)

    def revoke_api_key(self, key_id: str, actor: str = "cli") -> bool:
        """Revoke a key; False if unknown or revoked; see :meth:`ApiKeyRepository.revoke`."""
        return self.api_keys.revoke(key_id, actor)

    def list_api_keys(self, tenant: str | None = None) -> list[ApiKeyInfo]:
        """Keys (revoked and expired included), oldest first; never the hash."""
        return self.api_keys.find(tenant)

    # Index versions: VersionRepository -----------------------------------------------------

    def register_version(
        self,
        tenant: str,
        version: str,
        path: str,
        documents: int,
        chunks: int,
        config_hash: str,
        details: JSONObject | None = None,
        actor: str = "pipeline",
    ) -> IndexVersion:
        """Record a new version as ``building``; see :meth:`VersionRepository.register`."""
        return self.versions.register(
            tenant, version, path, documents, chunks, config_hash, details, actor
        )

    def mark_version_built(
        self, tenant: str, version: str, details: JSONObject | None = None, actor: str = "pipeline"
    ) -> IndexVersion:
        """``building → built``; see :meth:`VersionRepository.mark_built`."""
        return self.versions.mark_built(tenant, version, details, actor)

    def reject_version(
        self, tenant: str, version: str, failed_checks: list[FailedCheck], actor: str = "pipeline"
    ) -> IndexVersion:
        """``building|built → rejected`` with the failed checks; see
        :meth:`VersionRepository.reject`."""
        return self.versions.reject(tenant, version, failed_checks, actor)

    def delete_version(self, tenant: str, version: str, actor: str = "pipeline") -> IndexVersion:
        """``built|retired|rejected → deleted``; see :meth:`VersionRepository.delete`."""
        return self.versions.delete(tenant, version, actor)

    def set_version_details(self, tenant: str, version: str, details: JSONObject) -> IndexVersion:
        """Merge into a version's details; see :meth:`VersionRepository.set_details`."""
        return self.versions.set_details(tenant, version, details)

    def publish_version(self, tenant: str, version: str, actor: str = "pipeline") -> IndexVersion:
        """Serve a ``built`` version, atomically; see :meth:`VersionRepository.publish`."""
        return self.versions.publish(tenant, version, actor)

    def rollback(
        self, tenant: str, to_version: str | None = None, actor: str = "cli"
    ) -> IndexVersion:
        """Serve a previously published version again; see :meth:`VersionRepository.rollback`."""
        return self.versions.rollback(tenant, to_version, actor)

    def get_receipt(self, tenant: str, version: str | None = None) -> Receipt | None:
        """The reconciliation receipt stored in a version's details (``details["receipt"]``).

        Args:
            tenant: Tenant id.
            version: The version; default: the published one.

        Returns:
            The receipt, or None when the version has none.

        Raises:
            NotFoundError: The version does not exist, or none is published.
        """
        from rag_platform.lib.index.receipt import Receipt

        found = (
            self.versions.get_published(tenant)
            if version is None
            else self.versions.get(tenant, version)
        )
        if found is None:
            what = "published index version" if version is None else f"index version {version!r}"
            raise NotFoundError(f"no {what} for tenant {tenant!r}")
        stored = found.details.get("receipt")
        return Receipt.from_dict(stored) if isinstance(stored, dict) else None

    def get_published_version(self, tenant: str) -> IndexVersion | None:
        """The version the API serves for ``tenant``, or None."""
        return self.versions.get_published(tenant)

    def get_version(self, tenant: str, version: str) -> IndexVersion | None:
        """One version, or None."""
        return self.versions.get(tenant, version)

    def list_versions(self, tenant: str) -> list[IndexVersion]:
        """All versions of ``tenant``, newest first (every status, ``deleted`` included)."""
        return self.versions.find(tenant)

    # Encryption at rest: Keyring over DataKeyRepository -----------------------------------

    def seal_text(self, tenant: str, text: str, purpose: str) -> str:
        """``text`` sealed with the tenant's data key for ``purpose`` (unchanged when
        encryption is disabled); see :class:`rag_platform.lib.crypto.Keyring`."""
        return self.keyring.seal_text(tenant, text, purpose)

    def open_text(self, tenant: str, text: str, purpose: str) -> str:
        """The plaintext of text sealed by :meth:`seal_text` (plain text as it is).

        Raises:
            rag_platform.lib.crypto.SealedDataError: wrong tenant or purpose, tampered, or
                the data key destroyed (:class:`~rag_platform.lib.crypto.KeyDestroyedError`).
        """
        return self.keyring.open_text(tenant, text, purpose)

    # Query log and feedback: QueryLogRepository, FeedbackRepository ------------------------

    def log_queries(self, entries: list[QueryLogEntry]) -> int:
        """Append query-log rows, skipping known ids; see :meth:`QueryLogRepository.append`."""
        return self.query_log.append(entries)

    def get_query(self, query_id: str) -> QueryLogEntry | None:
        """One query-log row, or None."""
        return self.query_log.get(query_id)

    def list_queries(
        self, tenant: str, since: datetime | None = None, until: datetime | None = None
    ) -> list[QueryLogEntry]:
        """The tenant's queries with ``since <= created_at < until``, oldest first."""
        return self.query_log.find(tenant, since, until)

    def add_feedback(
        self,
        query_id: str,
        tenant: str,
        key_id: str,
        rating: int,
        type: str,
        comment: str = "",
    ) -> str:
        """Rate a logged query, returning the feedback id; see :meth:`FeedbackRepository.add`."""
        return self.feedback.add(query_id, tenant, key_id, rating, type, comment)

    def list_feedback(self, tenant: str, query_id: str | None = None) -> list[FeedbackEntry]:
        """The tenant's feedback (optionally for one query), oldest first."""
        return self.feedback.find(tenant, query_id)

    # Audit and usage: AuditRepository, UsageRepository -------------------------------------

    def audit(self, action: str, tenant: str | None, actor: str, details: JSONObject) -> None:
        """Append an audit row; see :meth:`AuditRepository.append`."""
        self.audit_log.append(action, tenant, actor, details)

    def list_audit(self, tenant: str | None = None, action: str | None = None) -> list[AuditEntry]:
        """Audit rows in the order written (oldest first), optionally for one tenant/action."""
        return self.audit_log.find(tenant, action)

    def prune_audit(self, before: datetime, actor: str = "retention") -> int:
        """Delete audit rows older than ``before``, keeping the chain verifiable; see
        :meth:`AuditRepository.prune`."""
        return self.audit_log.prune(before, actor)

    def verify_audit(self) -> ChainReport:
        """Check the audit log's hash chain; see :meth:`AuditRepository.verify`."""
        return self.audit_log.verify()

    def record_usage(
        self,
        tenant: str,
        kind: str,
        quantity: float,
        run_id: str = "",
        at: datetime | None = None,
    ) -> None:
        """Record a metered quantity; see :meth:`UsageRepository.record`."""
        self.usage.record(tenant, kind, quantity, run_id, at)

    def usage_by_day(self, tenant: str, day: date) -> dict[str, float]:
        """Usage of ``tenant`` on UTC day ``day`` per kind; see :meth:`UsageRepository.by_day`."""
        return self.usage.by_day(tenant, day)

    def llm_tokens(self, tenant: str, since: datetime, until: datetime | None = None) -> int:
        """LLM tokens ``tenant`` spent in ``[since, until)``; see
        :meth:`UsageRepository.llm_tokens`."""
        return self.usage.llm_tokens(tenant, since, until)

    # Erased documents: SuppressionRepository -------------------------------------------------

    def suppress_document(
        self,
        tenant: str,
        doc_id: str,
        source_id: str = "",
        uri: str = "",
        reason: str = "",
        actor: str = "cli",
    ) -> Suppression:
        """Put a document on the suppression list; see :meth:`SuppressionRepository.add`."""
        return self.suppressions.add(tenant, doc_id, source_id, uri, reason, actor)

    def release_document(self, tenant: str, doc_id: str, actor: str = "cli") -> bool:
        """Lift a suppression; see :meth:`SuppressionRepository.release`."""
        return self.suppressions.release(tenant, doc_id, actor)

    def suppressed_doc_ids(self, tenant: str) -> frozenset[str]:
        """Ids of the tenant's suppressed (erased, not released) documents."""
        return self.suppressions.doc_ids(tenant)

    def list_suppressions(self, tenant: str) -> list[Suppression]:
        """The tenant's suppressed documents, oldest first."""
        return self.suppressions.find(tenant)
