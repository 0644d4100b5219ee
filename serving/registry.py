"""The tenant registry as the API sees it: ``tenants.yaml``, re-read within a second of a change.

New tenants and changed retrieval or PII settings apply without a restart; a file that does not
load is logged and the previous registry kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rag_platform.lib.tenants import (
    GenerationConfig,
    GroundingSettings,
    InjectionPolicy,
    PIIPolicy,
    RetrievalSettings,
    TenantConfig,
    TenantRegistry,
    load_registry,
)

logger = logging.getLogger("serving.registry")


class RegistryWatcher:
    """Holds the tenant registry and reloads it when its file changes (checked at most once per
    ``interval_seconds``, on the next read).

    Args:
        tenants_file: the registry file (``Settings.tenants_file``).
        data_dir: the value of ``${RAG_DATA_DIR}`` in it (``Settings.data_dir``).
        on_change: called with the ids of tenants whose configuration changed (added, removed or
            edited) after a reload, outside the watcher's lock.
        registry: a fixed registry: when given, the file is never read.
        interval_seconds: the most often the file's modification time and size are checked.
    """

    def __init__(
        self,
        tenants_file: Path,
        data_dir: Path,
        on_change: Callable[[list[str]], None],
        *,
        registry: TenantRegistry | None = None,
        interval_seconds: float = 1.0,
    ) -> None:
        self.tenants_file = tenants_file
        self.data_dir = data_dir
        self.interval_seconds = interval_seconds
        self._on_change = on_change
        self._lock = threading.Lock()
        self._reloads = registry is None
        self._checked = time.monotonic()
        self._stamp: tuple[int, int] | None = None
        if registry is None:
            self._stamp = self._file_stamp()
            try:
                registry = load_registry(tenants_file, data_dir)
            except Exception as exc:  # a bad registry must not keep the API down
                logger.error(
                    "cannot load the tenant registry; using defaults", extra={"error": str(exc)}
                )
                registry = TenantRegistry()
        self._registry = registry

    @property
    def registry(self) -> TenantRegistry:
        """The current registry (reloaded first when the file changed and the check is due)."""
        if self._reloads and time.monotonic() - self._checked >= self.interval_seconds:
            self._reload()
        return self._registry

    def retrieval_settings(self, tenant: str) -> RetrievalSettings:
        """The tenant's retrieval settings; the defaults for an unknown tenant."""
        registry = self.registry
        return registry.get(tenant).retrieval if tenant in registry.ids else RetrievalSettings()

    def tenant(self, tenant: str) -> TenantConfig | None:
        """The tenant's configuration; None for a tenant not in the registry."""
        registry = self.registry
        return registry.get(tenant) if tenant in registry.ids else None

    def generation(self, tenant: str) -> GenerationConfig:
        """The tenant's generation settings (model routes, budget); defaults for an unknown
        tenant."""
        registry = self.registry
        return registry.get(tenant).generation if tenant in registry.ids else GenerationConfig()

    def pii_policy(self, tenant: str) -> PIIPolicy:
        """The tenant's PII policy; the default policy for an unknown tenant."""
        registry = self.registry
        return registry.get(tenant).pii if tenant in registry.ids else PIIPolicy()

    def grounding_settings(self, tenant: str) -> GroundingSettings:
        """The tenant's refusal threshold settings; the defaults for an unknown tenant."""
        registry = self.registry
        return registry.get(tenant).grounding if tenant in registry.ids else GroundingSettings()

    def injection_policy(self, tenant: str) -> InjectionPolicy:
        """The tenant's prompt-injection policy; the defaults for an unknown tenant."""
        registry = self.registry
        return registry.get(tenant).injection if tenant in registry.ids else InjectionPolicy()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.tenants_file.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _reload(self) -> None:
        with self._lock:
            if time.monotonic() - self._checked < self.interval_seconds:
                return
            self._checked = time.monotonic()
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                new = load_registry(self.tenants_file, self.data_dir)
            except Exception as exc:
                logger.error(
                    "the changed tenant registry does not load; keeping the previous",
                    extra={"error": str(exc)},
                )
                return
            old, self._registry = self._registry, new
        changed = sorted(
            t
            for t in set(old.ids) | set(new.ids)
            if (old.get(t) if t in old.ids else None) != (new.get(t) if t in new.ids else None)
        )
        self._on_change(changed)
        logger.info("tenant registry reloaded", extra={"changed_tenants": changed})
