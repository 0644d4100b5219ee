"""The per-process services of the API: metadata store, shard pool, retrievers, cache, limits.

One ``ServingState`` lives on ``app.state.serving`` from startup to shutdown (see
``serving.main.lifespan``). Everything here is thread-safe: sync route handlers run in
Starlette's thread pool and share it.

Version switching without restart: :meth:`ServingState.published_version` reads the tenant's
published version from the store at most once per ``version_ttl_seconds`` (1 s); a request opens
that version through the :class:`ShardPool` (refcounted: an old version closes once its last
request finishes), so a request sees the old version or the new one, never a mix.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cachetools import TTLCache

from rag_platform.lib.embedding import (
    BatchingQueryEmbedder,
    Embedder,
    SparseEncoder,
    get_embedder,
    get_sparse_encoder,
)
from rag_platform.lib.index.pool import ShardPool
from rag_platform.lib.rag import build_answerer, build_retriever
from rag_platform.lib.retrieval import Retriever
from rag_platform.lib.store import IndexVersion, MetadataStore
from rag_platform.lib.tenants import PIIPolicy, RetrievalSettings, TenantRegistry, load_registry
from rag_platform.settings import Settings
from serving.cache import MemoryQueryCache, RedisQueryCache, make_cache
from serving.observability import Metrics
from serving.querylog import QueryLogWriter, QueryRecord
from serving.ratelimit import RateLimiter

__all__ = ["QueryRecord", "ServingState"]

logger = logging.getLogger("serving.state")

_MISSING = object()


class ServingState:
    """Holds and lazily builds the API's long-lived services.

    Args:
        settings: platform settings.
        store: the metadata store; default ``MetadataStore.from_settings(settings)``.
        pool: the shard pool; default a new ``ShardPool()``.
        metrics: the app's metrics.
        version_ttl_seconds: how long a published-version lookup is reused.
        registry: the tenant registry; default loaded from ``settings.tenants_file``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: MetadataStore | None = None,
        pool: ShardPool | None = None,
        metrics: Metrics | None = None,
        version_ttl_seconds: float = 1.0,
        registry: TenantRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store = store if store is not None else MetadataStore.from_settings(settings)
        self.pool = pool if pool is not None else ShardPool()
        self._registry_lock = threading.Lock()
        self._registry_reloads = registry is None  # a registry passed in is fixed
        self._registry_stamp: tuple[int, int] | None = None
        self._registry_checked = time.monotonic()
        if registry is None:
            self._registry_stamp = self._tenants_file_stamp()
            try:
                registry = load_registry(settings.tenants_file, settings.data_dir)
            except Exception as exc:  # a bad registry must not keep the API down
                logger.error(
                    "cannot load the tenant registry; using defaults", extra={"error": str(exc)}
                )
                registry = TenantRegistry()
        self._registry = registry
        self.cache: MemoryQueryCache | RedisQueryCache = make_cache(
            settings.redis_url, settings.cache_ttl_seconds
        )
        self.limiter = RateLimiter(
            settings.rate_limit_per_key, settings.rate_limit_per_tenant, settings.redis_url
        )
        self._versions: TTLCache[str, Any] = TTLCache(maxsize=10_000, ttl=version_ttl_seconds)
        self._versions_lock = threading.Lock()
        self._retrievers: dict[tuple[str, str], tuple[Any, Retriever]] = {}
        self._retrievers_lock = threading.Lock()
        self._maskers: dict[str, Any] = {}
        self._maskers_lock = threading.Lock()
        self._answerer: Any = None
        self._answerer_lock = threading.Lock()
        self._query_embedder: BatchingQueryEmbedder | None = None
        self._query_embedder_lock = threading.Lock()
        self.query_log = QueryLogWriter(
            lambda entries: self.store.log_queries(entries),
            self.mask_question,
            settings.home / "spool" / "query_log.jsonl",
            on_failure=self.metrics.query_log_failures.inc,
        )
        self.metrics.query_log_pending.set_function(lambda: self.query_log.pending)

    # -- models --------------------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        """The process-wide dense embedder (loaded on first use)."""
        return get_embedder()

    @property
    def query_embedder(self) -> BatchingQueryEmbedder:
        """Embeds the queries of concurrent requests together (see ``BatchingQueryEmbedder``)."""
        if self._query_embedder is None:
            with self._query_embedder_lock:
                if self._query_embedder is None:
                    self._query_embedder = BatchingQueryEmbedder(
                        self.embedder, self.settings.query_batch_size
                    )
        return self._query_embedder

    @property
    def sparse_encoder(self) -> SparseEncoder:
        return get_sparse_encoder()

    @property
    def uses_llm(self) -> bool:
        """Whether answers come from the configured LLM endpoint (base URL and model set)."""
        return bool(self.settings.llm_base_url and self.settings.llm_model)

    @property
    def answerer(self) -> Any:
        """``LLMAnswerer`` when an LLM endpoint is configured, else ``ExtractiveAnswerer``."""
        if self._answerer is None:
            with self._answerer_lock:
                if self._answerer is None:
                    self._answerer = build_answerer(self.settings, self.embedder)
        return self._answerer

    def warm_up(self) -> None:
        """Loads the embedding model and the PII maskers of registered tenants (and the default
        policy), so the first requests and their query-log writes stay fast."""
        self.query_embedder.embed_query("warm up")
        self.sparse_encoder.encode_query("warm up")
        for tenant in [*self.registry.ids, ""]:
            self.mask_question(tenant, "warm up")

    # -- tenants -------------------------------------------------------------------------------
    @property
    def registry(self) -> TenantRegistry:
        """The tenant registry, re-read when ``settings.tenants_file`` changes (checked at most
        once a second), so new tenants and changed retrieval or PII settings apply without a
        restart. A file that does not load is logged and the previous registry kept."""
        if self._registry_reloads and time.monotonic() - self._registry_checked >= 1.0:
            self._reload_registry()
        return self._registry

    def _tenants_file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.settings.tenants_file.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _reload_registry(self) -> None:
        with self._registry_lock:
            if time.monotonic() - self._registry_checked < 1.0:
                return
            self._registry_checked = time.monotonic()
            stamp = self._tenants_file_stamp()
            if stamp == self._registry_stamp:
                return
            self._registry_stamp = stamp
            try:
                new = load_registry(self.settings.tenants_file, self.settings.data_dir)
            except Exception as exc:
                logger.error(
                    "the changed tenant registry does not load; keeping the previous",
                    extra={"error": str(exc)},
                )
                return
            old = self._registry
            self._registry = new
        changed = [
            t
            for t in set(old.ids) | set(new.ids)
            if (old.get(t) if t in old.ids else None) != (new.get(t) if t in new.ids else None)
        ]
        with self._maskers_lock:
            for t in changed:
                self._maskers.pop(t, None)
        with self._retrievers_lock:
            for key in [k for k in self._retrievers if k[0] in changed]:
                del self._retrievers[key]
        logger.info("tenant registry reloaded", extra={"changed_tenants": sorted(changed)})

    def retrieval_settings(self, tenant: str) -> RetrievalSettings:
        try:
            return self.registry.get(tenant).retrieval
        except KeyError:
            return RetrievalSettings()

    def pii_policy(self, tenant: str) -> PIIPolicy:
        try:
            return self.registry.get(tenant).pii
        except KeyError:
            return PIIPolicy()

    # -- index versions ------------------------------------------------------------------------
    def published_version(self, tenant: str) -> IndexVersion | None:
        """The tenant's published index version (store look-up reused for up to 1 s).

        Raises:
            Exception: whatever the store raises when the database is down.
        """
        with self._versions_lock:
            cached = self._versions.get(tenant, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[no-any-return]
        version = self.store.get_published_version(tenant)
        with self._versions_lock:
            self._versions[tenant] = version
        return version

    def memoized_published_version(self, tenant: str) -> tuple[bool, IndexVersion | None]:
        """``(True, version)`` when the last store look-up is under a second old, else
        ``(False, None)``; never touches the store."""
        with self._versions_lock:
            cached = self._versions.get(tenant, _MISSING)
        if cached is _MISSING:
            return False, None
        return True, cached  # type: ignore[return-value]

    def invalidate_version(self, tenant: str) -> None:
        """Forgets the cached published version of ``tenant`` (after a rollback here)."""
        with self._versions_lock:
            self._versions.pop(tenant, None)

    @contextmanager
    def open_retriever(self, version: IndexVersion) -> Iterator[Retriever]:
        """A retriever over ``version``, holding the shard open for the ``with`` block.

        The shard comes from the pool (refcounted); the ``Retriever`` is built once per
        (tenant, version, open reader) and reused.
        """
        with self.pool.acquire(version.tenant, version.version, Path(version.path)) as reader:
            key = (version.tenant, version.version)
            with self._retrievers_lock:
                entry = self._retrievers.get(key)
                if entry is None or entry[0] is not reader:
                    retriever = build_retriever(
                        reader,
                        version.tenant,
                        self.retrieval_settings(version.tenant),
                        self.query_embedder,
                        self.sparse_encoder,
                    )
                    # drop retrievers of this tenant's older versions
                    for k in [k for k in self._retrievers if k[0] == version.tenant]:
                        del self._retrievers[k]
                    self._retrievers[key] = (reader, retriever)
                else:
                    retriever = entry[1]
            yield retriever

    @contextmanager
    def open_reader(self, version: IndexVersion) -> Iterator[Any]:
        """The pooled ``EdgeIndexReader`` of ``version`` for the ``with`` block."""
        with self.pool.acquire(version.tenant, version.version, Path(version.path)) as reader:
            yield reader

    # -- query log -----------------------------------------------------------------------------
    def masker(self, tenant: str) -> Any:
        """The tenant's ``PIIMasker`` (built once per tenant; Presidio loads on first use)."""
        from rag_platform.lib.ingestion.mask import PIIMasker

        with self._maskers_lock:
            masker = self._maskers.get(tenant)
            if masker is None:
                masker = PIIMasker(self.pii_policy(tenant), spacy_model=self.settings.spacy_model)
                self._maskers[tenant] = masker
        return masker

    def mask_question(self, tenant: str, question: str) -> str:
        """The question with the tenant's PII policy applied; a placeholder if masking fails."""
        try:
            return str(self.masker(tenant).run(question).text)
        except Exception as exc:
            logger.error(
                "masking the question failed; logging a placeholder",
                extra={"error": type(exc).__name__, "tenant": tenant},
            )
            return "<masking failed>"

    def log_query(self, record: QueryRecord) -> None:
        """Hands ``record`` to the query-log writer (masked and written in the background)."""
        self.query_log.submit(record)

    def flush_query_log(self, timeout: float = 5.0) -> bool:
        """Waits for the query-log rows submitted so far; True when all are written."""
        return self.query_log.flush(timeout)

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Flushes the query log (what cannot be written goes to ``<home>/spool``) and closes every
        shard."""
        self.query_log.close()
        if self._query_embedder is not None:
            self._query_embedder.close()
        close = getattr(self._answerer, "close", None)
        if callable(close):
            close()
        try:
            self.pool.close_all()
        except Exception as exc:
            logger.warning("closing the shard pool failed", extra={"error": str(exc)})
        if isinstance(self.cache, RedisQueryCache):
            self.cache.close()
        dispose = getattr(self.store, "close", None) or getattr(self.store, "dispose", None)
        if callable(dispose):
            dispose()
