"""Conversations: per-principal conversation memory (``conversations``,
``conversation_messages``).

A conversation belongs to one principal (tenant and API key id); every read and write names
both, so a conversation of another principal or tenant is indistinguishable from a missing one
(:class:`~rag_platform.lib.store.db.NotFoundError`). Text arrives PII-masked from the caller and
is sealed at rest with the tenant's data key by a :class:`TextSealer` (purpose
``conversation``), as the query log's questions are.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, delete, func, select, update

from rag_platform.lib.crypto import Keyring
from rag_platform.lib.store.db import Database, NotFoundError
from rag_platform.lib.store.rows import check_text
from rag_platform.lib.store.schema import (
    as_utc,
    conversation_messages_table,
    conversations_table,
    utcnow,
)
from rag_platform.lib.store.tenants import check_tenant

#: The purpose conversation text is sealed for (:class:`TextSealer`).
PURPOSE_CONVERSATION = "conversation"
#: Longest message accepted (characters, after masking).
MAX_MESSAGE_CHARS = 20_000


class TextSealer:
    """Seals text of the metadata store with the tenant's data key (AES-GCM,
    :meth:`rag_platform.lib.crypto.Keyring.seal_text`) for one purpose, and opens it; without a
    keyring (or for empty text) the text is stored as it is. Text written before encryption
    opens as it is.

    Args:
        keyring: the store's keyring, or None.
        purpose: bound into each sealed value (a value sealed for another purpose or tenant
            fails to open).
    """

    def __init__(self, keyring: Keyring | None, purpose: str) -> None:
        self._keyring = keyring
        self._purpose = purpose

    def seal(self, tenant: str, text: str) -> str:
        """The stored form of ``text``."""
        if self._keyring is None or not text:
            return text
        return self._keyring.seal_text(tenant, text, self._purpose)

    def open(self, tenant: str, stored: str) -> str:
        """The plaintext of a stored value.

        Raises:
            rag_platform.lib.crypto.SealedDataError: tampered, or sealed for another tenant or
                purpose; ``KeyDestroyedError`` after the tenant's key was destroyed.
        """
        if self._keyring is None or not stored:
            return stored
        return self._keyring.open_text(tenant, stored, self._purpose)


@dataclass
class ConversationMessage:
    """One stored turn.

    Attributes:
        ordinal: position in the conversation, from 0.
        role: ``user`` or ``assistant``.
        content: the message (PII-masked): the user's words, or the answer with ``[n]``.
        standalone: for a user message, the standalone question it was rewritten into (masked).
        rewrite: how: ``none`` (first or self-contained question), ``rule`` or ``llm``.
        query_id: the query-log id of the retrieval and answer (both turns of a pair carry it).
        citations: for an answer, the cited chunk ids, in ``[n]`` order.
        created_at: when it was stored (UTC).
    """

    ordinal: int
    role: str
    content: str
    standalone: str = ""
    rewrite: str = ""
    query_id: str = ""
    citations: list[str] = field(default_factory=list)
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class Conversation:
    """A conversation and (when read with them) its messages, oldest first."""

    conversation_id: str
    tenant: str
    key_id: str
    title: str
    created_at: datetime
    updated_at: datetime
    messages: list[ConversationMessage] = field(default_factory=list)


class ConversationRepository:
    """The ``conversations`` and ``conversation_messages`` tables.

    Args:
        db: The database handle.
        keyring: Seals titles and message text at rest (plaintext when None).
    """

    def __init__(self, db: Database, keyring: Keyring | None = None) -> None:
        self._db = db
        self._text = TextSealer(keyring, PURPOSE_CONVERSATION)

    def create(self, tenant: str, key_id: str, title: str = "") -> Conversation:
        """A new, empty conversation of the principal.

        Raises:
            ValueError: A bad tenant id, an empty key id, a title over 200 characters.
        """
        check_tenant(tenant)
        check_text(key_id, "key_id", 12)
        check_text(title, "title", 200, allow_empty=True)
        now = utcnow()
        conv = Conversation(str(uuid.uuid4()), tenant, key_id, title, now, now)
        # sealed before the transaction: the tenant's first seal writes its data key
        sealed_title = self._text.seal(tenant, title)
        with self._db.transaction() as conn:
            conn.execute(
                conversations_table.insert().values(
                    conversation_id=conv.conversation_id,
                    tenant=tenant,
                    key_id=key_id,
                    title_masked=sealed_title,
                    created_at=now,
                    updated_at=now,
                )
            )
        return conv

    def _owned(
        self, conn: Connection, tenant: str, key_id: str, conversation_id: str
    ) -> Conversation:
        row = (
            conn.execute(
                select(conversations_table).where(
                    conversations_table.c.conversation_id == conversation_id,
                    conversations_table.c.tenant == tenant,
                    conversations_table.c.key_id == key_id,
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFoundError(f"no conversation {conversation_id!r}")
        return Conversation(
            row["conversation_id"],
            row["tenant"],
            row["key_id"],
            self._text.open(tenant, row["title_masked"]),
            row["created_at"],
            row["updated_at"],
        )

    def get(self, tenant: str, key_id: str, conversation_id: str) -> Conversation:
        """The principal's conversation with its messages.

        Raises:
            NotFoundError: No such conversation of this principal (also when it belongs to
                another principal or tenant: the error does not say which).
        """
        if len(conversation_id) > 36:
            raise NotFoundError(f"no conversation {conversation_id[:40]!r}")
        with self._db.transaction(write=False) as conn:
            conv = self._owned(conn, tenant, key_id, conversation_id)
            rows = conn.execute(
                select(conversation_messages_table)
                .where(conversation_messages_table.c.conversation_id == conversation_id)
                .order_by(conversation_messages_table.c.ordinal)
            ).mappings()
            conv.messages = [
                ConversationMessage(
                    ordinal=r["ordinal"],
                    role=r["role"],
                    content=self._text.open(tenant, r["content_masked"]),
                    standalone=self._text.open(tenant, r["standalone_masked"]),
                    rewrite=r["rewrite"],
                    query_id=r["query_id"],
                    citations=list(r["citations"] or []),
                    created_at=r["created_at"],
                )
                for r in rows
            ]
        return conv

    def append(
        self,
        tenant: str,
        key_id: str,
        conversation_id: str,
        messages: list[ConversationMessage],
    ) -> list[ConversationMessage]:
        """Appends messages (their ``ordinal`` is assigned here, after the last stored one) in
        one transaction and touches the conversation's ``updated_at``.

        Returns:
            The messages with their ordinals.

        Raises:
            NotFoundError: As :meth:`get`.
            ValueError: A message over :data:`MAX_MESSAGE_CHARS` or with an unknown role.
        """
        for m in messages:
            if m.role not in ("user", "assistant"):
                raise ValueError(f"unknown message role {m.role!r}")
            check_text(m.content, "message", MAX_MESSAGE_CHARS, allow_empty=True)
        now = utcnow()
        # sealed before the transaction: the tenant's first seal writes its data key
        sealed = [
            (self._text.seal(tenant, m.content), self._text.seal(tenant, m.standalone))
            for m in messages
        ]
        with self._db.transaction() as conn:
            self._owned(conn, tenant, key_id, conversation_id)
            last = conn.scalar(
                select(func.max(conversation_messages_table.c.ordinal)).where(
                    conversation_messages_table.c.conversation_id == conversation_id
                )
            )
            start = -1 if last is None else int(last)
            for i, m in enumerate(messages, start=start + 1):
                m.ordinal, m.created_at = i, now
            if messages:
                conn.execute(
                    conversation_messages_table.insert(),
                    [
                        {
                            "conversation_id": conversation_id,
                            "tenant": tenant,
                            "ordinal": m.ordinal,
                            "role": m.role,
                            "content_masked": content,
                            "standalone_masked": standalone,
                            "rewrite": m.rewrite,
                            "query_id": m.query_id,
                            "citations": list(m.citations),
                            "created_at": now,
                        }
                        for m, (content, standalone) in zip(messages, sealed, strict=True)
                    ],
                )
            conn.execute(
                update(conversations_table)
                .where(conversations_table.c.conversation_id == conversation_id)
                .values(updated_at=now)
            )
        return messages

    def find(self, tenant: str, key_id: str | None = None) -> list[Conversation]:
        """The tenant's conversations (of one principal when ``key_id`` is given), with their
        messages, oldest first (the export reads them)."""
        stmt = select(conversations_table.c.conversation_id, conversations_table.c.key_id).where(
            conversations_table.c.tenant == tenant
        )
        if key_id is not None:
            stmt = stmt.where(conversations_table.c.key_id == key_id)
        stmt = stmt.order_by(
            conversations_table.c.created_at, conversations_table.c.conversation_id
        )
        with self._db.transaction(write=False) as conn:
            ids = [(r.conversation_id, r.key_id) for r in conn.execute(stmt)]
        return [self.get(tenant, k, c) for c, k in ids]

    def count(self, tenant: str, key_id: str | None = None) -> int:
        """How many conversations the tenant (or one principal of it) has."""
        stmt = select(func.count()).where(conversations_table.c.tenant == tenant)
        if key_id is not None:
            stmt = stmt.where(conversations_table.c.key_id == key_id)
        with self._db.transaction(write=False) as conn:
            return int(conn.scalar(stmt) or 0)

    def delete(
        self,
        tenant: str,
        *,
        key_id: str | None = None,
        conversation_id: str | None = None,
        before: datetime | None = None,
    ) -> tuple[int, int]:
        """Deletes conversations of the tenant, with their messages, in one transaction.

        Args:
            tenant: Tenant id.
            key_id: Only the principal's conversations.
            conversation_id: Only this conversation.
            before: Only conversations last updated before this time (naive = UTC).

        Returns:
            ``(conversations deleted, messages deleted)``.

        Raises:
            ValueError: None of ``key_id``, ``conversation_id``, ``before`` given.
        """
        if key_id is None and conversation_id is None and before is None:
            raise ValueError("give key_id, conversation_id or before: refusing to delete all")
        where = [conversations_table.c.tenant == tenant]
        if key_id is not None:
            where.append(conversations_table.c.key_id == key_id)
        if conversation_id is not None:
            where.append(conversations_table.c.conversation_id == conversation_id)
        if before is not None:
            where.append(conversations_table.c.updated_at < as_utc(before))
        ids = select(conversations_table.c.conversation_id).where(*where)
        with self._db.transaction() as conn:
            messages = conn.execute(
                delete(conversation_messages_table).where(
                    conversation_messages_table.c.conversation_id.in_(ids)
                )
            ).rowcount
            conversations = conn.execute(delete(conversations_table).where(*where)).rowcount
        return int(conversations), int(messages)
