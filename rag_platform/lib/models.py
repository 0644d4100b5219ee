"""Shared data contracts between the pipeline stages, the index, retrieval and serving.

Plain dataclasses with no orchestrator import. Identity follows DESIGN.md:
``doc_id = uuid5(uuid5(NAMESPACE, tenant), source_id + ":" + native_id)`` and
``chunk_id = uuid5(doc_id, f"{ordinal}:{content_hash}")``; the Qdrant point id is the chunk id.

The pipeline stages pass pandas frames (one row per document unless noted):

- sources (:data:`SOURCE_COLUMNS`): doc_id, tenant, source_id, native_id, uri, title, mime_type,
  content (bytes|None), text (str|None), content_hash, acl_groups (list[str]), updated_at (ISO
  str, "" when the source has no date), metadata (JSON str), change ("added" | "changed" |
  "unchanged").
- parsed / masked (:data:`DOC_COLUMNS`; masked adds ``masked_hash``): doc_id, tenant,
  source_id, uri, title, mime_type, content_hash, acl_groups, updated_at, sections (JSON list of
  ``{text, heading_path, page}``, see :func:`sections_to_json`).
- chunks (:data:`CHUNK_COLUMNS`, one row per chunk): chunk_id, doc_id, tenant, ordinal, text,
  embedding_text, token_count, content_hash, heading_path, page, title, uri, source_id,
  mime_type, acl_groups, updated_at.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal, TypedDict

#: Root namespace of every id this platform derives (uuid5 of the project URL).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/rag-platform/rag-platform")


SOURCE_COLUMNS = [
    "doc_id",
    "tenant",
    "source_id",
    "native_id",
    "uri",
    "title",
    "mime_type",
    "content",
    "text",
    "content_hash",
    "acl_groups",
    "updated_at",
    "metadata",
    "change",
]
DOC_COLUMNS = [
    "doc_id",
    "tenant",
    "source_id",
    "uri",
    "title",
    "mime_type",
    "content_hash",
    "acl_groups",
    "updated_at",
    "sections",
]
MASKED_COLUMNS = [*DOC_COLUMNS, "masked_hash"]
CHUNK_COLUMNS = [
    "chunk_id",
    "doc_id",
    "tenant",
    "ordinal",
    "text",
    "embedding_text",
    "token_count",
    "content_hash",
    "heading_path",
    "page",
    "title",
    "uri",
    "source_id",
    "mime_type",
    "acl_groups",
    "updated_at",
]

#: A value of a stage's statistics (counts, seconds, rates, names).
StatValue = int | float | str | None


def tenant_namespace(tenant: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, tenant)


def make_doc_id(tenant: str, source_id: str, native_id: str) -> str:
    """Stable document id: ``uuid5(uuid5(NAMESPACE, tenant), source_id + ":" + native_id)``."""
    return str(uuid.uuid5(tenant_namespace(tenant), f"{source_id}:{native_id}"))


def make_chunk_id(doc_id: str, ordinal: int, content_hash: str) -> str:
    """Stable chunk id ``uuid5(doc_id, f"{ordinal}:{content_hash}")``; also the Qdrant point id."""
    return str(uuid.uuid5(uuid.UUID(doc_id), f"{ordinal}:{content_hash}"))


def sha256_hex(data: bytes | str) -> str:
    """Hex SHA-256 of bytes, or of a string encoded as UTF-8."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


@dataclass
class SourceDocument:
    """One document as a connector yields it, before parsing.

    Exactly one of ``content`` (raw bytes of a file) and ``text`` (already plain text, e.g. a
    dataset row) is set. ``acl_groups`` are the groups allowed to see the document; they are not
    part of the content hash, so changing them never re-embeds. ``version`` is the source's own
    change token (ETag, blob sha, ``updated_at``, object version, Last-Modified; None when the
    source has none): a connector compares it with the manifest's to skip fetching unchanged
    items.
    """

    source_id: str
    native_id: str
    uri: str
    title: str
    mime_type: str
    content: bytes | None = None
    text: str | None = None
    acl_groups: list[str] = field(default_factory=lambda: ["all"])
    updated_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    version: str | None = None

    @property
    def content_hash(self) -> str:
        """SHA-256 of the bytes, or of the text (title included for text rows)."""
        if self.content is not None:
            return sha256_hex(self.content)
        return sha256_hex(f"{self.title}\n{self.text or ''}")


@dataclass
class Section:
    """A structural unit of a parsed document: its heading path, text and page (1-based)."""

    text: str
    heading_path: list[str] = field(default_factory=list)
    page: int | None = None


@dataclass
class ParsedDocument:
    """Text with structure, as a parser returns it."""

    sections: list[Section]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections if s.text)


class SectionRecord(TypedDict):
    """One section as the frames and caches store it (JSON)."""

    text: str
    heading_path: list[str]
    page: int | None


def section_records(sections: Iterable[Section]) -> list[SectionRecord]:
    """Sections as JSON-ready records; ``json.dumps`` of the list is a frame's ``sections``."""
    return [
        {"text": s.text, "heading_path": list(s.heading_path), "page": s.page} for s in sections
    ]


def sections_from_json(raw: str | list[SectionRecord]) -> list[Section]:
    """Sections back from a frame's ``sections`` JSON text or from cached records."""
    items: list[SectionRecord] = json.loads(raw) if isinstance(raw, str) else raw
    return [
        Section(text=i["text"], heading_path=list(i.get("heading_path") or []), page=i.get("page"))
        for i in items
    ]


def acl_key(groups: Iterable[str]) -> str:
    """Canonical string of a set of ACL groups (sorted, comma-joined), for diffs and hashes."""
    return ",".join(sorted(set(groups)))


@dataclass
class StageStats:
    """Counts and wall time of one stage run.

    Attributes:
        processed: items computed in this run.
        reused: items taken from the stage's content cache.
        failed: items quarantined.
        seconds: wall time of the run (seconds).
        extra: stage-specific figures (e.g. ``embedded``, ``tokens``, ``chunks_per_s``).
    """

    processed: int = 0
    reused: int = 0
    failed: int = 0
    seconds: float = 0.0
    extra: dict[str, StatValue] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, StatValue]:
        """The counts, the seconds and ``extra`` as one flat mapping (asset metadata)."""
        return {**{k: v for k, v in asdict(self).items() if k != "extra"}, **self.extra}


@dataclass
class Quarantined:
    """A document the pipeline could not process, with the stage and the reason."""

    doc_id: str
    uri: str
    stage: Literal["parse", "mask", "chunk", "injection"]
    reason: str


@dataclass
class Chunk:
    """A token-bounded piece of one document, the unit of embedding and retrieval."""

    chunk_id: str
    doc_id: str
    ordinal: int
    text: str
    token_count: int
    content_hash: str
    heading_path: list[str] = field(default_factory=list)
    page: int | None = None


@dataclass(frozen=True)
class SearchFilters:
    """Filters applied *inside* the index query.

    ``acl_groups`` is mandatory: the principal's groups; a chunk is visible when it shares at least
    one group. The others are optional user filters added on top, except ``exclude_doc_ids``:
    documents that must never match (the tenant's erased documents, added by the API).
    """

    acl_groups: tuple[str, ...]
    source_ids: tuple[str, ...] | None = None
    mime_types: tuple[str, ...] | None = None
    doc_ids: tuple[str, ...] | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    exclude_doc_ids: tuple[str, ...] | None = None


@dataclass
class Hit:
    """One retrieved chunk with its payload and fused score (higher is better)."""

    chunk_id: str
    doc_id: str
    tenant: str
    text: str
    score: float
    title: str = ""
    uri: str = ""
    source_id: str = ""
    heading_path: list[str] = field(default_factory=list)
    page: int | None = None
    acl_groups: list[str] = field(default_factory=list)
    updated_at: str | None = None


@dataclass
class Citation:
    """A sentence of an answer and the chunk it comes from."""

    index: int
    chunk_id: str
    doc_id: str
    title: str
    uri: str
    text: str
    page: int | None = None


@dataclass
class Answer:
    """An answer with its citations; ``text`` carries ``[n]`` markers that index ``citations``.

    ``model`` names what answered: a model route's name (see
    :class:`~rag_platform.lib.tenants.ModelRoute`), ``"extractive"``, or ``""`` when the
    answerer does not say. ``fallback`` is None when the first choice answered, ``"next_model"``
    when a later route of the list did, ``"extractive"`` when every route failed; then
    ``fallback_reason`` says why, route by route (``"primary: timeout; secondary: circuit
    open"``).
    """

    text: str
    citations: list[Citation]
    mode: str  # "extractive" or "llm"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    fallback: str | None = None
    fallback_reason: str | None = None


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key's (or an OIDC token's) tenant, ACL groups and role.

    ``key_id`` is the API key's id, or for a single-sign-on user the 12-character id derived
    from the token's issuer and subject (``name`` is then the subject).
    """

    key_id: str
    tenant: str
    groups: tuple[str, ...]
    role: str  # "reader" | "writer" | "admin"
    name: str = ""
    auth: Literal["api_key", "oidc"] = "api_key"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def actor(self) -> str:
        """Who this is in the audit log: ``key:<key_id>`` or ``oidc:<subject>``."""
        return f"oidc:{self.name}" if self.auth == "oidc" else f"key:{self.key_id}"

    @property
    def can_write(self) -> bool:
        """Whether the key may upload and delete documents (role ``writer`` or ``admin``)."""
        return self.role in ("writer", "admin")
