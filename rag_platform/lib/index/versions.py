"""Index versions of a tenant: build-or-reuse, publish, and garbage collection of old versions.

A build writes a new version through the platform's
:class:`~rag_platform.lib.index.backend.IndexBackend` (a Qdrant Edge shard directory
``<index_dir>/<tenant>/<version>``, or a Qdrant server collection ``kb_<tenant>_<version>``)
holding every current chunk (dense vector from the embedding cache, BM25 sparse vector,
payload) and registers it in the metadata store with status ``built``. When the chunks, payloads
and model are those of the published version (same :func:`index_fingerprint`), that version is
reused and nothing is written. Publishing is one store transaction (and, on the server, the
tenant's alias switched to the version's collection); afterwards the published version and the
``versions_kept - 1`` versions published before it stay for rollback, and older versions no
reader holds are deleted (Edge: see :func:`gc_versions`).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pandas as pd

from rag_platform.lib.embedding import SparseEncoder
from rag_platform.lib.embedding.stage import EmbeddingSet
from rag_platform.lib.index.edge import IndexPoint, make_payload, shard_lock_path
from rag_platform.lib.index.receipt import InventoryDocument, Payload, Receipt, reconcile
from rag_platform.lib.models import acl_key
from rag_platform.lib.progress import ProgressCallback, no_progress

if TYPE_CHECKING:
    from rag_platform.lib.index.backend import IndexBackend
    from rag_platform.lib.store import IndexVersion, MetadataStore
    from rag_platform.lib.store.schema import JSONObject

log = logging.getLogger(__name__)

#: Bump when the index payload or point layout changes.
INDEX_SCHEMA_VERSION = "1"
#: Suffix of a version's reader lock file beside its directory.
LOCK_SUFFIX = ".readers.lock"
#: Dimension of an empty shard (no chunk gave a vector to measure): all-MiniLM-L6-v2's.
DEFAULT_DIMENSION = 384


def index_fingerprint(chunks: pd.DataFrame, model_name: str, extra: str = "") -> str:
    """SHA-256 over everything an index version holds: chunk ids, content, ACL, payload, model.

    Two builds with the same fingerprint would produce the same index, so the second is skipped.
    Row order does not matter.
    """
    h = hashlib.sha256()
    h.update(f"{INDEX_SCHEMA_VERSION}|{model_name}|{extra}\n".encode())
    for r in chunks.sort_values("chunk_id").itertuples(index=False):
        h.update(
            f"{r.chunk_id}|{r.content_hash}|{acl_key(r.acl_groups)}|{r.uri}|{r.title}|"
            f"{r.updated_at}|{r.source_id}|{r.page}\n".encode()
        )
    return h.hexdigest()


def new_version_id() -> str:
    """Sortable, unique index version id (UTC timestamp with microseconds)."""
    return "v" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def directory_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (bytes)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class VersionRow(Protocol):
    """What :func:`versions_to_keep` reads of a store's index-version row."""

    @property
    def version(self) -> str: ...

    @property
    def status(self) -> str: ...


def versions_to_keep(versions: Sequence[VersionRow], published: str, kept: int) -> set[str]:
    """The index versions of one tenant whose shards must stay on disk after ``published`` is
    published.

    Kept: ``published``; the newest ``kept - 1`` versions that were published before
    (status ``retired``: the rollback targets); and builds newer than ``published`` that are
    not published yet (``building`` or ``built``: a concurrent run still writing or evaluating
    them). Builds older than
    ``published`` that never got published (e.g. stopped by the evaluation gate) do not take a
    rollback slot; they and older retired versions may go.

    Args:
        versions: the tenant's versions, newest first (``MetadataStore.list_versions``).
        published: the version just published.
        kept: ``RAG_VERSIONS_KEPT`` (>= 1), counting ``published``.

    Raises:
        ValueError: ``kept`` < 1.
    """
    if kept < 1:
        raise ValueError(f"kept must be >= 1, got {kept}")
    keep = {published}
    names = [v.version for v in versions]
    newer = names[: names.index(published)] if published in names else []
    keep.update(
        v.version for v in versions if v.version in newer and v.status in ("building", "built")
    )
    retired = [v.version for v in versions if v.status == "retired" and v.version != published]
    keep.update(retired[: kept - 1])
    return keep


def delete_shard(path: Path) -> bool:
    """Deletes one version directory and its lock file unless the version is in use.

    A version is in use when its lock file cannot be locked exclusively without blocking (a
    reader or writer, in this or any other process, holds it shared).

    Returns:
        True when the directory was deleted; False when it is in use or does not exist.
    """
    if not path.is_dir():
        return False
    lock_path = shard_lock_path(path)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("version %s is in use; not deleted", path)
            return False
        shutil.rmtree(path)
        lock_path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def gc_versions(tenant_dir: Path, keep: set[str]) -> list[str]:
    """Deletes the version directories of one tenant that are not in ``keep`` and not in use
    (:func:`delete_shard`: a version in use is skipped and left for a later run). Lock files
    whose directory is gone are removed.

    Args:
        tenant_dir: ``index_dir / <tenant>``, holding one directory per version.
        keep: version names never deleted (published, rollback targets, in progress).

    Returns:
        The names of the deleted versions, sorted.
    """
    tenant_dir = Path(tenant_dir)
    if not tenant_dir.is_dir():
        return []
    deleted = [
        child.name
        for child in sorted(tenant_dir.iterdir())
        if child.is_dir() and child.name not in keep and delete_shard(child)
    ]
    for lock_file in tenant_dir.glob(f"*{LOCK_SUFFIX}"):
        name = lock_file.name[: -len(LOCK_SUFFIX)]
        if name not in keep and not (tenant_dir / name).exists():
            lock_file.unlink(missing_ok=True)
    return deleted


@dataclass
class IndexBuild:
    """The version :meth:`IndexVersions.build_or_reuse` produced or reused.

    Attributes:
        version, path: the version name and its location (shard directory or collection).
        fingerprint: :func:`index_fingerprint` of the chunks.
        reused: True when the published version already held exactly these chunks.
        documents, chunks: distinct documents and chunks (points) in the version.
        seconds: build time (0 when reused).
        bytes: size on disk (None when reused, or unknown: the server backend).
        points_per_s: build throughput (None when reused).
        previous_published: the version published before the build, if any.
    """

    version: str
    path: str
    fingerprint: str
    reused: bool
    documents: int
    chunks: int
    seconds: float = 0.0
    bytes: int | None = None
    points_per_s: float | None = None
    previous_published: str | None = None

    def summary(self) -> dict[str, str | int | bool]:
        """What downstream assets read of the build (the ``search_index`` value)."""
        return {
            "version": self.version,
            "path": self.path,
            "fingerprint": self.fingerprint,
            "reused": self.reused,
            "documents": self.documents,
            "chunks": self.chunks,
        }


@dataclass
class PublishResult:
    """What :meth:`IndexVersions.publish` did.

    Attributes:
        version: the version now served.
        published_now: False when it was already the published version.
        previous: the version served before, if any.
        kept: versions that stay stored.
        deleted: versions garbage-collected now.
        receipt: the version's reconciliation receipt (None for a version built before
            receipts existed).
    """

    version: str
    published_now: bool
    previous: str | None
    kept: set[str]
    deleted: list[str]
    receipt: Receipt | None = None


class IndexVersions:
    """Build-or-reuse, publish and garbage collection of a platform's index versions.

    Args:
        store: the metadata store (versions table, audit log).
        backend: where versions live (:func:`~rag_platform.lib.index.backend.open_backend`).
        reports_dir: ``RAG_HOME/reports``; a version's evaluation report is marked published.
        versions_kept: ``RAG_VERSIONS_KEPT`` (>= 1), the published version included.
        batch_size: points written per upsert.
    """

    def __init__(
        self,
        store: MetadataStore,
        backend: IndexBackend,
        reports_dir: Path,
        versions_kept: int,
        batch_size: int = 512,
    ) -> None:
        self.store = store
        self.backend = backend
        self.reports_dir = reports_dir
        self.versions_kept = versions_kept
        self.batch_size = batch_size

    def build_or_reuse(
        self,
        tenant: str,
        chunks: pd.DataFrame,
        embeddings: EmbeddingSet,
        run_id: str = "",
        actor: str = "pipeline",
        provenance: JSONObject | None = None,
        progress: ProgressCallback | None = None,
    ) -> IndexBuild:
        """A version holding every chunk: the published one when its fingerprint matches,
        else a new version: registered ``building`` before it is written, ``built`` once it is
        complete, ``rejected`` (reason ``build``) when writing fails.

        Args:
            tenant: tenant id.
            chunks: the chunks frame (``CHUNK_COLUMNS``).
            embeddings: a vector for every chunk's content hash; ``embeddings.model`` is part
                of the fingerprint.
            run_id: recorded in the version's details.
            actor: recorded in the audit log with each transition.
            provenance: recorded in the version's details too, for lineage (the code version
                and the tenant configuration's fingerprint,
                :func:`rag_platform.lib.lifecycle.lineage.build_provenance`).
            progress: called with ``(chunks written, chunks)`` after every batch of points
                (not called when the published version is reused).

        Raises:
            KeyError: a chunk's content hash has no embedding. A failed build leaves no shard
                directory (or collection) behind.
        """
        self.store.upsert_tenant(tenant)
        fingerprint = index_fingerprint(chunks, embeddings.model)
        published = self.store.get_published_version(tenant)
        documents = int(chunks["doc_id"].nunique()) if len(chunks) else 0
        if published is not None and published.config_hash == fingerprint:
            log.info("index of %s unchanged: reusing version %s", tenant, published.version)
            return IndexBuild(
                published.version, published.path, fingerprint, True, documents, len(chunks)
            )
        version = new_version_id()
        location = self.backend.location(tenant, version)
        # Registered before the first point is written: a run killed mid-build leaves a
        # ``building`` row that garbage collection later rejects and deletes, never a shard the
        # store does not know.
        self.store.register_version(
            tenant,
            version,
            location,
            documents=documents,
            chunks=len(chunks),
            config_hash=fingerprint,
            details={"run_id": run_id, "embedding": embeddings.model, **(provenance or {})},
            actor=actor,
        )
        start = time.perf_counter()
        try:
            self._write_version(tenant, version, chunks, embeddings, progress or no_progress)
        except BaseException as exc:
            try:
                self.backend.delete(tenant, version)
            except Exception:  # the rejection below matters more; GC retries the delete
                log.exception("removing the failed build %s of %s failed", version, tenant)
            reason = f"{type(exc).__name__}: {exc}"
            self.store.reject_version(tenant, version, [{"name": "build", "reasons": [reason]}])
            raise
        seconds = time.perf_counter() - start
        size = self.backend.size_bytes(location)
        self.store.mark_version_built(tenant, version, {"bytes": size}, actor=actor)
        return IndexBuild(
            version,
            location,
            fingerprint,
            False,
            documents,
            len(chunks),
            seconds=seconds,
            bytes=size,
            points_per_s=round(len(chunks) / max(seconds, 1e-9), 1),
            previous_published=published.version if published else None,
        )

    def _write_version(
        self,
        tenant: str,
        version: str,
        chunks: pd.DataFrame,
        embeddings: EmbeddingSet,
        progress: ProgressCallback,
    ) -> None:
        """Writes a new version: id = chunk id, the dense vector from the embedding set (never
        recomputed), the BM25 vector of the embedding text, the payload."""
        lookup = embeddings.lookup()
        dim = embeddings.vectors.shape[1] if len(embeddings.hashes) else DEFAULT_DIMENSION
        sparse_encoder = SparseEncoder()
        writer = self.backend.create_writer(tenant, version, dim)
        try:
            records = list(chunks.itertuples(index=False))
            progress(0, len(records))
            for b in range(0, len(records), self.batch_size):
                batch = records[b : b + self.batch_size]
                sparse = sparse_encoder.encode_documents([r.embedding_text for r in batch])
                writer.upsert(
                    [
                        IndexPoint(
                            id=r.chunk_id,
                            dense=embeddings.vectors[lookup[r.content_hash]],
                            sparse=sv,
                            payload=make_payload(
                                tenant=r.tenant,
                                doc_id=r.doc_id,
                                chunk_id=r.chunk_id,
                                ordinal=int(r.ordinal),
                                text=r.text,
                                title=r.title,
                                uri=r.uri,
                                source_id=r.source_id,
                                mime_type=r.mime_type,
                                heading_path=list(r.heading_path),
                                page=None if pd.isna(r.page) else int(r.page),
                                acl_groups=list(r.acl_groups),
                                updated_at=r.updated_at or None,
                                content_hash=r.content_hash,
                            ),
                        )
                        for r, sv in zip(batch, sparse, strict=True)
                    ]
                )
                progress(b + len(batch), len(records))
        finally:
            writer.close()

    def reconcile(
        self,
        tenant: str,
        build: IndexBuild,
        sources: pd.DataFrame,
        chunks: pd.DataFrame,
        quarantined: set[str],
        actor: str = "pipeline",
    ) -> Receipt:
        """The reconciliation receipt of ``build``: the source inventory against its points.

        Every document of ``sources`` (``SOURCE_COLUMNS``: ``doc_id``, ``acl_groups``) that is
        not ``quarantined`` must be in the version with the ACL groups the source gave it and
        the number of chunks the chunking stage produced; a document in the version that is not
        in ``sources`` (deleted at the source) is an orphan. A new build is read point by
        point; a reused version (the published one, which the API holds open and which this run
        may not open) is reconciled against ``chunks``, which its fingerprint proves it holds
        exactly. The receipt is stored in the version's details (``details["receipt"]``); a
        failed one rejects a version that is not published (reason ``reconciliation``), and the
        store refuses to publish it by any path.

        Args:
            tenant: tenant id.
            build: the ``search_index`` result.
            sources: this run's source documents.
            chunks: this run's chunks (``CHUNK_COLUMNS``).
            quarantined: ids of documents a stage quarantined in this run.
            actor: recorded with the rejection.

        Returns:
            The receipt (``receipt.passed`` is the publish condition).
        """
        expected = chunks["doc_id"].value_counts().to_dict() if len(chunks) else {}
        inventory = (
            InventoryDocument(str(r.doc_id), list(r.acl_groups), int(expected.get(r.doc_id, 0)))
            for r in sources[["doc_id", "acl_groups"]].itertuples(index=False)
        )
        if build.reused:
            receipt = reconcile(inventory, quarantined, _chunk_points(chunks))
        else:
            reader = self.backend.open_reader(tenant, build.version, build.path)
            try:
                receipt = reconcile(inventory, quarantined, reader.payloads())
            finally:
                reader.close()
        self.store.set_version_details(tenant, build.version, {"receipt": receipt.to_dict()})
        if not receipt.passed and not build.reused:
            counts = receipt.to_dict()
            reasons = [
                f"{kind}: {counts[kind]} (e.g. {', '.join(receipt.samples.get(kind, [])[:3])})"
                for kind in (
                    "documents_missing",
                    "orphans",
                    "acl_mismatches",
                    "chunk_count_mismatches",
                )
                if counts[kind]
            ]
            self.store.reject_version(
                tenant, build.version, [{"name": "reconciliation", "reasons": reasons}], actor=actor
            )
        return receipt

    def publish(self, tenant: str, version: str, actor: str = "pipeline") -> PublishResult:
        """Makes ``version`` the one the API serves (one store transaction; a no-op when it is
        already published), then the engine's own publish (the server's alias, switched again
        even when the store row was already published, so the alias follows a rollback made in
        the store), marks its evaluation report published, and collects garbage.

        Raises:
            NotFoundError, ValueError: from the store, for an unknown or unpublishable version.
        """
        current = self.store.get_published_version(tenant)
        published_now = current is None or current.version != version
        if published_now:
            self.store.publish_version(tenant, version, actor=actor)
            report_dir = self.reports_dir / tenant / version
            if (report_dir / "report.json").exists():
                from rag_platform.lib.evaluation.report import mark_published

                mark_published(report_dir)
        self.backend.publish(tenant, version)
        kept, deleted = self.collect_garbage(tenant, version, actor=actor)
        return PublishResult(
            version,
            published_now,
            current.version if current else None,
            kept,
            deleted,
            self.store.get_receipt(tenant, version),
        )

    def rollback(
        self, tenant: str, to_version: str | None = None, actor: str = "cli"
    ) -> IndexVersion:
        """Serves a version that was published before again: the store's rollback (the
        lifecycle decides which versions qualify), then the engine's publish (the server's
        alias), so both read paths switch together.

        Raises:
            NotFoundError: no such version. VersionTransitionError: the target was rejected,
                never published, or there is nothing to roll back to (``.code``, ``.reason``).
        """
        published = self.store.rollback(tenant, to_version, actor=actor)
        self.backend.publish(tenant, published.version)
        return published

    def collect_garbage(
        self, tenant: str, published: str, actor: str = "pipeline"
    ) -> tuple[set[str], list[str]]:
        """Deletes the tenant's versions :func:`versions_to_keep` does not keep and no reader
        holds; their store rows get status ``deleted``. A ``building`` row older than the
        published version is a build whose run died: it is rejected (reason ``build
        interrupted``) first. A version the store never registered is removed silently.

        Returns:
            (kept version names, deleted version names).
        """
        versions = self.store.list_versions(tenant)
        keep = versions_to_keep(versions, published, self.versions_kept)
        deleted = self.backend.collect_garbage(tenant, keep)
        rows = {v.version: v for v in versions}
        for name in deleted:
            row = rows.get(name)
            if row is None or row.status == "deleted":
                continue
            if row.status == "building":
                reason = "build interrupted: its run ended before the shard was complete"
                self.store.reject_version(
                    tenant, name, [{"name": "build", "reasons": [reason]}], actor=actor
                )
            self.store.delete_version(tenant, name, actor=actor)
        return keep, deleted


def _chunk_points(chunks: pd.DataFrame) -> Iterator[tuple[str, Payload]]:
    """``(chunk id, payload)`` as a shard built from ``chunks`` holds them."""
    for r in chunks[["chunk_id", "doc_id", "acl_groups"]].itertuples(index=False):
        yield str(r.chunk_id), {"doc_id": str(r.doc_id), "acl_groups": list(r.acl_groups)}
