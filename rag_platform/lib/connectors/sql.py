"""SQL connector: the rows of a table, or of a read-only query, through SQLAlchemy.

Each row is a text document (``text`` set, mime type ``text/plain``). Incremental syncs read the
rows whose ``updated_at_column`` is at or after the watermark of the previous sync (minus the
source's ``watermark_overlap``), then reconcile the id set: when the row count says rows may be
gone (``count(*)`` differs from the previous listing's count plus the rows seen for the first
time), every id of the previous sync
no longer returned by the table or query is
:class:`~rag_platform.lib.connectors.base.Deleted`. (A deletion offset by an insert the
watermark cannot see, a row committed late with an older ``updated_at``, waits for the next
full listing, at least every ``full_sync_every``.)
A full listing streams every row. Rows are streamed with a server-side cursor
(``stream_results``, ``batch_rows`` per round trip); only ids are kept in memory.

The database URL comes from the environment variable named by ``url_env`` (never from the
registry); every statement runs in a read-only transaction that is rolled back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from rag_platform.lib.connectors.base import (
    Change,
    Deleted,
    SourceState,
    Unchanged,
    full_listing_documents,
    transient_retry,
)
from rag_platform.lib.connectors.dataset import _acl_groups, _blank, _blank_value, _to_datetime
from rag_platform.lib.models import SourceDocument, acl_key, sha256_hex
from rag_platform.lib.tenants import InputBudgets, SqlSource


def _plain(value: Any) -> Any:
    """A watermark value as JSON: ISO text for times, the number otherwise."""
    if isinstance(value, datetime | date):
        return {"t": value.isoformat()}
    if isinstance(value, int | float):
        return {"n": value}
    return {"s": str(value)}


def _unplain(value: dict[str, Any]) -> Any:
    if "t" in value:
        text = str(value["t"])
        return (
            datetime.fromisoformat(text) if "T" in text or ":" in text else date.fromisoformat(text)
        )
    if "n" in value:
        return value["n"]
    return value["s"]


class SqlConnector:
    """Reads a SQL table or query; one document per row.

    Args:
        source: the configured table or query and column names.
        default_acl_groups: groups of rows without an ACL value (no column, or NULL); an
            explicitly empty value (``''``, an empty array) means no reader group.
        budgets: the tenant's input budgets; a row whose text is over ``max_document_chars``
            is a problem (not read into a document).
        engine: an existing engine (tests, benchmarks); by default one is created from the URL
            in ``os.environ[source.url_env]`` and disposed after each listing.

    Raises:
        ValueError: (from :meth:`changes`) the URL variable is unset.
    """

    def __init__(
        self,
        source: SqlSource,
        default_acl_groups: list[str],
        budgets: InputBudgets | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.source = source
        self.source_id = source.id
        self.default_acl_groups = list(default_acl_groups)
        self.budgets = budgets or InputBudgets()
        self.problems: list[tuple[str, str]] = []
        self._engine = engine
        self._cursor: str | None = None

    # -- database -------------------------------------------------------------------------

    def _make_engine(self) -> tuple[Engine, bool]:
        if self._engine is not None:
            return self._engine, False
        url = os.environ.get(self.source.url_env)
        if not url:
            raise ValueError(
                f"source {self.source_id!r}: environment variable {self.source.url_env!r} "
                "(the database URL) is not set"
            )
        return sa.create_engine(url, pool_pre_ping=True), True

    def _columns(self) -> list[str]:
        src = self.source
        names = [src.id_column, src.title_column, src.text_column]
        names += [src.updated_at_column, src.acl_column]
        return list(dict.fromkeys(n for n in names if n))

    def _from(self) -> sa.FromClause:
        src = self.source
        if src.table is not None:
            schema, _, name = src.table.rpartition(".")
            return sa.table(name, *(sa.column(c) for c in self._columns()), schema=schema or None)
        assert src.query is not None
        return sa.text(src.query).columns(*(sa.column(c) for c in self._columns())).subquery("src")

    def _connect(self, engine: Engine) -> Connection:
        conn = transient_retry(engine.connect)
        name = engine.dialect.name
        if name in ("mysql", "mariadb"):
            conn.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
            conn.commit()
        elif name == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        return conn

    # -- rows -----------------------------------------------------------------------------

    def _document(self, row: sa.Row[Any], state: SourceState) -> SourceDocument | Unchanged | None:
        src = self.source
        values = row._mapping
        raw_id = values[src.id_column]
        if _blank(raw_id):
            self.problems.append(("?", f"row without an id in column {src.id_column!r}"))
            return None
        native_id = str(raw_id).strip()
        text = values[src.text_column]
        if _blank(text):
            self.problems.append((native_id, f"missing text in column {src.text_column!r}"))
            return None
        text = str(text)
        if len(text) > self.budgets.max_document_chars:
            self.problems.append(
                (native_id, f"text over max_document_chars ({len(text)} characters)")
            )
            return None
        raw_time = values[src.updated_at_column] if src.updated_at_column else None
        updated_at = None
        if not _blank_value(raw_time):
            try:
                updated_at = _to_datetime(raw_time)
            except (ValueError, TypeError, OverflowError) as exc:
                self.problems.append((native_id, f"unreadable updated_at {raw_time!r}: {exc}"))
                return None
        raw_acl = values[src.acl_column] if src.acl_column else None
        if _blank_value(raw_acl):
            groups = list(self.default_acl_groups)
        else:
            try:
                groups = _acl_groups(raw_acl)
            except ValueError as exc:
                self.problems.append((native_id, f"invalid ACL in {src.acl_column!r}: {exc}"))
                return None
        title_value = values[src.title_column] if src.title_column else None
        title = "" if _blank(title_value) else str(title_value).strip()
        version = sha256_hex(
            f"{updated_at.isoformat() if updated_at else ''}\n{acl_key(groups)}\n{title}\n{text}"
        )
        if state.versions.get(native_id) == version:
            return Unchanged(native_id)
        where = src.table or "query"
        return SourceDocument(
            source_id=self.source_id,
            native_id=native_id,
            uri=f"sql://{self.source_id}/{where}#{native_id}",
            title=title or native_id,
            mime_type="text/plain",
            text=text,
            acl_groups=groups,
            updated_at=updated_at,
            metadata={"table": src.table} if src.table else {},
            version=version,
        )

    def changes(self, state: SourceState, *, full: bool) -> Iterator[Change]:
        """Yields the rows as documents (or :class:`Unchanged`), then :class:`Deleted` for ids
        of ``state`` gone from the table or query.

        Full (``full=True``, no watermark column, or no cursor yet): every row, ordered by id.
        Incremental: rows with ``updated_at >= watermark - watermark_overlap``, ordered by
        ``updated_at`` then id, then the id-set reconciliation.

        Raises:
            ValueError: the URL variable is unset.
            sqlalchemy.exc.SQLAlchemyError: the database cannot be reached (after retries) or
                the table, query or a column does not exist.
        """
        self.problems = []
        src = self.source
        watermark: Any = None
        rows_before: int | None = None
        if state.cursor:
            try:
                saved = json.loads(state.cursor)
                watermark = _unplain(saved)
                rows_before = saved.get("rows")
            except (ValueError, TypeError, KeyError, AttributeError):
                watermark = None
        incremental = not full and src.updated_at_column is not None and watermark is not None
        engine, owned = self._make_engine()
        try:
            with self._connect(engine) as conn:
                table = self._from()
                stmt = sa.select(*(table.c[c] for c in self._columns())).select_from(table)
                if incremental and src.updated_at_column:
                    column = table.c[src.updated_at_column]
                    since = watermark
                    if isinstance(since, datetime) and src.watermark_overlap > timedelta(0):
                        since = since - src.watermark_overlap
                    stmt = stmt.where(column >= since).order_by(column, table.c[src.id_column])
                else:
                    stmt = stmt.order_by(table.c[src.id_column])
                seen: set[str] = set()
                highest = watermark
                returned = 0
                unknown = 0  # returned rows whose id the state does not hold
                result = conn.execution_options(
                    stream_results=True, yield_per=src.batch_rows
                ).execute(stmt)
                for row in result:
                    returned += 1
                    values = row._mapping
                    raw_id = values[src.id_column]
                    if _blank(raw_id) or str(raw_id).strip() not in state.versions:
                        unknown += 1
                    if src.updated_at_column:
                        value = values[src.updated_at_column]
                        if value is not None and (highest is None or value > highest):
                            highest = value
                    item = self._document(row, state)
                    if item is None:
                        continue
                    if item.native_id in seen:
                        self.problems.append((item.native_id, "duplicate id"))
                        continue
                    seen.add(item.native_id)
                    yield item
                rows_now = returned
                if incremental:
                    rows_now = int(
                        conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                    )
                # Rows may be gone when the table has fewer rows than the last listing left
                # plus the rows this one saw for the first time (any other mismatch, such as
                # rows without an id, only costs the id-set query).
                maybe_gone = (
                    not incremental or rows_before is None or (rows_now != rows_before + unknown)
                )
                if state.versions and maybe_gone:
                    present = seen if not incremental else self._ids(conn, table)
                    for native_id in state.versions:
                        if native_id not in present:
                            yield Deleted(native_id, "row no longer in the table or query")
                conn.rollback()
        finally:
            if owned:
                engine.dispose()
        if highest is None:
            self._cursor = None
        else:
            self._cursor = json.dumps({**_plain(highest), "rows": rows_now})

    def _ids(self, conn: Connection, table: sa.FromClause) -> set[str]:
        """Every id of the table or query (streamed; ids only)."""
        column = table.c[self.source.id_column]
        result = conn.execution_options(stream_results=True, yield_per=10_000).execute(
            sa.select(column).select_from(table)
        )
        return {str(v).strip() for (v,) in result if not _blank(v)}

    def list_documents(self) -> Iterator[SourceDocument]:
        """Yields every row as a document, ordered by id.

        Raises:
            as :meth:`changes`.
        """
        yield from full_listing_documents(self)

    @property
    def next_cursor(self) -> str | None:
        """JSON of the watermark (the highest ``updated_at`` read) and the table's row count,
        after a complete listing."""
        return self._cursor
