"""Retention: deletes a tenant's records older than its policy (``TenantConfig.retention``).

:class:`RetentionSweep` runs once per tenant and day (the ``daily_retention`` schedule of
``defs/lifecycle``; the asset ``retention_sweep`` reports its counts as metadata). Kinds:

- ``query_log``: query-log rows older than ``query_log_days``, with the feedback on them
  (``feedback_on_deleted_queries``);
- ``feedback``: feedback rows older than ``feedback_days``;
- ``conversations``: conversations not updated for ``conversations_days``, with their
  messages (``conversation_messages``);
- ``audit_log``: the audit log is one hash chain for the whole platform (``rag-platform audit
  verify``), so retention deletes only its oldest rows: those older than the tenant's
  ``audit_log_days`` *and* every other tenant's (``chain_audit_days``), through
  :meth:`~rag_platform.lib.store.audit.AuditRepository.prune`, which anchors the chain in an
  ``audit.prune`` row so it still verifies;
- ``quarantine``: the records of a stage's quarantine file (``quarantine_<stage>.json``) that
  no run has rewritten for ``quarantine_days``;
- ``retired_versions``: retired index versions beyond the ``RAG_VERSIONS_KEPT`` rollback
  targets (garbage collection), and, with ``retired_versions_days`` set, retired versions whose
  last publish is older than that even if they are rollback targets. A version a reader holds
  open is left for the next sweep.

Each sweep writes one audit row (``retention.sweep``) with its counts and cut-offs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from rag_platform.lib.index.backend import IndexBackend
from rag_platform.lib.index.versions import IndexVersions
from rag_platform.lib.store import MetadataStore
from rag_platform.lib.tenants import TenantConfig
from rag_platform.settings import Settings

log = logging.getLogger(__name__)

#: The kinds a sweep reports, in report order.
RETENTION_KINDS = (
    "query_log",
    "feedback_on_deleted_queries",
    "feedback",
    "conversations",
    "conversation_messages",
    "audit_log",
    "quarantine",
    "retired_versions",
)


@dataclass
class RetentionResult:
    """What one sweep of one tenant deleted.

    Attributes:
        tenant: tenant id.
        at: the sweep's reference time (UTC); cut-offs are ``at - days``.
        deleted: kind → rows, records or versions deleted (every kind of
            :data:`RETENTION_KINDS`).
        cutoffs: kind → the cut-off applied (ISO 8601), for the kinds with one.
        deleted_versions: names of the index versions deleted.
    """

    tenant: str
    at: datetime
    deleted: dict[str, int]
    cutoffs: dict[str, str]
    deleted_versions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "tenant": self.tenant,
            "at": self.at.isoformat(),
            "deleted": dict(self.deleted),
            "cutoffs": dict(self.cutoffs),
            "deleted_versions": list(self.deleted_versions),
        }


class RetentionSweep:
    """Applies a tenant's retention policy.

    Args:
        settings: platform settings (tenant state folders, ``versions_kept``, reports).
        store: the metadata store (migrated).
        backend: the index backend (to delete retired versions).
    """

    def __init__(self, settings: Settings, store: MetadataStore, backend: IndexBackend) -> None:
        self.settings = settings
        self.store = store
        self.backend = backend

    def run(
        self,
        tenant: TenantConfig,
        now: datetime | None = None,
        chain_audit_days: int | None = None,
    ) -> RetentionResult:
        """Deletes what the tenant's policy no longer keeps (see the module docstring).

        Args:
            tenant: the tenant's configuration (its ``retention`` policy).
            now: the reference time; default: now (UTC).
            chain_audit_days: the longest ``audit_log_days`` of every tenant of the registry
                (audit rows are pruned only when no tenant keeps them); None: this tenant's.

        Returns:
            The counts per kind; also written to the audit log (``retention.sweep``).
        """
        policy = tenant.retention
        now = now or datetime.now(UTC)
        cut = {
            "query_log": now - timedelta(days=policy.query_log_days),
            "feedback": now - timedelta(days=policy.feedback_days),
            "conversations": now - timedelta(days=policy.conversations_days),
            "audit_log": now - timedelta(days=max(policy.audit_log_days, chain_audit_days or 0)),
            "quarantine": now - timedelta(days=policy.quarantine_days),
        }
        if policy.retired_versions_days is not None:
            cut["retired_versions"] = now - timedelta(days=policy.retired_versions_days)
        deleted = dict.fromkeys(RETENTION_KINDS, 0)
        tid = tenant.id
        deleted["query_log"], deleted["feedback_on_deleted_queries"] = self.store.query_log.delete(
            tid, before=cut["query_log"]
        )
        deleted["feedback"] = self.store.feedback.delete(tid, before=cut["feedback"])
        deleted["conversations"], deleted["conversation_messages"] = (
            self.store.conversations.delete(tid, before=cut["conversations"])
        )
        deleted["audit_log"] = self.store.audit_log.prune(cut["audit_log"], actor="retention")
        deleted["quarantine"] = self._expire_quarantine(tid, cut["quarantine"])
        versions = self._expire_versions(tid, cut.get("retired_versions"))
        deleted["retired_versions"] = len(versions)
        result = RetentionResult(
            tid, now, deleted, {k: v.isoformat() for k, v in cut.items()}, versions
        )
        self.store.audit("retention.sweep", tid, "retention", result.to_dict())
        return result

    def _expire_quarantine(self, tenant: str, cutoff: datetime) -> int:
        removed = 0
        state_dir = self.settings.cache_dir / tenant
        for path in sorted(state_dir.glob("quarantine_*.json")):
            modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            if modified >= cutoff:
                continue
            try:
                records = json.loads(path.read_text("utf-8"))
            except (OSError, ValueError):
                records = []
            path.unlink(missing_ok=True)
            removed += len(records) if isinstance(records, list) else 0
        return removed

    def _expire_versions(self, tenant: str, cutoff: datetime | None) -> list[str]:
        published = self.store.get_published_version(tenant)
        if published is None:
            return []
        versions = IndexVersions(
            self.store, self.backend, self.settings.reports_dir, self.settings.versions_kept
        )
        before = {v.version for v in self.store.list_versions(tenant) if v.status != "deleted"}
        versions.collect_garbage(tenant, published.version, actor="retention")
        if cutoff is not None:
            for v in self.store.list_versions(tenant):
                last_served = v.published_at or v.created_at
                if v.status == "retired" and last_served < cutoff:
                    gone = self.backend.delete(tenant, v.version)
                    if gone or not self.backend.exists(v.path):
                        self.store.delete_version(tenant, v.version, actor="retention")
                    else:
                        log.info("retired version %s of %s is in use; kept", v.version, tenant)
        after = {v.version for v in self.store.list_versions(tenant) if v.status != "deleted"}
        return sorted(before - after)
