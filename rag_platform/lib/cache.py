"""Per-tenant content caches and atomic file writes.

Each pipeline stage keys its work by content hash in a :class:`StageCache`, so re-running a
tenant whose sources did not change reuses every parsed, masked and chunked result (DESIGN.md:
"re-syncing unchanged sources re-processes nothing downstream").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from rag_platform.lib.crypto import NO_CIPHER, PURPOSE_CACHE, TenantCipher

log = logging.getLogger(__name__)


def config_hash(obj: BaseModel | dict[str, object] | list[object] | str) -> str:
    """Short SHA-256 of a pydantic model or JSON-serialisable object (16 hex characters).

    Keys are sorted, so two equal configurations hash alike whatever their field order.
    """
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Writes a file through ``write(temporary path)`` and renames it onto ``path``.

    Readers see the old file or the new one, never a partial write; the temporary file lies in
    the same folder (same file system) and is removed when ``write`` raises.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class StageCache:
    """A key → JSON-value cache persisted as one Parquet file per tenant and stage.

    ``save`` keeps only the keys used (``get`` hit or ``put``) since the cache was opened, so
    entries of deleted or edited documents are pruned and the file never grows without bound.
    Writes are atomic. A corrupt file is discarded with a warning and rebuilt, never fatal.

    Each value is sealed with the tenant's data key (:mod:`rag_platform.lib.crypto`, purpose
    ``cache``) when ``put``, and opened when read by ``get``; keys (content hashes and doc ids)
    stay plain, so erasure prunes entries without opening them. A value written before
    encryption was enabled is read as it is and sealed when next put.

    Args:
        path: the Parquet file (``key``, ``value`` columns; values are JSON text, sealed).
        cipher: the tenant's cipher; default: none (values stored as plain JSON text).

    Raises:
        rag_platform.lib.crypto.SealedDataError: from ``get``, when a sealed value does not
            open (another tenant's file, tampered, or the data key destroyed).
    """

    def __init__(self, path: Path, cipher: TenantCipher = NO_CIPHER) -> None:
        self.path = path
        self.cipher = cipher
        self._old: dict[str, str] = {}
        self._new: dict[str, str] = {}
        if path.exists():
            try:
                frame = pd.read_parquet(path)
                self._old = dict(zip(frame["key"], frame["value"], strict=True))
            except Exception as exc:  # a corrupt cache is rebuilt, never fatal
                log.warning("discarding unreadable cache %s: %s", path, exc)

    def get(self, key: str) -> object | None:
        """The value stored under ``key`` (decoded JSON), or None; a hit is kept by ``save``."""
        raw = self._new.get(key) or self._old.get(key)
        if raw is None:
            return None
        self._new[key] = raw
        return json.loads(self.cipher.open_text(raw, PURPOSE_CACHE))

    def put(self, key: str, value: object) -> None:
        """Stores a JSON-serialisable ``value`` under ``key`` (written by the next ``save``)."""
        self._new[key] = self.cipher.seal_text(json.dumps(value), PURPOSE_CACHE)

    def save(self) -> None:
        """Writes the keys used since opening, atomically; the others are pruned."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame({"key": list(self._new), "value": list(self._new.values())})
        atomic_write(self.path, lambda p: frame.to_parquet(p, index=False))
