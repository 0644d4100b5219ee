"""The tenant registry: a YAML file listing tenants, their sources and per-tenant settings.

``${VAR}`` in string values is expanded from the environment (``RAG_DATA_DIR`` defaults to the
shared data folder). Relative paths are resolved against the registry file's folder.

Example::

    tenants:
      - id: sec-filings
        sources:
          - id: filings
            type: filesystem
            path: ${RAG_DATA_DIR}/sec10q/docs
            include: ["*.pdf"]
        pii: {entities: [PERSON, EMAIL_ADDRESS], operator: replace}
        chunking: {max_tokens: 200, overlap_tokens: 32}
        generation:
          models:
            - {name: primary, base_url: http://vllm:8000/v1, model: qwen2.5-7b-instruct}
            - {name: secondary, base_url: http://ollama:11434/v1, model: "qwen2.5:0.5b"}
          monthly_token_budget: 2000000
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
#: Longest ACL group name (characters).
MAX_ACL_GROUP_CHARS = 64
_ACL_GROUP = re.compile(r"[A-Za-z0-9_.:@-]+")


def validate_acl_group(name: str) -> str:
    """Checks one ACL group name and returns it unchanged.

    A group name is 1 to :data:`MAX_ACL_GROUP_CHARS` characters of ``A-Z a-z 0-9 _ . : @ -``:
    no whitespace and no comma, so a list of groups joined with commas (cache keys, manifests,
    ``--groups a,b``) splits back into the same groups.

    Args:
        name: the group name as written in the source (not stripped).

    Returns:
        ``name``.

    Raises:
        ValueError: the name is empty, too long or has a character outside the set above.
    """
    if not name:
        raise ValueError("empty ACL group name")
    if len(name) > MAX_ACL_GROUP_CHARS:
        raise ValueError(
            f"ACL group name {name[:80]!r} is longer than {MAX_ACL_GROUP_CHARS} characters"
        )
    if _ACL_GROUP.fullmatch(name) is None:
        raise ValueError(
            f"invalid ACL group name {name!r}: only letters, digits and _ . : @ - are allowed"
        )
    return name


def _valid_groups(groups: list[str]) -> list[str]:
    for group in groups:
        validate_acl_group(group)
    return groups


def _valid_optional_groups(groups: list[str] | None) -> list[str] | None:
    return None if groups is None else _valid_groups(groups)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AclRule(_Strict):
    """Files whose path (relative to the source root) matches ``glob`` get ``groups``.

    An empty ``groups`` list is allowed and means no reader group sees the files (admins still
    list them).
    """

    glob: str
    groups: list[str]

    _check_groups = field_validator("groups")(_valid_groups)


class FilesystemSource(_Strict):
    """A folder of files (PDF, DOCX, HTML, Markdown, text)."""

    type: Literal["filesystem"] = "filesystem"
    id: str
    path: Path
    include: list[str] = Field(default_factory=lambda: ["**/*"])
    exclude: list[str] = Field(default_factory=list)
    acl: list[AclRule] = Field(default_factory=list, description="Path globs → ACL groups.")


class DatasetSource(_Strict):
    """A JSONL, CSV or Parquet file with one document per row."""

    type: Literal["dataset"] = "dataset"
    id: str
    path: Path
    id_column: str = "id"
    title_column: str | None = "title"
    text_column: str = "text"
    acl_column: str | None = None
    updated_at_column: str | None = None
    limit: int | None = Field(None, ge=1, description="Read only the first N rows (demos, tests).")


class WebAclRule(_Strict):
    """Pages whose canonical URL starts with ``prefix`` get ``groups`` (empty: no reader group)."""

    prefix: str
    groups: list[str]

    _check_groups = field_validator("groups")(_valid_groups)


class WebSource(_Strict):
    """A web site crawled from seed URLs and/or sitemaps, inside allowed URL prefixes.

    Every fetched URL, redirect target and followed link must start with one of
    ``allowed_prefixes`` (compared after normalization; end a prefix with ``/`` to mean a
    folder). ``robots.txt`` of every host is honoured; ``delay_seconds`` is the least time
    between two requests to one host (a larger ``Crawl-delay`` in robots.txt wins, up to 60 s).
    """

    type: Literal["web"] = "web"
    id: str
    start_urls: list[str] = Field(default_factory=list)
    allowed_prefixes: list[str] = Field(min_length=1)
    sitemap_urls: list[str] = Field(default_factory=list)
    delay_seconds: float = Field(1.0, ge=0.0, le=60.0)
    max_pages: int = Field(1_000, ge=1, le=1_000_000)
    max_depth: int | None = Field(None, ge=0, description="Link hops from a seed; None: any.")
    max_page_bytes: int = Field(5 * 1024 * 1024, ge=1, description="Largest page body (bytes).")
    timeout_seconds: float = Field(30.0, gt=0.0, le=600.0, description="Per request, in all.")
    max_redirects: int = Field(5, ge=0, le=20)
    user_agent: str = "rag-platform-crawler/1.0"
    acl_groups: list[str] | None = Field(
        None, description="Groups of every page (None: the tenant's default groups)."
    )
    acl: list[WebAclRule] = Field(
        default_factory=list, description="URL prefix → groups; the first match wins."
    )

    _check_groups = field_validator("acl_groups")(_valid_optional_groups)

    @field_validator("start_urls", "allowed_prefixes", "sitemap_urls")
    @classmethod
    def _http_urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not re.match(r"^https?://[^/?#\s]+", url):
                raise ValueError(f"not an http(s) URL: {url!r}")
        return v

    @model_validator(mode="after")
    def _has_seeds(self) -> WebSource:
        if not self.start_urls and not self.sitemap_urls:
            raise ValueError("a web source needs start_urls or sitemap_urls")
        return self


class GitSource(_Strict):
    """A git repository (local path or URL) at a branch: its files at the branch's head.

    A URL (``https://``, ``ssh://``, ``git@host:path``, ``file://``) is cloned (bare) into the
    tenant's state folder and fetched on each sync; a local path is read in place (never
    written). ``include``/``exclude`` are globs over paths in the repository, as for
    :class:`FilesystemSource`.
    """

    type: Literal["git"] = "git"
    id: str
    repo: str
    branch: str = "main"
    include: list[str] = Field(default_factory=lambda: ["**/*"])
    exclude: list[str] = Field(default_factory=list)
    acl: list[AclRule] = Field(default_factory=list, description="Path globs → ACL groups.")
    timeout_seconds: float = Field(300.0, gt=0.0, description="Per git command (seconds).")
    full_sync_every: timedelta = Field(
        timedelta(hours=24),
        description="A full listing (every blob id compared) at least this often; between two, "
        "syncs diff the last synced commit against the head.",
    )

    @field_validator("branch")
    @classmethod
    def _branch_name(cls, v: str) -> str:
        # git check-ref-format's rules that matter here: no option-like or path-escaping name.
        if (
            not v
            or v.startswith(("-", "/"))
            or ".." in v
            or re.search(r"[\x00-\x20~^:?*\[\\\x7f]", v)
            or v.endswith((".lock", "/", "."))
        ):
            raise ValueError(f"invalid branch name {v!r}")
        return v

    @field_validator("repo")
    @classmethod
    def _repo_not_option(cls, v: str) -> str:
        if not v or v.startswith("-"):
            raise ValueError(f"invalid repository {v!r}")
        return v

    @property
    def is_remote(self) -> bool:
        """Whether ``repo`` is a URL to clone rather than a local path."""
        return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", self.repo)) or bool(
            re.match(r"^[^/\s]+@[^/\s:]+:", self.repo)
        )


_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_SQL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def _sql_identifier(name: str) -> str:
    """A column or table name: ``name`` or ``schema.name`` of ``[A-Za-z_][A-Za-z0-9_$]*`` parts
    (quoted by the connector; no SQL ever comes from a column setting)."""
    if not all(_SQL_NAME.fullmatch(part) for part in name.split(".")) or name.count(".") > 1:
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


class SqlSource(_Strict):
    """A table, or a read-only query, of a SQL database (SQLAlchemy URL from an env var).

    Each row is a text document: ``id_column`` (native id), ``title_column``, ``text_column``,
    ``updated_at_column`` (the watermark of incremental syncs) and an optional ``acl_column``
    (a comma-separated string or an array of group names).
    """

    type: Literal["sql"] = "sql"
    id: str
    url_env: Annotated[str, Field(pattern=_ENV_NAME)] = Field(
        description="Name of the environment variable holding the SQLAlchemy URL "
        "(postgresql+psycopg://..., mysql+pymysql://...); never the URL itself."
    )
    table: str | None = Field(None, description="Table (or schema.table) to read.")
    query: str | None = Field(
        None, description="A SELECT whose columns include the configured ones (instead of table)."
    )
    id_column: str = "id"
    title_column: str | None = "title"
    text_column: str = "text"
    updated_at_column: str | None = Field(
        "updated_at", description="Watermark column; None makes every sync a full listing."
    )
    acl_column: str | None = None
    batch_rows: int = Field(1000, ge=1, le=100_000, description="Rows fetched per round trip.")
    watermark_overlap: timedelta = Field(
        timedelta(0),
        description="Incremental syncs re-read rows this much older than the watermark "
        "(catches rows committed late with an earlier updated_at).",
    )
    full_sync_every: timedelta = Field(
        timedelta(hours=24),
        description="A full listing (every row's version compared) at least this often.",
    )

    @field_validator("table", "id_column", "title_column", "text_column")
    @classmethod
    def _identifiers(cls, v: str | None) -> str | None:
        return v if v is None else _sql_identifier(v)

    @field_validator("updated_at_column", "acl_column")
    @classmethod
    def _optional_identifiers(cls, v: str | None) -> str | None:
        return v if v is None else _sql_identifier(v)

    def model_post_init(self, context: Any, /) -> None:
        if (self.table is None) == (self.query is None):
            raise ValueError(f"sql source {self.id!r}: set exactly one of table and query")


class S3Source(_Strict):
    """Objects under a prefix of an S3 (or S3-compatible) bucket; each object is one file
    document (parsed by type like a filesystem file)."""

    type: Literal["s3"] = "s3"
    id: str
    bucket: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    prefix: str = ""
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto).")
    region: str = "us-east-1"
    access_key_id_env: Annotated[str, Field(pattern=_ENV_NAME)] | None = Field(
        None, description="Env var holding the access key id (None: boto3's default chain)."
    )
    secret_access_key_env: Annotated[str, Field(pattern=_ENV_NAME)] | None = None
    acl_metadata_key: str = Field(
        "acl-groups",
        description="User metadata key (x-amz-meta-<key>) holding comma-separated ACL groups; "
        "an object without it gets the tenant's default groups.",
    )
    include: list[str] = Field(default_factory=lambda: ["**/*"])
    exclude: list[str] = Field(default_factory=list)
    fetch_workers: int = Field(8, ge=1, le=64, description="Objects downloaded in parallel.")
    full_sync_every: timedelta = Field(
        timedelta(0), description="S3 listings are always full (ETags find every change)."
    )


class PluginSource(BaseModel):
    """A source of a third-party connector (entry point group ``rag_platform.connectors``, name
    = ``type``); its other keys are the plugin's own config, passed as a dict."""

    model_config = ConfigDict(extra="allow")

    type: str
    id: str


#: Source types built in; any other ``type`` is looked up as a connector plugin.
BUILTIN_SOURCE_TYPES = ("filesystem", "dataset", "sql", "s3", "web", "git")


def _source_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind is None and isinstance(value, dict):
        kind = "filesystem"
    return kind if kind in BUILTIN_SOURCE_TYPES else "plugin"


SourceConfig = Annotated[
    Annotated[FilesystemSource, Tag("filesystem")]
    | Annotated[DatasetSource, Tag("dataset")]
    | Annotated[SqlSource, Tag("sql")]
    | Annotated[S3Source, Tag("s3")]
    | Annotated[WebSource, Tag("web")]
    | Annotated[GitSource, Tag("git")]
    | Annotated[PluginSource, Tag("plugin")],
    Discriminator(_source_tag),
]


class PIIPolicy(_Strict):
    """Presidio masking policy.

    ``ner`` selects spaCy NER (names, places) in addition to the pattern recognizers; it costs
    about 0.2 s per call. ``operator`` is Presidio's anonymizer operator; masked spans keep their
    entity type (``<PERSON>``) for ``replace``.
    """

    enabled: bool = True
    entities: list[str] = Field(
        default_factory=lambda: [
            "EMAIL_ADDRESS",
            "PHONE_NUMBER",
            "CREDIT_CARD",
            "US_SSN",
            "IBAN_CODE",
            "IP_ADDRESS",
        ]
    )
    operator: Literal["replace", "mask", "hash", "redact"] = "replace"
    allow_list: list[str] = Field(default_factory=list)
    ner: bool = False
    score_threshold: float = Field(0.5, ge=0.0, le=1.0)
    language: str = "en"


class ChunkingConfig(_Strict):
    """Token-bounded chunking; tokens are counted with the embedding model's tokenizer."""

    max_tokens: int = Field(200, ge=8, le=512)
    overlap_tokens: int = Field(32, ge=0)
    min_tokens: int = Field(1, ge=1)

    @field_validator("overlap_tokens")
    @classmethod
    def _overlap_below_max(cls, v: int, info: Any) -> int:
        max_tokens = info.data.get("max_tokens", 200)
        if v >= max_tokens:
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        return v


class RetrievalSettings(_Strict):
    """Hybrid retrieval: dense + BM25 sparse prefetch, fused in Qdrant.

    ``fusion``: ``rrf`` (weighted reciprocal rank fusion with ``rrf_k``), ``dbsf``
    (distribution-based score fusion), ``convex`` (``dense_weight * cosine + sparse_weight *
    s / (s + sparse_saturation)`` with ``s`` the BM25 score), or one branch alone.

    Default ``dbsf`` over 100 + 100 candidates, chosen on SciFact train (809 queries,
    ``benchmarks/retrieval.py``): nDCG@10 0.738 vs 0.718 for plain RRF (k=60) and 0.733 for the
    best weighted RRF (k=2); the best ``convex`` settings tie it (0.738) but depend on the
    corpus's BM25 score scale, which DBSF normalises per query.
    """

    dense_prefetch: int = Field(100, ge=1, le=1000)
    sparse_prefetch: int = Field(100, ge=1, le=1000)
    fusion: Literal["rrf", "dbsf", "convex", "dense", "sparse"] = "dbsf"
    rrf_k: int = Field(60, ge=1)
    dense_weight: float = Field(1.0, ge=0.0)
    sparse_weight: float = Field(1.0, ge=0.0)
    sparse_saturation: float = Field(
        20.0, gt=0.0, description="BM25 score at which the convex fusion's sparse term is 0.5."
    )


class GroundingSettings(_Strict):
    """When ``/v1/query`` refuses: the answer is :data:`~rag_platform.lib.grounding.REFUSAL_TEXT`
    with ``grounded: false`` when the *relevance* of the retrieval (the dense cosine similarity
    of the question and the best visible chunk, whatever the fusion) is below ``min_score``.

    ``min_score``: a cosine in [-1, 1]; ``"auto"`` (the default) takes the threshold the
    evaluation calibrated on the golden set for the published index version (its
    ``details.grounding.min_score``: the ``auto_quantile`` quantile of the golden questions'
    relevance, see :func:`rag_platform.lib.grounding.calibrate_min_score`); None never refuses.
    With ``"auto"`` and no calibrated value (no golden set) nothing is refused either.
    The default quantile 0.05 is measured on SQuAD with half its articles held out (README,
    "Grounding and refusal").
    """

    min_score: float | Literal["auto"] | None = "auto"
    auto_quantile: float = Field(0.05, ge=0.0, le=0.5)

    @field_validator("min_score")
    @classmethod
    def _cosine_range(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, float | int) and not -1.0 <= v <= 1.0:
            raise ValueError("min_score is a cosine similarity: between -1 and 1")
        return v


class InjectionPolicy(_Strict):
    """Prompt-injection screening (:mod:`rag_platform.lib.injection`).

    Attributes:
        threshold: detector score at or above which a document or a question is flagged.
        quarantine: leave flagged documents out of the index (recorded as quarantined, stage
            ``injection``); false keeps them indexed, flagged in the asset metadata only.
        refuse_questions: refuse a flagged question at query time (the answer is a refusal,
            ``grounded: false``); false answers it, flagged in the response and the query log.
    """

    threshold: float = Field(0.5, gt=0.0, le=1.0)
    quarantine: bool = False
    refuse_questions: bool = False


_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class ExperimentVariant(_Strict):
    """One arm of a retrieval experiment.

    Attributes:
        name: the variant's name, recorded in the query log (``control``, ``rrf-k2``).
        share: its share of the tenant's principals, in (0, 1]; the shares of an experiment
            sum to 1.
        retrieval: fields of :class:`RetrievalSettings` that this variant changes (``fusion``,
            ``rrf_k``, ``dense_weight``, ``sparse_weight``, ``dense_prefetch``, ...), over the
            tenant's ``retrieval``; empty for the control.
    """

    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    share: float = Field(gt=0.0, le=1.0)
    retrieval: dict[str, Any] = Field(default_factory=dict)


class RetrievalExperiment(_Strict):
    """An online A/B (or A/B/n) test of retrieval settings (``experiment`` in tenants.yaml).

    Each principal (API key) is assigned one variant for the whole experiment, deterministically
    from ``sha256(tenant:experiment:key_id)`` (:func:`rag_platform.lib.experiments.assign`), so
    its answers stay consistent and its feedback is attributable; ``rag-platform experiments
    report`` compares the variants.

    Attributes:
        id: the experiment's name, recorded in the query log with the variant.
        enabled: false stops assigning (every request uses the tenant's ``retrieval``).
        variants: at least two, shares summing to 1, names unique.
    """

    id: Annotated[str, Field(pattern=_NAME_PATTERN)]
    enabled: bool = True
    variants: list[ExperimentVariant] = Field(min_length=2)

    @model_validator(mode="after")
    def _check_variants(self) -> RetrievalExperiment:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.id!r}: variant names must be unique")
        total = sum(v.share for v in self.variants)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"experiment {self.id!r}: variant shares sum to {total:g}, not 1")
        for v in self.variants:
            unknown = set(v.retrieval) - set(RetrievalSettings.model_fields)
            if unknown:
                raise ValueError(
                    f"variant {v.name!r}: unknown retrieval settings {sorted(unknown)}"
                )
        return self


class GoldenSetConfig(_Strict):
    """Where the tenant's golden set lives and how to read it."""

    path: Path
    format: Literal["auto", "jsonl", "csv", "beir", "sec10q"] = "auto"
    split: str = "train"
    limit: int | None = Field(None, ge=1)


class EvaluationConfig(_Strict):
    """Blocking thresholds for publishing: absolute minimums and maximum regression."""

    thresholds: dict[str, float] = Field(default_factory=dict)
    max_regression: float = Field(0.02, ge=0.0, description="Absolute drop allowed vs published.")
    k: int = Field(10, ge=1)


class InputBudgets(_Strict):
    """Per-document input limits: a source item over one is quarantined with the budget's name,
    never read or parsed further. The defaults fit the largest filings and reports seen in
    practice with a wide margin; they exist to stop pathological and hostile inputs.

    Attributes:
        max_file_bytes: largest file a connector reads (bytes; checked with ``stat`` before
            opening). Default 100 MiB.
        max_pdf_pages: most pages of a PDF (checked before any page is extracted). Default 2,000.
        max_docx_uncompressed_bytes: largest sum of a DOCX's zip members' uncompressed sizes
            (bytes, read from the zip directory before python-docx opens it: a zip-bomb guard).
            Default 200 MiB.
        max_document_chars: most characters of text per document after parsing (and of a
            dataset row's text). Default 5,000,000.
        parse_seconds: wall-clock time allowed to parse one document (seconds). Default 120.
        mask_seconds: wall-clock time allowed to PII-mask one document (seconds). Default 300.
    """

    max_file_bytes: int = Field(100 * 1024 * 1024, ge=1)
    max_pdf_pages: int = Field(2_000, ge=1)
    max_docx_uncompressed_bytes: int = Field(200 * 1024 * 1024, ge=1)
    max_document_chars: int = Field(5_000_000, ge=1)
    parse_seconds: float = Field(120.0, gt=0.0)
    mask_seconds: float = Field(300.0, gt=0.0)


class RetentionPolicy(_Strict):
    """How long a tenant's records are kept (days; enforced daily by the ``daily_retention``
    schedule, ``lib/lifecycle/retention.py``).

    Defaults: query log 90 days (with the feedback on the deleted queries), feedback 365,
    conversations 365 (since their last message, with their messages), audit log 365,
    quarantine records 30 (a stage's quarantine file not rewritten for that long), retired index
    versions: none beyond the ``RAG_VERSIONS_KEPT`` rollback targets, and with
    ``retired_versions_days`` set, not even those once retired for longer.
    """

    query_log_days: int = Field(90, ge=1, le=36_500)
    feedback_days: int = Field(365, ge=1, le=36_500)
    conversations_days: int = Field(365, ge=1, le=36_500)
    audit_log_days: int = Field(365, ge=1, le=36_500)
    quarantine_days: int = Field(30, ge=1, le=36_500)
    retired_versions_days: int | None = Field(None, ge=1, le=36_500)


#: MIME types an upload may have by default: every type the parser reads.
DEFAULT_UPLOAD_MIME_TYPES = [
    "application/pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "text/html",
    "text/markdown",
    "text/plain",
]


class UploadPolicy(_Strict):
    """Documents sent through ``POST /v1/documents`` (the tenant's managed ``uploads`` source,
    ``RAG_HOME/uploads/<tenant>``). Every tenant accepts uploads unless ``enabled`` is false.

    Attributes:
        enabled: whether the API accepts uploads and deletions for the tenant.
        allowed_mime_types: MIME types accepted (the file name's extension decides, as for a
            filesystem source); a subset of what the parser reads.
    """

    enabled: bool = True
    allowed_mime_types: list[str] = Field(default_factory=lambda: list(DEFAULT_UPLOAD_MIME_TYPES))


WebhookEvent = Literal["job.completed", "index.published"]


def _all_webhook_events() -> list[WebhookEvent]:
    return ["job.completed", "index.published"]


class WebhookConfig(_Strict):
    """A receiver of the tenant's events.

    Attributes:
        url: ``http(s)://`` URL the JSON body is POSTed to.
        secret_env: name of the environment variable (of the Dagster daemon's process) holding
            the HMAC-SHA256 secret; the secret itself never sits in the registry.
        events: which events to send.
    """

    url: Annotated[str, Field(pattern=r"^https?://[^\s]{1,2000}$")]
    secret_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
    events: list[WebhookEvent] = Field(default_factory=_all_webhook_events)


class ModelRoute(_Strict):
    """One OpenAI-compatible endpoint and model of a tenant's ordered model list.

    Attributes:
        name: the route's label, unique in the list: the ``model`` a query response reports
            and the ``model`` label of the LLM metrics.
        base_url: the endpoint, e.g. ``http://vllm:8000/v1`` (``/v1`` optional).
        model: the model name sent to the endpoint.
        api_key_env: name of the environment variable (of the API process) holding the key
            sent as ``Authorization: Bearer``; None: no key. The key never sits in the registry.
        timeout_seconds: connect and read timeout of one call (a stream's read timeout is the
            longest wait for its next chunk).
        max_retries: further attempts after a timeout, a connection failure, a 5xx or a 429,
            with exponential back-off starting at ``retry_backoff_seconds`` (tenacity).
        retry_backoff_seconds: the first back-off; each further one doubles, up to 4 s.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$")]
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s]{1,2000}$")]
    model: Annotated[str, Field(min_length=1, max_length=200)]
    api_key_env: Annotated[str, Field(pattern=_ENV_NAME)] | None = None
    timeout_seconds: float = Field(30.0, gt=0.0, le=600.0)
    max_retries: int = Field(1, ge=0, le=5)
    retry_backoff_seconds: float = Field(0.2, ge=0.0, le=10.0)


class BreakerConfig(_Strict):
    """The circuit breaker of each model route (pybreaker).

    Attributes:
        fail_max: consecutive failed calls (each attempt counts) that open the circuit.
        reset_timeout_seconds: how long an open circuit refuses calls before one trial call
            (half-open) may close it again.
    """

    fail_max: int = Field(3, ge=1, le=100)
    reset_timeout_seconds: float = Field(30.0, gt=0.0, le=3600.0)


class GenerationConfig(_Strict):
    """How a tenant's answers are generated: an ordered model list (an allowlist: no other
    model answers for the tenant), its circuit breakers, and a monthly LLM token budget.

    With no ``models``, the platform's ``RAG_LLM_BASE_URL`` / ``RAG_LLM_MODEL`` is the one
    route (and with neither, answers are extractive). When every route fails the extractive
    answer is served, flagged ``fallback: "extractive"``.

    Attributes:
        models: routes tried in order; the next one answers on a timeout, a connection
            failure, an HTTP error (5xx, 429, other 4xx) or an open circuit.
        monthly_token_budget: LLM tokens (prompt + completion) the tenant may spend per UTC
            calendar month, counted from the query log and the LLM usage events; None: no
            budget. Over it, ``/v1/query`` answers 429 ``budget_exhausted`` until the month ends.
        breaker: the per-route circuit breaker settings.
    """

    models: list[ModelRoute] = Field(default_factory=list)
    monthly_token_budget: int | None = Field(None, ge=0)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, v: list[ModelRoute]) -> list[ModelRoute]:
        names = [m.name for m in v]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate model route names: {sorted(dupes)}")
        return v


class TenantConfig(_Strict):
    """One tenant of the registry.

    ``default_acl_groups`` go to documents whose source carries no ACL information at all (no
    matching rule, no ``.acl`` file, no ACL column value); an explicitly empty ACL stays empty.
    """

    id: Annotated[str, Field(pattern=TENANT_ID_PATTERN)]
    name: str = ""
    sources: list[SourceConfig] = Field(default_factory=list)
    default_acl_groups: list[str] = Field(default_factory=lambda: ["all"])
    budgets: InputBudgets = Field(default_factory=InputBudgets)
    pii: PIIPolicy = Field(default_factory=PIIPolicy)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    grounding: GroundingSettings = Field(default_factory=GroundingSettings)
    injection: InjectionPolicy = Field(default_factory=InjectionPolicy)
    golden_set: GoldenSetConfig | None = None
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    sample_questions: list[str] = Field(default_factory=list)
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    uploads: UploadPolicy = Field(default_factory=UploadPolicy)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    experiment: RetrievalExperiment | None = None
    generation: GenerationConfig = Field(default_factory=GenerationConfig)

    _check_default_groups = field_validator("default_acl_groups")(_valid_groups)

    @model_validator(mode="after")
    def _check_experiment(self) -> TenantConfig:
        if self.experiment is not None:
            for v in self.experiment.variants:
                self.variant_retrieval(v.name)  # raises on settings out of bounds
        return self

    def variant_retrieval(self, variant: str) -> RetrievalSettings:
        """The retrieval settings of one variant of the tenant's experiment: the tenant's
        ``retrieval`` with the variant's changes.

        Raises:
            KeyError: no experiment, or no such variant.
            pydantic.ValidationError: the variant's settings are out of bounds.
        """
        if self.experiment is None:
            raise KeyError(f"tenant {self.id!r} has no experiment")
        for v in self.experiment.variants:
            if v.name == variant:
                return RetrievalSettings.model_validate(
                    {**self.retrieval.model_dump(), **v.retrieval}
                )
        raise KeyError(f"no variant {variant!r} in experiment {self.experiment.id!r}")


class TenantRegistry(_Strict):
    tenants: list[TenantConfig] = Field(default_factory=list)

    @field_validator("tenants")
    @classmethod
    def _unique_ids(cls, v: list[TenantConfig]) -> list[TenantConfig]:
        ids = [t.id for t in v]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"duplicate tenant ids: {sorted(dupes)}")
        return v

    def get(self, tenant_id: str) -> TenantConfig:
        """Returns the tenant's config. Raises ``KeyError`` when the tenant is not registered."""
        for t in self.tenants:
            if t.id == tenant_id:
                return t
        raise KeyError(f"unknown tenant {tenant_id!r}")

    @property
    def ids(self) -> list[str]:
        return [t.id for t in self.tenants]


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [_expand(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, env) for k, v in value.items()}
    return value


def _resolve_paths(registry: TenantRegistry, base: Path) -> TenantRegistry:
    for t in registry.tenants:
        for s in t.sources:
            if isinstance(s, GitSource):
                if not s.is_remote and not Path(s.repo).is_absolute():
                    s.repo = str((base / s.repo).resolve())
            elif isinstance(s, FilesystemSource | DatasetSource) and not s.path.is_absolute():
                s.path = (base / s.path).resolve()
        if t.golden_set and not t.golden_set.path.is_absolute():
            t.golden_set.path = (base / t.golden_set.path).resolve()
    return registry


def load_registry(path: Path, data_dir: Path | None = None) -> TenantRegistry:
    """Reads and validates the registry.

    Args:
        path: the YAML file; a missing file is an empty registry.
        data_dir: value of ``${RAG_DATA_DIR}`` when the environment does not set it.

    Raises:
        pydantic.ValidationError: the file does not match the schema.
    """
    if not path.exists():
        return TenantRegistry()
    raw = yaml.safe_load(path.read_text()) or {}
    env = dict(os.environ)
    if data_dir is not None:
        env.setdefault("RAG_DATA_DIR", str(data_dir))
    registry = TenantRegistry.model_validate(_expand(raw, env))
    return _resolve_paths(registry, path.parent)
