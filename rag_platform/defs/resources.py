"""Resources: the platform (settings, tenant registry, metadata store) and the Parquet IO
manager that stores intermediate assets under the platform's ``RAG_HOME/storage``, each tenant's
partitions sealed with its data key (:mod:`rag_platform.lib.crypto`)."""

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import pandas as pd
from pydantic import Field, PrivateAttr
from upath import UPath

from rag_platform.lib.crypto import NO_CIPHER, PURPOSE_ASSET, TenantCipher
from rag_platform.lib.embedding.stage import EmbeddingSet
from rag_platform.lib.progress import StageProgress
from rag_platform.lib.tenants import TenantConfig, TenantRegistry, load_registry
from rag_platform.settings import Settings, get_settings

if TYPE_CHECKING:
    from rag_platform.lib.store import MetadataStore


class PlatformResource(dg.ConfigurableResource):
    """Settings, tenant registry, metadata store and models, shared by every asset of a run.

    Unset fields fall back to :class:`rag_platform.settings.Settings` (the ``RAG_*`` environment),
    so the Dagster UI, the CLI and the tests see the same state.
    """

    rag_home: str | None = Field(None, description="Overrides RAG_HOME for this code location.")
    tenants_file: str | None = Field(None, description="Overrides RAG_TENANTS_FILE.")
    database_url: str | None = Field(
        None, description="Overrides RAG_DATABASE_URL (pass secrets with dg.EnvVar)."
    )

    _settings: Settings | None = PrivateAttr(None)
    _store: Any = PrivateAttr(None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._settings = self._build_settings()
        self._settings.ensure_dirs()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.dispose()
            self._store = None

    def _build_settings(self) -> Settings:
        base = get_settings()
        overrides: dict[str, Any] = {}
        if self.rag_home:
            overrides["home"] = Path(self.rag_home)
        if self.tenants_file:
            overrides["tenants_file"] = Path(self.tenants_file)
        if self.database_url:
            overrides["database_url"] = self.database_url
        return base.model_copy(update=overrides) if overrides else base

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = self._build_settings()
        return self._settings

    def registry(self) -> TenantRegistry:
        return load_registry(self.settings.tenants_file, self.settings.data_dir)

    def tenant(self, tenant_id: str) -> TenantConfig:
        """The tenant's config with its managed upload source (once it has uploads).

        Raises ``KeyError`` when the tenant is not in the registry.
        """
        from rag_platform.lib.connectors.upload import UploadStore

        tenant = self.registry().get(tenant_id)
        return UploadStore(self.settings.uploads_dir).with_upload_source(tenant)

    def store(self) -> "MetadataStore":
        """The metadata store (created once per run, migrated)."""
        if self._store is None:
            from rag_platform.lib.store import MetadataStore

            self._store = MetadataStore.from_settings(self.settings)
            self._store.migrate()
        return self._store

    def progress(self, context: dg.AssetExecutionContext, stage: str) -> StageProgress:
        """The progress callback of one stage: a ``context.log.info`` line (done/total, rate,
        ETA) at the start, every ``RAG_PROGRESS_LOG_SECONDS`` and at the end, so the Dagster UI
        shows the stage's progress; every report also reaches the in-process listeners (the
        CLI's live progress lines)."""
        return StageProgress(
            stage, context.log.info, log_every_seconds=self.settings.progress_log_seconds
        )

    def cipher(self, tenant_id: str) -> TenantCipher:
        """The tenant's cipher (its data key, wrapped by the master key of the settings);
        seals nothing when ``RAG_ENCRYPTION_AT_REST`` is off."""
        return self.store().keyring.cipher(tenant_id)

    def tenant_cache_dir(self, tenant_id: str) -> Path:
        """The tenant's state folder ``RAG_HOME/cache/<tenant>`` (components create it)."""
        return self.settings.cache_dir / tenant_id


def encode_asset(obj: Any) -> bytes:
    """An asset value's stored bytes: a DataFrame as Parquet, an embedding set as ``.npz``,
    anything else as JSON."""
    if isinstance(obj, pd.DataFrame):
        buf = io.BytesIO()
        obj.to_parquet(buf, index=False)
        return buf.getvalue()
    if isinstance(obj, EmbeddingSet):
        return obj.to_bytes()
    return json.dumps(obj, default=str).encode()


def decode_asset(data: bytes) -> Any:
    """The value of :func:`encode_asset`'s bytes (told apart by their magic bytes)."""
    if data[:4] == b"PAR1":
        return pd.read_parquet(io.BytesIO(data))
    if data[:2] == b"PK":
        return EmbeddingSet.from_bytes(data)
    return json.loads(data)


def _partition_tenant(context: dg.OutputContext | dg.InputContext, path: UPath) -> str | None:
    """The tenant of the partition stored at ``path``, or None for an unpartitioned asset.

    The IO manager stores a partition at ``<asset>/<tenant>`` and a tenant × day partition at
    ``<asset>/<day>/<tenant>`` (dimensions in name order), so the file name is the tenant; read
    from the path, it is right also when one input loads several partitions.
    """
    return path.name if context.has_asset_partitions else None


class _FrameIOManager(dg.UPathIOManager):
    """:func:`encode_asset`'s bytes, sealed with the partition's tenant's data key.

    Args:
        ciphers: tenant id → its cipher (None: nothing sealed).
    """

    extension = ""

    def __init__(self, base_path: UPath, ciphers: Any = None) -> None:
        super().__init__(base_path=base_path)
        self._ciphers = ciphers

    def _cipher(self, context: dg.OutputContext | dg.InputContext, path: UPath) -> TenantCipher:
        tenant = _partition_tenant(context, path)
        if tenant is None or self._ciphers is None:
            return NO_CIPHER
        return self._ciphers(tenant)

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self._cipher(context, path).seal(encode_asset(obj), PURPOSE_ASSET))

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        return decode_asset(self._cipher(context, path).open(path.read_bytes(), PURPOSE_ASSET))


class AssetStorageIOManager(dg.ConfigurableIOManagerFactory):
    """Stores each asset partition under ``<RAG_HOME>/storage/<asset>/<partition>``.

    ``RAG_HOME`` is the one of ``platform``, a resource dependency: wired to the top-level
    ``platform`` resource (see :func:`resources`), a ``rag_home`` override of that resource, in
    code or in a run's config, moves the asset storage with the rest of the state.
    """

    platform: PlatformResource
    base_path: str | None = Field(None, description="Overrides <RAG_HOME>/storage.")

    def create_io_manager(self, context: dg.InitResourceContext) -> _FrameIOManager:
        base = Path(self.base_path) if self.base_path else self.platform.settings.storage_dir
        base.mkdir(parents=True, exist_ok=True)
        return _FrameIOManager(UPath(base), self.platform.cipher)


@dg.definitions
def resources() -> dg.Definitions:
    # configured at launch, so run config (e.g. rag_home) reaches both the assets and the
    # IO manager, which resolves this same top-level resource
    platform = PlatformResource.configure_at_launch()
    return dg.Definitions(
        resources={
            "platform": platform,
            "io_manager": AssetStorageIOManager(platform=platform, base_path=None),
        }
    )
