"""Lineage: from an answered query back to its sources, in one call.

For a logged query (``query_log``: the cited and hit chunk ids and the index version it was
answered from), :class:`QueryLineage` returns each chunk's document, source, URI, content hash,
title and page as the index version holds them (read from the version's shard payloads), the
version itself, the Dagster run that built it, and that run's code version (package version and
git commit) and configuration fingerprint (a hash of the tenant's registry entry), all recorded
in the version's details when it was built (:func:`build_provenance`).
"""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import lru_cache
from importlib import metadata
from typing import Any

from rag_platform.lib.cache import config_hash
from rag_platform.lib.index.backend import IndexBackend
from rag_platform.lib.store import MetadataStore
from rag_platform.lib.store.schema import JSONObject
from rag_platform.lib.tenants import TenantConfig
from rag_platform.settings import PROJECT_ROOT

#: Distribution name of this package (its version is the code version).
PACKAGE = "rag-platform"


def _git(*args: str) -> str:
    """The stripped output of ``git <args>`` in the checkout (raises when git fails)."""
    done = subprocess.run(
        ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5, check=True
    )
    return done.stdout.strip()


@lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """The running code: ``{"package": "<name>==<version>", "git_commit": "<sha or ''>"}``.

    The commit is ``git rev-parse HEAD`` of the checkout (empty when the code is not a git
    checkout, or git is missing); ``git_dirty`` is ``"true"`` when tracked files differ from it.
    """
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    out = {"package": f"{PACKAGE}=={version}", "git_commit": "", "git_dirty": ""}
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return out
    out["git_commit"] = commit
    out["git_dirty"] = "true" if dirty else "false"
    return out


def build_provenance(tenant: TenantConfig) -> JSONObject:
    """What an index build records for lineage: ``code_version`` (:func:`code_version`) and
    ``config_fingerprint`` (16 hex characters of the SHA-256 of the tenant's configuration)."""
    return {"code_version": code_version(), "config_fingerprint": config_hash(tenant)}


@dataclass
class ChunkLineage:
    """One chunk of an answer: where it came from.

    Attributes:
        chunk_id: the chunk (point) id.
        cited: whether the answer cited it (else it was only retrieved).
        found: whether the index version still holds it (False once the version was garbage
            collected or the chunk's document erased).
        doc_id, source_id, uri, title, page: the document and place, as indexed.
        content_hash: SHA-256 of the chunk's embedded text ("" for versions built before it
            was recorded).
    """

    chunk_id: str
    cited: bool
    found: bool
    doc_id: str = ""
    source_id: str = ""
    uri: str = ""
    title: str = ""
    page: int | None = None
    content_hash: str = ""


@dataclass
class Lineage:
    """A query's lineage: the query, its index version and how it was built, its chunks."""

    query_id: str
    tenant: str
    created_at: datetime
    index_version: str
    version: dict[str, Any]
    run: dict[str, Any]
    chunks: list[ChunkLineage] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "tenant": self.tenant,
            "created_at": self.created_at.isoformat(),
            "index_version": self.index_version,
            "version": self.version,
            "run": self.run,
            "chunks": [asdict(c) for c in self.chunks],
        }


class QueryLineage:
    """Looks up a query's lineage.

    Args:
        store: the metadata store.
        backend: the index backend (the version's shard payloads).
    """

    def __init__(self, store: MetadataStore, backend: IndexBackend) -> None:
        self.store = store
        self.backend = backend

    def run(self, query_id: str, tenant: str | None = None) -> Lineage:
        """The lineage of ``query_id``.

        Args:
            query_id: a logged query id.
            tenant: when given, the query must belong to it (the admin API's scope).

        Raises:
            KeyError: no such query (or not of ``tenant``: the message does not say which).
        """
        query = self.store.get_query(query_id)
        if query is None or (tenant is not None and query.tenant != tenant):
            raise KeyError(f"no query {query_id!r}")
        cited = list(dict.fromkeys(query.cited_chunk_ids))
        ids = list(dict.fromkeys([*cited, *query.hit_chunk_ids]))
        version = self.store.get_version(query.tenant, query.index_version)
        details = version.details if version is not None else {}
        payloads: dict[str, dict[str, Any]] = {}
        if version is not None and ids and self.backend.exists(version.path):
            erased = self.store.suppressed_doc_ids(query.tenant)
            with self.backend.acquire(query.tenant, version.version, version.path) as reader:
                for point in reader.get_points(ids):
                    if point.payload.get("doc_id") not in erased:
                        payloads[point.id] = point.payload
        chunks = []
        for chunk_id in ids:
            p = payloads.get(chunk_id)
            chunks.append(
                ChunkLineage(
                    chunk_id=chunk_id,
                    cited=chunk_id in cited,
                    found=p is not None,
                    doc_id=str((p or {}).get("doc_id", "")),
                    source_id=str((p or {}).get("source_id", "")),
                    uri=str((p or {}).get("uri", "")),
                    title=str((p or {}).get("title", "")),
                    page=(p or {}).get("page"),
                    content_hash=str((p or {}).get("content_hash", "")),
                )
            )
        return Lineage(
            query_id=query.query_id,
            tenant=query.tenant,
            created_at=query.created_at,
            index_version=query.index_version,
            version={
                "version": query.index_version,
                "found": version is not None,
                "status": version.status if version else None,
                "created_at": version.created_at.isoformat() if version else None,
                "published_at": version.published_at.isoformat()
                if version and version.published_at
                else None,
                "index_fingerprint": version.config_hash if version else None,
                "embedding": details.get("embedding"),
            },
            run={
                "run_id": details.get("run_id") or None,
                "code_version": details.get("code_version"),
                "config_fingerprint": details.get("config_fingerprint"),
            },
            chunks=chunks,
        )
