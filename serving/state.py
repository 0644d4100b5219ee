"""The per-process services of the API, wired together.

One ``ServingState`` lives on ``app.state.serving`` from startup to shutdown (see
``serving.main.lifespan``). It only composes components that each own their lock:

- :class:`~serving.models.Models`: embedder, batching query embedder, sparse encoder, answerer,
  per-tenant PII maskers;
- :class:`~serving.registry.RegistryWatcher`: ``tenants.yaml``, reloaded within a second;
- :class:`~serving.versions.PublishedVersions`: the one-second memo of each tenant's published
  version, and one (:class:`~serving.versions.TenantMemo`) of its erased documents;
- :class:`~serving.retrievers.Retrievers`: the index backend (Qdrant Edge shard pool, or the
  Qdrant server) and a retriever per open version;
- the query cache, the rate limiter, the concurrent-stream slots, the token budgets and the
  :class:`~serving.querylog.QueryLogWriter`;
- the :class:`~rag_platform.lib.auth.oidc.OidcVerifier` when single sign-on is configured.
"""

from __future__ import annotations

import logging

from rag_platform.lib.auth.oidc import OidcConfig, OidcVerifier
from rag_platform.lib.index.backend import IndexBackend, open_backend
from rag_platform.lib.store import IndexVersion, MetadataStore
from rag_platform.lib.tenants import TenantRegistry
from rag_platform.settings import Settings
from serving.budgets import TokenBudgets
from serving.cache import MemoryQueryCache, RedisQueryCache, make_cache
from serving.models import Models
from serving.observability import Metrics, RoutingMetrics
from serving.querylog import QueryLogWriter, QueryRecord
from serving.ratelimit import RateLimiter, StreamSlots
from serving.registry import RegistryWatcher
from serving.retrievers import Retrievers
from serving.services.ingest import IngestService
from serving.versions import PublishedVersions, TenantMemo

logger = logging.getLogger("serving.state")

#: What a question is logged as when masking it fails.
MASKING_FAILED = "<masking failed>"


class ServingState:
    """The API's long-lived services.

    Args:
        settings: platform settings.
        store: the metadata store; default ``MetadataStore.from_settings(settings)``.
        backend: the index backend; default ``open_backend(settings)`` (Qdrant Edge with a new
            shard pool, or the Qdrant server of ``RAG_QDRANT_URL``).
        metrics: the app's metrics.
        version_ttl_seconds: how long a published-version lookup is reused.
        registry: a fixed tenant registry; default ``settings.tenants_file``, reloaded on change.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: MetadataStore | None = None,
        backend: IndexBackend | None = None,
        metrics: Metrics | None = None,
        version_ttl_seconds: float = 1.0,
        registry: TenantRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store = store if store is not None else MetadataStore.from_settings(settings)
        self.models = Models(settings, lambda tenant: RoutingMetrics(self.metrics, tenant))
        self.tenants = RegistryWatcher(
            settings.tenants_file, settings.data_dir, self._tenants_changed, registry=registry
        )
        self.ingest = IngestService(settings, lambda: self.store, lambda: self.tenants.registry)
        # the lambdas look the store up on every call: a replaced store is used at once
        self.versions = PublishedVersions(
            lambda tenant: self.store.get_published_version(tenant), version_ttl_seconds
        )
        self.erased = TenantMemo(
            lambda tenant: self.store.suppressed_doc_ids(tenant), version_ttl_seconds
        )
        self.retrievers = Retrievers(
            backend if backend is not None else open_backend(settings),
            self.models,
            self.tenants.retrieval_settings,
        )
        self.cache: MemoryQueryCache | RedisQueryCache = make_cache(
            settings.redis_url, settings.cache_ttl_seconds
        )
        self.limiter = RateLimiter(
            settings.rate_limit_per_key, settings.rate_limit_per_tenant, settings.redis_url
        )
        self.streams = StreamSlots(
            settings.max_streams_per_key,
            settings.max_streams_per_tenant,
            settings.redis_url,
            lease_seconds=max(60.0, 4 * settings.stream_heartbeat_seconds),
        )
        self.budgets = TokenBudgets(lambda tenant, since: self.store.llm_tokens(tenant, since))
        self.query_log = QueryLogWriter(
            lambda entries: self.store.log_queries(entries),
            self.mask_question,
            settings.home / "spool" / "query_log.jsonl",
            on_failure=self.metrics.query_log_failures.inc,
        )
        self.metrics.query_log_pending.set_function(lambda: self.query_log.pending)
        self.oidc: OidcVerifier | None = None
        if settings.oidc_enabled:
            assert settings.oidc_issuer and settings.oidc_audience and settings.oidc_jwks_url
            self.oidc = OidcVerifier(
                OidcConfig(
                    issuer=settings.oidc_issuer,
                    audience=settings.oidc_audience,
                    jwks_url=settings.oidc_jwks_url,
                    tenant_claim=settings.oidc_tenant_claim,
                    groups_claim=settings.oidc_groups_claim,
                    role_claim=settings.oidc_role_claim,
                    leeway_seconds=settings.oidc_leeway_seconds,
                    jwks_cache_seconds=settings.oidc_jwks_cache_seconds,
                    jwks_refresh_cooldown_seconds=settings.oidc_jwks_refresh_cooldown_seconds,
                ),
                lambda tenant: self.store.tenant_exists(tenant),
            )

    @property
    def backend(self) -> IndexBackend:
        """The index backend the open versions are read through."""
        return self.retrievers.backend

    def _tenants_changed(self, tenants: list[str]) -> None:
        self.models.forget_tenants(tenants)
        self.retrievers.forget(tenants)

    def published_version(self, tenant: str) -> IndexVersion | None:
        """The tenant's published index version (a store look-up reused for up to 1 s).

        Raises:
            Exception: whatever the store raises when the database is down.
        """
        return self.versions.get(tenant)

    def erased_doc_ids(self, tenant: str) -> frozenset[str]:
        """Ids of the tenant's erased documents, excluded from every search (a store look-up
        reused for up to 1 s).

        Raises:
            Exception: whatever the store raises when the database is down.
        """
        return self.erased.get(tenant)

    def mask_question(self, tenant: str, question: str) -> str:
        """The question with the tenant's PII policy applied; :data:`MASKING_FAILED` if masking
        fails (never raises: the query-log writer calls it)."""
        try:
            return self.models.masker(tenant, self.tenants.pii_policy(tenant)).run(question).text
        except Exception as exc:
            logger.error(
                "masking the question failed; logging a placeholder",
                extra={"error": type(exc).__name__, "tenant": tenant},
            )
            return MASKING_FAILED

    def log_query(self, record: QueryRecord) -> None:
        """Hands ``record`` to the query-log writer (masked and written in the background)."""
        self.query_log.submit(record)

    def flush_query_log(self, timeout: float = 5.0) -> bool:
        """Waits for the query-log rows submitted so far; True when all are written."""
        return self.query_log.flush(timeout)

    def warm_up(self) -> None:
        """Loads the embedding model and the PII maskers of registered tenants (and the default
        policy), so the first requests and their query-log writes stay fast."""
        self.models.query_embedder.embed_query("warm up")
        self.models.sparse_encoder.encode_query("warm up")
        for tenant in [*self.tenants.registry.ids, ""]:
            self.mask_question(tenant, "warm up")

    def close(self) -> None:
        """Flushes the query log (what cannot be written goes to ``<home>/spool``), stops the
        models' workers and lets go of every open index version, the cache and the store."""
        self.query_log.close()
        self.models.close()
        self.ingest.close()
        try:
            self.retrievers.close()
        except Exception as exc:
            logger.warning("closing the index readers failed", extra={"error": str(exc)})
        if isinstance(self.cache, RedisQueryCache):
            self.cache.close()
        self.streams.close()
        self.store.dispose()
