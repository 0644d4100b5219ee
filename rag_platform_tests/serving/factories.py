"""Factories for serving tests: real Edge shards of real SciFact abstracts in a real store.

``publish_tenant`` embeds documents with the real model (all-MiniLM-L6-v2) and BM25 encoder,
writes a new Qdrant Edge version with :class:`EdgeIndexWriter`, registers it in a
``MetadataStore`` and publishes it: exactly what the indexing pipeline leaves behind.
Embeddings are memoised per text, so re-publishing the same documents costs no model time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rag_platform.lib.embedding import SparseVector, get_embedder, get_sparse_encoder
from rag_platform.lib.index.edge import EdgeIndexWriter, IndexPoint, make_payload
from rag_platform.lib.models import make_chunk_id, make_doc_id, sha256_hex
from rag_platform.lib.store import IndexVersion, MetadataStore
from rag_platform.settings import Settings
from rag_platform_tests.utils.model_files import session_models_dir

SCIFACT_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "scifact"
SCIFACT_CORPUS = SCIFACT_DIR / "corpus.jsonl"
SCIFACT_QUERIES = SCIFACT_CORPUS.parent / "queries.jsonl"
DIM = 384


@dataclass
class Doc:
    """One single-chunk document to index."""

    native_id: str
    title: str
    text: str
    acl_groups: list[str] = field(default_factory=lambda: ["all"])
    source_id: str = "corpus"
    mime_type: str = "text/plain"
    updated_at: str | None = None


@lru_cache(maxsize=1)
def _scifact_rows() -> tuple[dict[str, Any], ...]:
    rows = []
    with SCIFACT_CORPUS.open() as f:
        for i, line in enumerate(f):
            if i >= 400:
                break
            rows.append(json.loads(line))
    return tuple(rows)


def scifact_docs(start: int, count: int, acl_groups: list[str] | None = None) -> list[Doc]:
    """SciFact abstracts ``start .. start+count`` (of the first 400) as documents."""
    rows = _scifact_rows()[start : start + count]
    return [
        Doc(
            native_id=str(r["_id"]),
            title=r["title"],
            text=r["text"][:1200],
            acl_groups=list(acl_groups or ["all"]),
        )
        for r in rows
    ]


_DENSE: dict[str, np.ndarray] = {}
_SPARSE: dict[str, SparseVector] = {}


def _encode(texts: list[str]) -> tuple[list[np.ndarray], list[SparseVector]]:
    todo = [t for t in dict.fromkeys(texts) if t not in _DENSE]
    if todo:
        dense = get_embedder().embed_documents(todo)
        sparse = get_sparse_encoder().encode_documents(todo)
        for t, d, s in zip(todo, dense, sparse, strict=True):
            _DENSE[t], _SPARSE[t] = np.asarray(d, dtype=np.float32), s
    return [_DENSE[t] for t in texts], [_SPARSE[t] for t in texts]


def chunk_ids(tenant: str, doc: Doc) -> tuple[str, str]:
    """``(doc_id, chunk_id)`` of a single-chunk document."""
    doc_id = make_doc_id(tenant, doc.source_id, doc.native_id)
    text = f"{doc.title}. {doc.text}"
    return doc_id, make_chunk_id(doc_id, 0, sha256_hex(text))


def index_points(tenant: str, docs: list[Doc]) -> list[IndexPoint]:
    """One embedded point per document (dense + BM25 vectors, full payload)."""
    texts = [f"{d.title}. {d.text}" for d in docs]
    dense, sparse = _encode(texts)
    points = []
    for d, text, dv, sv in zip(docs, texts, dense, sparse, strict=True):
        doc_id, chunk_id = chunk_ids(tenant, d)
        payload = make_payload(
            tenant=tenant,
            doc_id=doc_id,
            chunk_id=chunk_id,
            ordinal=0,
            text=text,
            title=d.title,
            uri=f"scifact://{d.native_id}",
            source_id=d.source_id,
            mime_type=d.mime_type,
            heading_path=[d.title],
            page=None,
            acl_groups=d.acl_groups,
            updated_at=d.updated_at,
        )
        points.append(IndexPoint(id=chunk_id, dense=dv, sparse=sv, payload=payload))
    return points


def build_shard(path: Path, tenant: str, docs: list[Doc]) -> int:
    """Writes a new Edge version at ``path`` with one chunk per document; returns the count."""
    points = index_points(tenant, docs)
    writer = EdgeIndexWriter.create(path, DIM)
    try:
        if points:
            writer.upsert(points)
    finally:
        writer.close(optimize=len(points) > 100)  # tiny shards: plain segments suffice
    return len(points)


def publish_tenant(
    store: MetadataStore, settings: Settings, tenant: str, version: str, docs: list[Doc]
) -> IndexVersion:
    """Builds, registers and publishes ``version`` of ``tenant`` (under ``settings.index_dir``)."""
    path = settings.index_dir / tenant / version
    n = build_shard(path, tenant, docs)
    store.register_version(tenant, version, str(path), documents=n, chunks=n, config_hash="test")
    store.mark_version_built(tenant, version)
    return store.publish_version(tenant, version, actor="test")


def make_settings(home: Path, **overrides: Any) -> Settings:
    """Test settings: everything under ``home`` but the session's models folder
    (:func:`session_models_dir`), SQLite store, no tenants file, high limits."""
    values: dict[str, Any] = {
        "home": home,
        "models_dir": session_models_dir(),
        "database_url": f"sqlite:///{home / 'metadata.db'}",
        "tenants_file": home / "no-tenants.yaml",
        "key_pepper": "test-pepper",
        "redis_url": None,
        "rate_limit_per_key": "10000/minute",
        "rate_limit_per_tenant": "10000/minute",
        "environment": "test",
        "metrics_tenant_labels": True,  # the serving tests assert per-tenant series
    }
    values.update(overrides)
    settings = Settings(**values)
    settings.ensure_dirs()
    return settings


def new_store(settings: Settings) -> MetadataStore:
    """A migrated store for ``settings``."""
    store = MetadataStore.from_settings(settings)
    store.migrate()
    return store


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class TcpProxy:
    """A TCP forwarder to a real service, for cutting it off mid-test (a real network fault).

    ``stop()`` closes the listening socket and every forwarded connection, so clients see
    their connections reset and new connections refused, exactly as if the service died.

    ``ended`` records, per forwarded connection, which side closed it first (``"client"`` or
    ``"upstream"``), and ``upstream_data`` (``upstream_bytes`` long) what the service sent: a
    test can see that a client hung up on a response still being produced.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        import socket
        import threading

        self._upstream = (upstream_host, upstream_port)
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port: int = self._server.getsockname()[1]
        self._conns: list[Any] = []
        self._lock = threading.Lock()
        self._stopped = False
        self.ended: list[str] = []
        self.upstream_bytes = 0
        self.upstream_data = bytearray()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self._stopped:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._upstream, timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)  # the 2 s bound connecting only: a slow reply is no fault
            with self._lock:
                self._conns += [client, upstream]
            ended: list[str] = []
            for a, b, side in ((client, upstream, "client"), (upstream, client, "upstream")):
                threading.Thread(target=self._pump, args=(a, b, side, ended), daemon=True).start()

    def _pump(self, src: Any, dst: Any, side: str, ended: list[str]) -> None:
        closer = side  # src's end of file or reset: its side closed the connection
        try:
            while data := src.recv(65536):
                if side == "upstream":
                    with self._lock:
                        self.upstream_bytes += len(data)
                        self.upstream_data += data
                try:
                    dst.sendall(data)
                except OSError:  # dst is gone: the other side closed it
                    closer = "client" if side == "upstream" else "upstream"
                    break
        except OSError:
            pass
        finally:
            with self._lock:
                if not ended:  # the first side to close the connection
                    ended.append(closer)
                    self.ended.append(closer)
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def stop(self) -> None:
        import socket

        self._stopped = True
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            for s in self._conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
            self._conns.clear()


@contextlib.contextmanager
def fast_home(prefix: str = "rag-serving-") -> Iterator[Path]:
    """A temporary folder on tmpfs (``/dev/shm``) when there is one, else the default temp dir.

    Creating an Edge shard fsyncs its payload indexes: about 1 s per tiny shard on disk, 50 ms
    on tmpfs, and the property tests build dozens.
    """
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
