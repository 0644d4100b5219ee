"""The one mapping between row dataclasses and table rows, and the checks of text columns.

Each table read back as an object has exactly one dataclass whose field names are column names
(:class:`~rag_platform.lib.store.api_keys.ApiKeyInfo`,
:class:`~rag_platform.lib.store.versions.IndexVersion`,
:class:`~rag_platform.lib.store.query_log.QueryLogEntry`,
:class:`~rag_platform.lib.store.feedback.FeedbackEntry`,
:class:`~rag_platform.lib.store.audit.AuditEntry`). :func:`from_row` builds one from a row,
:func:`to_values` turns one into the values of an INSERT; no table has a mapper of its own.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import RowMapping

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def from_row(cls: type[T], row: RowMapping) -> T:
    """Build the dataclass ``cls`` from the columns of ``row`` that have a field of that name.

    Columns without a field (``secret_hash``, surrogate ids) are ignored.

    Args:
        cls: A row dataclass.
        row: One result row as a mapping (``conn.execute(...).mappings()``).

    Returns:
        ``cls(**{field: row[field] for each init field of cls})``.

    Raises:
        KeyError: The row lacks a column for one of the fields.
    """
    return cls(**{f.name: row[f.name] for f in fields(cls) if f.init})


def to_values(obj: DataclassInstance) -> dict[str, object]:
    """The column values of a row dataclass, ``{field name: value}``, for an INSERT."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def check_text(value: str, what: str, max_len: int, *, allow_empty: bool = False) -> str:
    """Check a text value before it is written to a bounded column.

    Args:
        value: The value.
        what: Its name in the error message, e.g. ``"key name"``.
        max_len: Most characters allowed (the column's length).
        allow_empty: Whether an empty or blank value is allowed.

    Returns:
        ``value`` unchanged.

    Raises:
        ValueError: Not a string, blank when not allowed, or longer than ``max_len``.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"{what} must not be empty")
    if len(value) > max_len:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {max_len}")
    return value
