"""Right of access and portability: everything the platform stores about a tenant or a
principal, as one JSON Lines archive.

Each line is one JSON object with a ``type`` field:

- ``export`` (first line): ``scope`` (``tenant`` | ``principal``), ``tenant``, ``principal``,
  ``created_at``, ``format`` (``rag-platform-export/1``);
- ``tenant``: the tenant row and its registry configuration;
- ``document``: one per document of the published index version (id, source, URI, title, MIME
  type, ACL groups, ``updated_at``, chunk count);
- ``chunk``: one per chunk as indexed (the PII-masked text, heading path, page, ordinal);
- ``api_key``: key metadata (id, name, groups, role, dates; never the secret or its hash);
- ``query``: query-log rows (the masked question, cited and hit chunk ids, index version,
  timings); ``feedback``: ratings and comments (its kind as ``feedback_type``);
- ``conversation``: conversations with their messages (PII-masked as stored: role, content,
  standalone question, query id, cited chunk ids);
- ``golden_candidate``: golden-set candidates made from the tenant's (the principal's) rated
  queries, with their review;
- ``index_version``: every index version with its details (run id, receipt);
- ``suppression``: erased documents still on the suppression list;
- ``audit``: audit-log rows (of the tenant; for a principal, those it made, ``actor``
  ``key:<id>``);
- ``summary`` (last line): the number of records per type.

A principal's archive holds its key, its queries, the feedback it gave, its conversations, the
golden-set candidates made from its queries and its audit rows.
Datetimes are ISO 8601 UTC strings.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from typing import IO, Any, Literal

from rag_platform.lib.index.backend import IndexBackend
from rag_platform.lib.store import MetadataStore
from rag_platform.lib.tenants import TenantConfig

#: The archive format, written in the first line.
EXPORT_FORMAT = "rag-platform-export/1"

Record = dict[str, Any]


def _record(type: str, obj: Any) -> Record:
    """``{"type": type, **fields}``; a field named ``type`` (feedback's kind) becomes
    ``<type>_type`` (``feedback_type``), so the record type is never overwritten."""
    data = asdict(obj) if not isinstance(obj, dict) else dict(obj)
    if "type" in data:
        data[f"{type}_type"] = data.pop("type")
    return {"type": type, **data}


def to_json_line(record: Record) -> str:
    """One archive line (no trailing newline): compact JSON, datetimes as ISO strings."""
    return json.dumps(record, default=_default, ensure_ascii=False, separators=(",", ":"))


def _default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class Exporter:
    """Builds export archives from the metadata store and the published index version.

    Args:
        store: the metadata store (migrated).
        backend: the index backend (the published version's payloads hold the documents'
            metadata and text as indexed).
    """

    def __init__(self, store: MetadataStore, backend: IndexBackend) -> None:
        self.store = store
        self.backend = backend

    def _header(self, scope: Literal["tenant", "principal"], tenant: str, principal: str) -> Record:
        return {
            "type": "export",
            "format": EXPORT_FORMAT,
            "scope": scope,
            "tenant": tenant,
            "principal": principal or None,
            "created_at": datetime.now(UTC).isoformat(),
        }

    def tenant_records(self, tenant: TenantConfig) -> Iterator[Record]:
        """Every record of the tenant's archive (see the module docstring), summary last."""
        tid = tenant.id
        counts: Counter[str] = Counter()

        def body() -> Iterator[Record]:
            yield {"type": "tenant", "tenant": tid, "config": tenant.model_dump(mode="json")}
            yield from self._documents(tid)
            for key in self.store.list_api_keys(tid):
                yield _record("api_key", key)
            for query in self.store.list_queries(tid):
                yield _record("query", query)
            for feedback in self.store.list_feedback(tid):
                yield _record("feedback", feedback)
            for conversation in self.store.conversations.find(tid):
                yield _record("conversation", conversation)
            for candidate in self.store.golden_candidates.find(tid):
                yield _record("golden_candidate", candidate)
            for version in self.store.list_versions(tid):
                yield _record("index_version", version)
            for suppression in self.store.list_suppressions(tid):
                yield _record("suppression", suppression)
            for entry in self.store.list_audit(tid):
                yield _record("audit", entry)

        yield self._header("tenant", tid, "")
        for record in body():
            counts[record["type"]] += 1
            yield record
        yield {"type": "summary", "counts": dict(counts)}

    def principal_records(self, tenant: str, principal: str) -> Iterator[Record]:
        """Every record of a principal's archive: its API key, its queries, the feedback it
        gave, its conversations, the golden-set candidates of its queries, the audit rows it
        made (actor ``key:<principal>``); summary last.

        Raises:
            KeyError: no API key ``principal`` in ``tenant``.
        """
        keys = [k for k in self.store.list_api_keys(tenant) if k.key_id == principal]
        if not keys:
            raise KeyError(f"no API key {principal!r} in tenant {tenant!r}")
        counts: Counter[str] = Counter()

        def body() -> Iterator[Record]:
            yield _record("api_key", keys[0])
            for query in self.store.list_queries(tenant):
                if query.key_id == principal:
                    yield _record("query", query)
            for feedback in self.store.list_feedback(tenant):
                if feedback.key_id == principal:
                    yield _record("feedback", feedback)
            for conversation in self.store.conversations.find(tenant, principal):
                yield _record("conversation", conversation)
            for candidate in self.store.golden_candidates.find(tenant):
                if candidate.key_id == principal:
                    yield _record("golden_candidate", candidate)
            for entry in self.store.list_audit(tenant):
                if entry.actor == f"key:{principal}":
                    yield _record("audit", entry)

        yield self._header("principal", tenant, principal)
        for record in body():
            counts[record["type"]] += 1
            yield record
        yield {"type": "summary", "counts": dict(counts)}

    def _documents(self, tenant: str) -> Iterator[Record]:
        """``document`` records, then ``chunk`` records, of the published version (erased
        documents left out)."""
        published = self.store.get_published_version(tenant)
        erased = self.store.suppressed_doc_ids(tenant)
        if published is None or not self.backend.exists(published.path):
            return
        docs: dict[str, Record] = {}
        with self.backend.acquire(tenant, published.version, published.path) as reader:
            chunks: list[Record] = []
            for point_id, p in reader.payloads():
                doc_id = str(p.get("doc_id", ""))
                if p.get("tenant") != tenant or doc_id in erased:
                    continue
                doc = docs.setdefault(
                    doc_id,
                    {
                        "type": "document",
                        "doc_id": doc_id,
                        "index_version": published.version,
                        "source_id": p.get("source_id", ""),
                        "uri": p.get("uri", ""),
                        "title": p.get("title", ""),
                        "mime_type": p.get("mime_type", ""),
                        "acl_groups": list(p.get("acl_groups") or []),
                        "updated_at": p.get("updated_at"),
                        "chunks": 0,
                    },
                )
                doc["chunks"] += 1
                chunks.append(
                    {
                        "type": "chunk",
                        "chunk_id": point_id,
                        "doc_id": doc_id,
                        "ordinal": p.get("ordinal"),
                        "text": p.get("text", ""),
                        "heading_path": list(p.get("heading_path") or []),
                        "page": p.get("page"),
                    }
                )
        yield from sorted(docs.values(), key=lambda d: str(d["doc_id"]))
        yield from sorted(chunks, key=lambda c: (str(c["doc_id"]), c["ordinal"] or 0))


def write_jsonl(records: Iterable[Record], out: IO[str]) -> dict[str, int]:
    """Writes records as JSON Lines to ``out``.

    Returns:
        The ``summary`` record's counts (records per type).
    """
    counts: dict[str, int] = {}
    for record in records:
        out.write(to_json_line(record) + "\n")
        if record.get("type") == "summary":
            counts = dict(record["counts"])
    return counts
