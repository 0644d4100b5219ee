"""The embedding stage: dense vectors of every chunk, with a per-tenant cache keyed by content
hash and embedding identity (model and backend), so a chunk is never embedded twice by the same
model and backend (DESIGN.md: "a chunk whose content hash was embedded before with the same
model is never embedded again").

:class:`EmbeddingSet` is both the stage's output and the cache's format (an ``.npz`` archive).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from rag_platform.lib.cache import atomic_write
from rag_platform.lib.embedding import EmbeddingBackend, embedding_identity
from rag_platform.lib.models import StageStats

log = logging.getLogger(__name__)


class DocumentEncoder(Protocol):
    """What the stage needs of an embedder (a
    :class:`~rag_platform.lib.embedding.DenseEmbedder`)."""

    @property
    def model_name(self) -> str:
        """The model name recorded with every embedding."""
        ...

    @property
    def backend(self) -> EmbeddingBackend:
        """The backend computing the vectors."""
        ...

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), d)`` float32, rows L2-normalised."""
        ...


@dataclass
class EmbeddingSet:
    """Dense embeddings keyed by chunk content hash.

    Attributes:
        model: the embedding identity (:func:`~rag_platform.lib.embedding.embedding_identity`:
            the model name, with ``@onnx-int8`` for the ONNX backend).
        hashes: (n,) content hashes.
        vectors: (n, d) float32, L2-normalised.
    """

    model: str
    hashes: list[str]
    vectors: np.ndarray

    def lookup(self) -> dict[str, int]:
        """Content hash → row of ``vectors``."""
        return {h: i for i, h in enumerate(self.hashes)}

    def to_bytes(self) -> bytes:
        """The set as an ``.npz`` archive (model, hashes, float32 vectors)."""
        buf = io.BytesIO()
        np.savez(
            buf,
            model=np.array(self.model),
            hashes=np.array(self.hashes, dtype=str),
            vectors=self.vectors.astype(np.float32),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> EmbeddingSet:
        """The set back from :meth:`to_bytes` (no pickles are loaded)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(
                str(z["model"]),
                [str(h) for h in z["hashes"]],
                np.asarray(z["vectors"], dtype=np.float32),
            )

    def save(self, path: Path) -> None:
        """Writes the set to ``path`` atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_bytes()
        atomic_write(path, lambda p: p.write_bytes(data))

    @classmethod
    def load(cls, path: Path) -> EmbeddingSet:
        """Reads a set written by :meth:`save`."""
        return cls.from_bytes(path.read_bytes())


def model_slug(model: str) -> str:
    """A model name or embedding identity as a file-name part (``org/name`` → ``org__name``)."""
    return model.replace("/", "__")


@dataclass
class EmbeddedChunks:
    """Output of :class:`ChunkEmbedder`.

    Attributes:
        embeddings: one vector per distinct content hash of the current chunks.
        stats: ``processed`` = ``embedded`` (chunks embedded now), ``reused``, seconds, and in
            ``extra``: ``embedded``, ``tokens`` embedded, ``encode_seconds``, ``chunks_per_s``,
            ``model`` (the embedding identity).
    """

    embeddings: EmbeddingSet
    stats: StageStats


class ChunkEmbedder:
    """Embeds every chunk whose content hash was never embedded with this model and backend.

    The cache is one file per embedding identity, ``embeddings-<slug of identity>.npz`` (e.g.
    ``embeddings-sentence-transformers__all-MiniLM-L6-v2.npz`` for PyTorch and
    ``…all-MiniLM-L6-v2@onnx-int8.npz`` for ONNX int8), pruned to the current chunks and
    rewritten by every run with that identity. A switch of backend therefore re-embeds every
    chunk into the other file and leaves this one as it was: switching back reuses it for every
    chunk whose content did not change in between (only new or edited chunks are embedded).
    The file of an identity no longer configured is kept, never deleted (4 bytes x dimension per
    chunk, 1.5 KB for all-MiniLM-L6-v2).

    Args:
        state_dir: the tenant's state folder, which holds the cache files.
        embedder: the dense embedder (``load_embedder``); its model name and backend name the
            cache, and it is asked to embed only when something is missing.
        checkpoint_every: texts embedded between cache saves, so an interrupted run resumes
            where it stopped instead of starting over.
    """

    def __init__(
        self, state_dir: Path, embedder: DocumentEncoder, checkpoint_every: int = 4096
    ) -> None:
        self.identity = embedding_identity(embedder.model_name, embedder.backend)
        self.cache_path = state_dir / f"embeddings-{model_slug(self.identity)}.npz"
        self.embedder = embedder
        self.checkpoint_every = checkpoint_every

    def _cached(self) -> EmbeddingSet | None:
        if not self.cache_path.exists():
            return None
        try:
            cached = EmbeddingSet.load(self.cache_path)
        except Exception as exc:  # a corrupt cache is rebuilt, never fatal
            log.warning("discarding unreadable embedding cache %s: %s", self.cache_path, exc)
            return None
        return cached if cached.model == self.identity else None

    def run(self, chunks: pd.DataFrame) -> EmbeddedChunks:
        """Embeds the chunks frame's missing contents (``content_hash``, ``embedding_text``,
        ``token_count`` columns are read).

        Returns:
            The embeddings of the current chunks' distinct content hashes, and stats.
        """
        start = time.perf_counter()
        cached = self._cached()
        unique = chunks.drop_duplicates("content_hash")
        wanted = unique["content_hash"].tolist()
        have = cached.lookup() if cached is not None else {}
        missing = unique[~unique["content_hash"].isin(have.keys())]
        vectors_new = None
        encode_seconds = 0.0
        if len(missing):
            texts = missing["embedding_text"].tolist()
            hashes = missing["content_hash"].tolist()
            step = self.checkpoint_every
            parts: list[np.ndarray] = []
            for start_at in range(0, len(texts), step):
                t0 = time.perf_counter()
                parts.append(self.embedder.embed_documents(texts[start_at : start_at + step]))
                encode_seconds += time.perf_counter() - t0
                if start_at + step < len(texts):  # checkpoint all but the last slice
                    done = start_at + len(parts[-1])
                    old_h = cached.hashes if cached is not None else []
                    old_v = (
                        cached.vectors
                        if cached is not None
                        else np.zeros((0, parts[0].shape[1]), np.float32)
                    )
                    EmbeddingSet(
                        self.identity, [*old_h, *hashes[:done]], np.vstack([old_v, *parts])
                    ).save(self.cache_path)
            vectors_new = np.vstack(parts)
        if vectors_new is not None:
            dim = vectors_new.shape[1]
        elif cached is not None and len(cached.hashes):
            dim = cached.vectors.shape[1]
        else:
            dim = 0
        out = np.zeros((len(wanted), dim), dtype=np.float32)
        new_lookup = {h: i for i, h in enumerate(missing["content_hash"].tolist())}
        for j, h in enumerate(wanted):
            if h in new_lookup:
                assert vectors_new is not None
                out[j] = vectors_new[new_lookup[h]]
            else:
                assert cached is not None
                out[j] = cached.vectors[have[h]]
        result = EmbeddingSet(self.identity, wanted, out)
        result.save(self.cache_path)
        stats = StageStats(
            processed=len(missing),
            reused=len(wanted) - len(missing),
            seconds=time.perf_counter() - start,
            extra={
                "embedded": int(len(missing)),
                "tokens": int(missing["token_count"].sum()) if len(missing) else 0,
                "encode_seconds": round(encode_seconds, 3),
                "chunks_per_s": round(len(missing) / encode_seconds, 1) if encode_seconds else None,
                "model": self.identity,
            },
        )
        return EmbeddedChunks(result, stats)
