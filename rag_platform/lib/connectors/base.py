"""The connector protocol: a source of documents for one configured tenant source."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from rag_platform.lib.models import SourceDocument


@runtime_checkable
class Connector(Protocol):
    """Lists the documents of one source.

    Attributes:
        source_id: the source's id in the tenant registry.
        problems: ``(native id or row number, reason)`` for every item the connector could not
            turn into a document during the last :meth:`list_documents` iteration (e.g. a dataset
            row without an id, an unreadable file). Problems never stop a sync.
    """

    source_id: str
    problems: list[tuple[str, str]]

    def list_documents(self) -> Iterator[SourceDocument]:
        """Yields every document of the source, in a deterministic order.

        Resets :attr:`problems` at the start of each iteration.
        """
        ...
