"""Request and response schemas of the query API (pydantic v2).

Naming follows fastapi/full-stack-fastapi-template: ``XRequest`` for bodies the client sends,
``XPublic`` for what the API returns. Request models forbid unknown fields, so a typo in a filter
name is a 422 instead of a silently ignored filter.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rag_platform.lib.models import Citation, Hit, Principal, SearchFilters

MAX_QUERY_CHARS = 2000
MAX_FILTER_VALUES = 100


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchFiltersRequest(_Request):
    """User filters, added on top of the principal's ACL groups (which always apply).

    Dates are ISO 8601; a naive date-time is read as UTC by the index.
    """

    source_ids: list[str] | None = Field(None, max_length=MAX_FILTER_VALUES)
    mime_types: list[str] | None = Field(None, max_length=MAX_FILTER_VALUES)
    doc_ids: list[str] | None = Field(None, max_length=MAX_FILTER_VALUES)
    updated_after: datetime | None = None
    updated_before: datetime | None = None

    @field_validator("source_ids", "mime_types", "doc_ids")
    @classmethod
    def _non_empty_values(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            for item in v:
                if not item.strip() or len(item) > 256:
                    raise ValueError("filter values must be 1-256 non-blank characters")
        return v

    @model_validator(mode="after")
    def _ordered_dates(self) -> SearchFiltersRequest:
        a, b = self.updated_after, self.updated_before
        if a is not None and b is not None:
            try:
                bad = a > b
            except TypeError:  # one naive, one aware
                raise ValueError(
                    "updated_after and updated_before must both carry a time zone or neither"
                ) from None
            if bad:
                raise ValueError("updated_after must not be later than updated_before")
        return self

    def to_filters(self, principal: Principal) -> SearchFilters:
        """The index filters: the principal's ACL groups plus these user filters."""
        return SearchFilters(
            acl_groups=tuple(principal.groups),
            source_ids=tuple(self.source_ids) if self.source_ids else None,
            mime_types=tuple(self.mime_types) if self.mime_types else None,
            doc_ids=tuple(self.doc_ids) if self.doc_ids else None,
            updated_after=self.updated_after,
            updated_before=self.updated_before,
        )


class SearchRequest(_Request):
    """A hybrid (dense + BM25) search over the caller's tenant's published index."""

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="The question.")
    top_k: int = Field(10, ge=1, le=100, description="Number of hits to return.")
    filters: SearchFiltersRequest = Field(default_factory=SearchFiltersRequest)

    @field_validator("query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query must not be blank")
        if "\x00" in v:
            raise ValueError("query must not contain NUL characters")
        return v


class QueryRequest(SearchRequest):
    """A question to answer with citations; ``stream`` selects Server-Sent Events."""

    stream: bool = Field(False, description="Stream the answer as Server-Sent Events.")


class HitPublic(BaseModel):
    """One retrieved chunk."""

    doc_id: str
    chunk_id: str
    title: str
    uri: str
    score: float
    text: str
    heading_path: list[str]
    page: int | None
    source_id: str

    @classmethod
    def from_hit(cls, hit: Hit) -> HitPublic:
        return cls(
            doc_id=hit.doc_id,
            chunk_id=hit.chunk_id,
            title=hit.title,
            uri=hit.uri,
            score=float(hit.score),
            text=hit.text,
            heading_path=list(hit.heading_path),
            page=hit.page,
            source_id=hit.source_id,
        )


class TimingsPublic(BaseModel):
    """Where the time went, in milliseconds (0 for stages a cache hit skipped)."""

    embed_ms: float = 0.0
    search_ms: float = 0.0
    answer_ms: float = 0.0
    total_ms: float = 0.0


class SearchPublic(BaseModel):
    """Ranked hits of a search."""

    query_id: str
    index_version: str
    cached: bool
    hits: list[HitPublic]
    timings: TimingsPublic


class CitationPublic(BaseModel):
    """The source of an ``[n]`` marker in the answer (``index`` is ``n``)."""

    index: int
    chunk_id: str
    doc_id: str
    title: str
    uri: str
    text: str
    page: int | None

    @classmethod
    def from_citation(cls, c: Citation) -> CitationPublic:
        return cls(
            index=c.index,
            chunk_id=c.chunk_id,
            doc_id=c.doc_id,
            title=c.title,
            uri=c.uri,
            text=c.text,
            page=c.page,
        )


class UsagePublic(BaseModel):
    """LLM tokens spent on the answer (0 for extractive answers)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class InjectionPublic(BaseModel):
    """The question's prompt-injection screening (``rag_platform.lib.injection``)."""

    score: float = Field(description="Detector score in [0, 1] (noisy-OR of matched patterns).")
    flagged: bool = Field(description="Whether the score reaches the tenant's threshold.")
    patterns: list[str] = Field(description="Names of the pattern families that matched.")


class QueryPublic(BaseModel):
    """An answer with ``[n]`` citation markers, its citations and the hits it was built from."""

    query_id: str
    index_version: str
    cached: bool
    answer: str
    mode: str = Field(description="`extractive` or `llm`.")
    model: str = Field(
        description="What answered: the tenant's model route name (the platform endpoint's "
        "model name when the tenant declares none), or `extractive`."
    )
    fallback: Literal["next_model", "extractive"] | None = Field(
        None,
        description="null when the first choice answered; `next_model` when a later model "
        "route did; `extractive` when every route failed.",
    )
    fallback_reason: str | None = Field(
        None,
        description="Why, route by route, e.g. `all models failed (primary: timeout; "
        "secondary: circuit open)`; null without a fallback.",
    )
    citations: list[CitationPublic]
    hits: list[HitPublic]
    grounded: bool = Field(
        description="False when the question was refused (answer: not found in the documents)."
    )
    refusal_reason: Literal["no_hits", "low_relevance", "injection"] | None = Field(
        None, description="Why it was refused; null when grounded."
    )
    relevance: float | None = Field(
        None, description="Dense cosine of the question and the best visible chunk."
    )
    injection: InjectionPublic
    usage: UsagePublic
    timings: TimingsPublic


class FeedbackRequest(_Request):
    """A rating of an earlier search or query of the same tenant."""

    query_id: str = Field(min_length=1, max_length=64)
    rating: int = Field(ge=1, le=5)
    type: Literal["relevance", "correctness", "citation", "other"] = "other"
    comment: str = Field("", max_length=2000)


class FeedbackPublic(BaseModel):
    feedback_id: str
    query_id: str


class ErrorBodyPublic(BaseModel):
    code: str
    message: str
    request_id: str
    details: list[dict[str, Any]] = Field(default_factory=list)


class ErrorPublic(BaseModel):
    """The one error shape of every 4xx and 5xx response."""

    error: ErrorBodyPublic


#: Error responses documented on every authenticated endpoint.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorPublic, "description": "Body is not valid JSON (or not UTF-8)."},
    401: {"model": ErrorPublic, "description": "Missing, unknown, revoked or expired API key."},
    413: {"model": ErrorPublic, "description": "Request body too large."},
    422: {"model": ErrorPublic, "description": "Invalid request."},
    429: {
        "model": ErrorPublic,
        "description": "Rate limit exceeded, too many concurrent streams, or (`/v1/query`) "
        "the monthly token budget is used up (`budget_exhausted`, details `resets_at`); "
        "see Retry-After.",
    },
    503: {"model": ErrorPublic, "description": "No published index, or a store is down."},
}


class LivePublic(BaseModel):
    status: Literal["ok"] = "ok"


class DependencyStatusPublic(BaseModel):
    status: Literal["ok", "down", "not_configured"]
    detail: str = ""


class ReadyPublic(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, DependencyStatusPublic]


class DocumentPublic(BaseModel):
    doc_id: str
    title: str
    uri: str
    source_id: str
    chunks: int


class DocumentsPublic(BaseModel):
    index_version: str
    count: int
    documents: list[DocumentPublic]


class FailedCheckPublic(BaseModel):
    """A blocking check that rejected an index version, with its reasons."""

    name: str
    reasons: list[str]


class IndexVersionPublic(BaseModel):
    version: str
    status: str = Field(
        description="building, built, published, retired, rejected (a blocking check failed: "
        "never publishable) or deleted."
    )
    documents: int | None = None
    chunks: int | None = None
    created_at: datetime | None = None
    published_at: datetime | None = None
    is_published: bool = False
    failed_checks: list[FailedCheckPublic] = Field(
        default_factory=list, description="Why a rejected version was rejected."
    )


class ReceiptPublic(BaseModel):
    """An index version's reconciliation receipt: the source inventory against its points."""

    version: str
    passed: bool = Field(description="All four mismatch counts are 0 (the publish condition).")
    documents: int = Field(description="Source documents expected in the index.")
    chunks: int = Field(description="Points read from the index.")
    documents_missing: int
    orphans: int = Field(description="Documents in the index that the sources no longer hold.")
    acl_mismatches: int
    chunk_count_mismatches: int
    quarantined: int = Field(description="Source documents held back by quarantine.")
    samples: dict[str, list[str]] = Field(description="Up to 10 example ids per kind.")


class ErasureRemovalPublic(BaseModel):
    where: str = Field(description="suppression_list, cache, asset, golden_candidates, ...")
    path: str = Field(description="File under RAG_HOME, or table.")
    items: int = Field(description="Rows, cache entries or vectors removed.")


class ErasureCheckPublic(BaseModel):
    name: str
    passed: bool
    detail: str


class ErasureVerificationPublic(BaseModel):
    passed: bool = Field(description="Nothing of the erased subject is left (every check).")
    checks: list[ErasureCheckPublic]


class ErasureReceiptPublic(BaseModel):
    """What an erasure removed, where, when and by whom; also written to the audit log."""

    erasure_id: str
    kind: str = Field(description="document or principal.")
    tenant: str
    subject: str = Field(description="The doc id or the principal (API key id).")
    actor: str
    at: datetime
    removed: list[ErasureRemovalPublic]
    removed_total: int
    verification: ErasureVerificationPublic
    pending: list[str] = Field(description="What a later step completes (e.g. the next index).")
    hashes: dict[str, list[str]] = Field(
        description="SHA-256 content hashes of the document and its chunks (what verify checks)."
    )


class ChunkLineagePublic(BaseModel):
    chunk_id: str
    cited: bool = Field(description="The answer cited it (else it was only retrieved).")
    found: bool = Field(description="The index version still holds it.")
    doc_id: str
    source_id: str
    uri: str
    title: str
    page: int | None
    content_hash: str = Field(description="SHA-256 of the chunk's embedded text.")


class LineageVersionPublic(BaseModel):
    version: str
    found: bool
    status: str | None
    created_at: datetime | None
    published_at: datetime | None
    index_fingerprint: str | None
    embedding: str | None


class LineageRunPublic(BaseModel):
    run_id: str | None = Field(description="The Dagster run that built the index version.")
    code_version: dict[str, str] | None = Field(
        description="Package version and git commit of the code that ran."
    )
    config_fingerprint: str | None = Field(description="Hash of the tenant's configuration.")


class LineagePublic(BaseModel):
    """A logged query traced back to its sources."""

    query_id: str
    tenant: str
    created_at: datetime
    index_version: str
    version: LineageVersionPublic
    run: LineageRunPublic
    chunks: list[ChunkLineagePublic]


class IndexVersionsPublic(BaseModel):
    published_version: str | None
    versions: list[IndexVersionPublic]


class RollbackRequest(_Request):
    version: str | None = Field(
        None,
        max_length=128,
        description="Version to publish; default: the version published before the current one.",
    )


class RollbackPublic(BaseModel):
    previous_version: str | None
    published_version: str


class ApiKeyPublic(BaseModel):
    """An API key's public record (never its secret or hash)."""

    key_id: str
    tenant: str
    name: str = ""
    groups: list[str] = Field(default_factory=list)
    role: str = "reader"
    created_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class ApiKeysPublic(BaseModel):
    keys: list[ApiKeyPublic]


class DocumentTextRequest(_Request):
    """A document given as text (``POST /v1/documents`` with ``application/json``)."""

    title: str = Field(..., min_length=1, max_length=500)
    text: str = Field(..., min_length=1)
    uri: str | None = Field(None, max_length=2000)
    acl_groups: list[str] | None = Field(None, max_length=64)


class DocumentAcceptedPublic(BaseModel):
    """An upload accepted: the document id it will have, and the job that syncs it."""

    doc_id: str
    job_id: str


class JobAcceptedPublic(BaseModel):
    """A deletion accepted: the job that syncs it."""

    job_id: str


class JobPublic(BaseModel):
    """An ingestion job and the Dagster run that syncs it.

    ``status``: ``queued`` (no run yet, or in the run queue), ``running`` (``stage`` is the
    step running, ``counts`` what the finished steps reported), ``published`` (the index
    version serving the change) or ``failed`` (``stage`` and ``error`` say where and why).
    """

    job_id: str
    run_id: str | None
    status: Literal["queued", "running", "published", "failed"]
    stage: str | None
    index_version: str | None
    error: str | None
    kind: Literal["upload", "delete"]
    doc_id: str
    counts: dict[str, dict[str, int]] = Field(default_factory=dict)


class WebhookDeliveryPublic(BaseModel):
    """One webhook delivery of the delivery log."""

    delivery_id: str
    event: str
    url: str
    run_id: str
    status: Literal["delivered", "failed"]
    attempts: int
    status_code: int | None
    error: str
    created_at: datetime


class WebhookDeliveriesPublic(BaseModel):
    deliveries: list[WebhookDeliveryPublic]


class ConversationCreateRequest(_Request):
    """A new conversation; ``title`` is optional (stored PII-masked)."""

    title: str = Field("", max_length=200)


class MessageRequest(_Request):
    """A user message: the first question or a follow-up (rewritten into a standalone question
    from the conversation's history before retrieval)."""

    content: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="The message.")
    top_k: int = Field(10, ge=1, le=100, description="Number of hits to retrieve.")
    filters: SearchFiltersRequest = Field(default_factory=SearchFiltersRequest)

    @field_validator("content")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("content must not be blank")
        if "\x00" in v:
            raise ValueError("content must not contain NUL characters")
        return v


class MessagePublic(BaseModel):
    """One stored turn (text as stored: PII-masked)."""

    ordinal: int
    role: Literal["user", "assistant"]
    content: str
    standalone_question: str | None = Field(
        None, description="For a user message: the standalone question it was rewritten into."
    )
    rewrite: str | None = Field(None, description="`none`, `rule` or `llm` (user messages).")
    query_id: str | None = None
    citations: list[str] = Field(default_factory=list, description="Cited chunk ids.")
    created_at: datetime


class ConversationPublic(BaseModel):
    """A conversation of the caller, with its messages, oldest first."""

    conversation_id: str
    title: str
    created_at: datetime
    updated_at: datetime
    messages: list[MessagePublic]


class ConversationAnswerPublic(BaseModel):
    """The answer to one message: the standalone question retrieved for, the answer with
    ``[n]`` citations, and the hits."""

    conversation_id: str
    query_id: str
    index_version: str
    question: str
    standalone_question: str
    rewrite: Literal["none", "rule", "llm"]
    answer: str
    mode: str
    cached: bool
    citations: list[CitationPublic]
    hits: list[HitPublic]
    usage: UsagePublic
    timings: TimingsPublic


class RetrievedChunkPublic(BaseModel):
    """A chunk a candidate's query retrieved (document, title and text empty when the index
    version that answered is gone)."""

    chunk_id: str
    doc_id: str = ""
    title: str = ""
    text: str = ""


class GoldenCandidatePublic(BaseModel):
    """A low-rated query proposed for the golden set, and its review."""

    candidate_id: str
    query_id: str
    question: str = Field(description="As logged: PII-masked.")
    retrieved: list[RetrievedChunkPublic]
    index_version: str
    rating: int
    comment: str
    status: Literal["pending", "accepted", "rejected"]
    relevant_doc_ids: list[str]
    reference_answer: str
    reviewer: str
    reviewed_at: datetime | None
    created_at: datetime


class GoldenCandidatesPublic(BaseModel):
    candidates: list[GoldenCandidatePublic]


class CandidateAcceptRequest(_Request):
    """Accepting a candidate: the documents that answer its question and/or the reviewed
    answer (at least one)."""

    relevant_doc_ids: list[str] = Field(default_factory=list, max_length=100)
    reference_answer: str = Field("", max_length=20_000)
