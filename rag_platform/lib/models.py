"""Shared data contracts between the pipeline stages, the index, retrieval and serving.

Plain dataclasses with no orchestrator import. Identity follows DESIGN.md:
``doc_id = uuid5(uuid5(NAMESPACE, tenant), source_id + ":" + native_id)`` and
``chunk_id = uuid5(doc_id, f"{ordinal}:{content_hash}")``; the Qdrant point id is the chunk id.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: Root namespace of every id this platform derives (uuid5 of the project URL).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/rag-platform/rag-platform")


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
    part of the content hash, so changing them never re-embeds.
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
    one group. The others are optional user filters added on top.
    """

    acl_groups: tuple[str, ...]
    source_ids: tuple[str, ...] | None = None
    mime_types: tuple[str, ...] | None = None
    doc_ids: tuple[str, ...] | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None


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
    """An answer with its citations; ``text`` carries ``[n]`` markers that index ``citations``."""

    text: str
    citations: list[Citation]
    mode: str  # "extractive" or "llm"
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key's tenant, ACL groups and role."""

    key_id: str
    tenant: str
    groups: tuple[str, ...]
    role: str  # "reader" | "admin"
    name: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"
