"""The embedding stage: dense vectors of every chunk, with a per-tenant cache keyed by content
hash and embedding identity (model and backend), so a chunk is never embedded twice by the same
model and backend (DESIGN.md: "a chunk whose content hash was embedded before with the same
model is never embedded again").

:class:`EmbeddingSet` is both the stage's output and the cache's format (an ``.npz`` archive).
"""

from __future__ import annotations

import contextlib
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
from rag_platform.lib.progress import ProgressCallback, no_progress

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

    Checkpoints are append-only: every ``checkpoint_every`` texts embedded, the vectors embedded
    since the previous checkpoint (and only those) are written as one segment file
    ``embeddings-<slug>.segments/<n>.npz``, so the checkpoint bytes of a run are linear in the
    texts embedded (rewriting the whole cache at each checkpoint was quadratic). A run reads the
    cache file and every segment, so a run killed or interrupted mid-stage resumes without
    re-embedding what its segments hold; at the end the merged set is written to the cache file
    and the segments are removed. An unreadable segment (never written whole: writes are atomic)
    or one of another identity is ignored.

    Args:
        state_dir: the tenant's state folder, which holds the cache files.
        embedder: the dense embedder (``load_embedder``); its model name and backend name the
            cache, and it is asked to embed only when something is missing.
        checkpoint_every: texts embedded between checkpoint segments.
        progress_every: texts per ``embed_documents`` call, the grain of progress reports.
    """

    def __init__(
        self,
        state_dir: Path,
        embedder: DocumentEncoder,
        checkpoint_every: int = 4096,
        progress_every: int = 512,
    ) -> None:
        self.identity = embedding_identity(embedder.model_name, embedder.backend)
        self.cache_path = state_dir / f"embeddings-{model_slug(self.identity)}.npz"
        self.segments_dir = state_dir / f"embeddings-{model_slug(self.identity)}.segments"
        self.embedder = embedder
        self.checkpoint_every = max(1, checkpoint_every)
        self.progress_every = max(1, min(progress_every, self.checkpoint_every))

    def _cached(self) -> EmbeddingSet | None:
        if not self.cache_path.exists():
            return None
        try:
            cached = EmbeddingSet.load(self.cache_path)
        except Exception as exc:  # a corrupt cache is rebuilt, never fatal
            log.warning("discarding unreadable embedding cache %s: %s", self.cache_path, exc)
            return None
        return cached if cached.model == self.identity else None

    def segment_paths(self) -> list[Path]:
        """The checkpoint segments left by an unfinished run, oldest first."""
        if not self.segments_dir.is_dir():
            return []
        return sorted(self.segments_dir.glob("*.npz"))

    def _segments(self) -> list[EmbeddingSet]:
        out = []
        for path in self.segment_paths():
            try:
                segment = EmbeddingSet.load(path)
            except Exception as exc:  # never written whole, or damaged: its texts are re-embedded
                log.warning("ignoring unreadable embedding checkpoint %s: %s", path, exc)
                continue
            if segment.model == self.identity and len(segment.hashes):
                out.append(segment)
        return out

    def _write_segment(self, number: int, hashes: list[str], parts: list[np.ndarray]) -> int:
        """Writes one checkpoint segment; returns its size in bytes."""
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        path = self.segments_dir / f"{number:06d}.npz"
        EmbeddingSet(self.identity, hashes, np.vstack(parts)).save(path)
        return path.stat().st_size

    def _clear_segments(self) -> None:
        for path in self.segment_paths():
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.segments_dir.rmdir()

    def run(self, chunks: pd.DataFrame, progress: ProgressCallback | None = None) -> EmbeddedChunks:
        """Embeds the chunks frame's missing contents (``content_hash``, ``embedding_text``,
        ``token_count`` columns are read).

        Args:
            chunks: the chunks frame.
            progress: called with ``(chunks done, chunks to embed)`` after every
                ``progress_every`` texts (cached and checkpointed ones are not counted).

        Returns:
            The embeddings of the current chunks' distinct content hashes, and stats
            (``extra`` adds ``resumed``: vectors taken from an unfinished run's checkpoint
            segments, ``checkpoint_segments`` and ``checkpoint_bytes`` written by this run).
        """
        start = time.perf_counter()
        report = progress or no_progress
        known: dict[str, np.ndarray] = {}
        cached = self._cached()
        if cached is not None:
            known.update(zip(cached.hashes, cached.vectors, strict=True))
        from_cache = set(known)
        segments = self._segments()
        for segment in segments:
            known.update(zip(segment.hashes, segment.vectors, strict=True))
        resumed_hashes = set(known) - from_cache
        unique = chunks.drop_duplicates("content_hash")
        wanted = unique["content_hash"].tolist()
        missing = unique[~unique["content_hash"].isin(known.keys())]
        encode_seconds = 0.0
        written_segments = 0
        checkpoint_bytes = 0
        if len(missing):
            # Longest first, across the whole stage (not only within one embed_documents call):
            # each forward pass then pads its batch to nearly its own length.
            missing = missing.sort_values("token_count", ascending=False, kind="stable")
            texts = missing["embedding_text"].tolist()
            hashes = missing["content_hash"].tolist()
            number = len(self.segment_paths())
            pending_hashes: list[str] = []
            pending_parts: list[np.ndarray] = []
            report(0, len(texts))
            for at in range(0, len(texts), self.progress_every):
                t0 = time.perf_counter()
                vectors = self.embedder.embed_documents(texts[at : at + self.progress_every])
                encode_seconds += time.perf_counter() - t0
                batch_hashes = hashes[at : at + len(vectors)]
                known.update(zip(batch_hashes, vectors, strict=True))
                pending_hashes.extend(batch_hashes)
                pending_parts.append(vectors)
                done = at + len(vectors)
                if len(pending_hashes) >= self.checkpoint_every and done < len(texts):
                    checkpoint_bytes += self._write_segment(number, pending_hashes, pending_parts)
                    number += 1
                    written_segments += 1
                    pending_hashes, pending_parts = [], []
                report(done, len(texts))
        else:
            report(0, 0)  # nothing to embed: the stage is done at once
        dim = next((len(v) for v in known.values()), 0)
        out = np.zeros((len(wanted), dim), dtype=np.float32)
        for j, h in enumerate(wanted):
            out[j] = known[h]
        result = EmbeddingSet(self.identity, wanted, out)
        result.save(self.cache_path)
        self._clear_segments()  # merged: the cache file now holds every segment's vectors
        resumed = sum(1 for h in wanted if h in resumed_hashes)
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
                "resumed": resumed,
                "checkpoint_segments": written_segments,
                "checkpoint_bytes": checkpoint_bytes,
            },
        )
        return EmbeddedChunks(result, stats)
