"""BM25 sparse vectors (Qdrant Edge's ``Bm25``).

Documents carry term-frequency weights computed by ``Bm25.embed_document`` (``k=1.2, b=0.75,
avg_len=256``), queries carry weight 1.0 per unique token (``Bm25.embed_query``), and the index's
sparse vector config sets ``Modifier.Idf`` so the engine multiplies in the inverse document
frequency at query time (https://qdrant.tech/documentation/edge/edge-bm25/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache


@dataclass
class SparseVector:
    """A sparse vector: parallel lists of dimension indices and their weights."""

    indices: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.indices) != len(self.values):
            raise ValueError(
                f"sparse vector has {len(self.indices)} indices but {len(self.values)} values"
            )

    def __len__(self) -> int:
        return len(self.indices)


class SparseEncoder:
    """BM25 sparse vectors through Qdrant Edge's built-in ``Bm25`` embedder.

    Token ids and weights match Qdrant server's BM25 text pipeline. The IDF part of BM25 is
    computed by the engine: the index must declare its sparse vector with ``Modifier.Idf``.

    Args:
        language: Snowball stemmer and stopword language (``"english"``).
        k: BM25 term-frequency saturation (Robertson & Zaragoza 2009; Qdrant default 1.2).
        b: BM25 length normalisation (default 0.75).
        avg_len: expected average document length in tokens (Qdrant default 256).

    Raises:
        ValueError: unsupported language or out-of-range parameter (from ``Bm25``).
    """

    def __init__(
        self,
        language: str = "english",
        k: float | None = None,
        b: float | None = None,
        avg_len: float | None = None,
    ) -> None:
        from qdrant_edge import Bm25, Bm25Config

        self.language = language
        self._bm25 = Bm25(Bm25Config(language=language, k=k, b=b, avg_len=avg_len))

    def encode_documents(self, texts: list[str]) -> list[SparseVector]:
        """BM25 document vectors (term-frequency weights), one per text.

        An empty text (or one made only of stopwords) gives an empty sparse vector.
        """
        out: list[SparseVector] = []
        for t in texts:
            v = self._bm25.embed_document(t)
            out.append(SparseVector(list(v.indices), [float(x) for x in v.values]))
        return out

    def encode_query(self, text: str) -> SparseVector:
        """BM25 query vector: weight 1.0 per unique token after stemming and stopwords."""
        v = self._bm25.embed_query(text)
        return SparseVector(list(v.indices), [float(x) for x in v.values])


@lru_cache(maxsize=1)
def get_sparse_encoder() -> SparseEncoder:
    """The process-wide BM25 encoder (English)."""
    return SparseEncoder()
