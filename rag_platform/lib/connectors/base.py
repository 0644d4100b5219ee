"""The connector contract (v2): a source of documents for one configured tenant source, listed
in full or incrementally from the state the previous sync left.

A connector yields :data:`Change` items from :meth:`Connector.changes`:

- :class:`~rag_platform.lib.models.SourceDocument`: a new or changed item (content fetched);
- :class:`Unchanged`: the item still exists with the same version (content not fetched);
- :class:`Deleted`: the source says the item is gone (404/410, removed in a diff, a row gone).

With ``full=True`` every item is visited, so :class:`~rag_platform.lib.ingestion.sync.SourceSync`
deletes every ``native_id`` of ``state.versions`` the connector did not yield. With ``full=False``
the connector may yield only the changes since ``state.cursor``; the sync keeps everything else.
A connector that cannot list incrementally treats ``full=False`` like ``full=True``.

Errors: a transient error (timeout, connection reset, HTTP 5xx or 429) is retried with
:func:`transient_retry` (tenacity, exponential backoff, bounded attempts); a permanent error on
one item goes to ``problems``; an exception out of ``changes`` means the whole source failed and
the sync keeps its previous documents and state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from rag_platform.lib.models import SourceDocument

__all__ = [
    "Change",
    "Connector",
    "Deleted",
    "SourceState",
    "Unchanged",
    "full_listing_changes",
    "is_transient",
    "transient_retry",
]


@dataclass(frozen=True)
class SourceState:
    """What the previous sync of one source left: persisted under the tenant's state folder.

    Attributes:
        cursor: connector-defined position of the last sync (ETag set hash, commit id,
            ``updated_at`` watermark, ...); None before the first sync.
        versions: ``native_id`` → version token (ETag, blob sha, ``updated_at``, object
            version, Last-Modified) of every item the previous sync kept.
    """

    cursor: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Unchanged:
    """The item ``native_id`` still exists with the version the state holds."""

    native_id: str


@dataclass(frozen=True)
class Deleted:
    """The source says the item ``native_id`` is gone; ``reason`` says how it said so."""

    native_id: str
    reason: str


#: One item of :meth:`Connector.changes`.
Change = SourceDocument | Unchanged | Deleted


@runtime_checkable
class Connector(Protocol):
    """Lists the documents of one source.

    Attributes:
        source_id: the source's id in the tenant registry.
        problems: ``(native id or row number, reason)`` of every item skipped permanently during
            the last :meth:`list_documents` or :meth:`changes` iteration (a row without an id, an
            unreadable file, an object over the size budget). Problems never stop a sync.
    """

    source_id: str
    problems: list[tuple[str, str]]

    def list_documents(self) -> Iterator[SourceDocument]:
        """Yields every document of the source, in a deterministic order.

        Resets :attr:`problems` at the start of each iteration.
        """
        ...

    def changes(self, state: SourceState, *, full: bool) -> Iterator[Change]:
        """Yields the source's changes against ``state`` (see the module docstring).

        Resets :attr:`problems` at the start of each iteration.

        Raises:
            Exception: the whole source failed (unreachable, misconfigured); the sync keeps the
                source's previous documents and state.
        """
        ...

    @property
    def next_cursor(self) -> str | None:
        """The cursor to persist; valid once :meth:`changes` is exhausted."""
        ...


def full_listing_changes(
    documents: Iterator[SourceDocument], state: SourceState
) -> Iterator[Change]:
    """Changes of a connector that can only list everything: a document whose ``version``
    equals the state's is :class:`Unchanged` (its content is dropped at once), any other is
    yielded as it is. Deletions are left to the sync (a full listing).

    Args:
        documents: the full listing (:meth:`Connector.list_documents`).
        state: the previous sync's state of the source.

    Yields:
        :class:`~rag_platform.lib.models.SourceDocument` or :class:`Unchanged`.
    """
    for doc in documents:
        if doc.version is not None and state.versions.get(doc.native_id) == doc.version:
            yield Unchanged(doc.native_id)
        else:
            yield doc


def full_listing_documents(connector: Connector) -> Iterator[SourceDocument]:
    """The documents of ``connector``'s full listing from an empty state
    (``changes(SourceState(), full=True)``): :meth:`Connector.list_documents` of a connector
    whose native listing is :meth:`Connector.changes`.

    Raises:
        as the connector's :meth:`Connector.changes`.
    """
    for item in connector.changes(SourceState(), full=True):
        if isinstance(item, SourceDocument):
            yield item


_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def _status_of(exc: BaseException) -> int | None:
    """HTTP status of an httpx / botocore error, when it carries one."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    if isinstance(response, dict):  # botocore ClientError
        meta = response.get("ResponseMetadata") or {}
        code = meta.get("HTTPStatusCode")
        if isinstance(code, int):
            return code
    return None


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: timeouts, connection errors/resets, HTTP 408/425/429/5xx,
    SQLAlchemy's ``OperationalError`` with a lost connection, botocore endpoint errors.

    Args:
        exc: the exception raised by one attempt.
    """
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    status = _status_of(exc)
    if status is not None:
        return status in _TRANSIENT_STATUS
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(
        names
        & {
            "TimeoutException",  # httpx
            "TransportError",  # httpx (connect, read, remote protocol)
            "EndpointConnectionError",  # botocore
            "ConnectionClosedError",  # botocore
            "ReadTimeoutError",  # botocore / urllib3
            "ConnectTimeoutError",
            "OperationalError",  # SQLAlchemy / DBAPI: connection refused, server gone
            "InterfaceError",
        }
    )


T = TypeVar("T")


def transient_retry(
    fn: Callable[[], T],
    *,
    attempts: int = 4,
    initial_seconds: float = 0.5,
    max_seconds: float = 8.0,
) -> T:
    """Calls ``fn`` and retries it on :func:`is_transient` errors with exponential backoff.

    Args:
        fn: the call (no arguments; close over them).
        attempts: at most this many calls in all (>= 1).
        initial_seconds: the first wait (seconds); doubled per retry up to ``max_seconds``.
        max_seconds: the longest wait between two attempts (seconds).

    Returns:
        ``fn()``'s result.

    Raises:
        Exception: the last error once attempts run out, or the first permanent one.
    """
    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=initial_seconds, max=max_seconds),
        retry=retry_if_exception(is_transient),
        reraise=True,
    )
    return retrying(fn)
