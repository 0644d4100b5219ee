"""The flow of ``/v1/conversations``: per-principal conversations whose follow-ups are rewritten
into standalone questions, then retrieved and answered exactly as ``/v1/query`` does.

A message: load the caller's conversation (another principal's or tenant's is a 404), rewrite
the message from the stored history (:func:`rag_platform.lib.rag.build_rewriter`: the LLM when
configured, else the rule of :mod:`rag_platform.lib.conversation`), retrieve and answer the
standalone question through :func:`serving.services.search.start_search` and
:func:`serving.services.query.answer` (cache, experiment variant, re-checks, citations and the
query-log row, with endpoint ``conversation``), then store both turns PII-masked with the
tenant's policy, as the query log stores questions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rag_platform.lib.conversation import Rewrite, Turn
from rag_platform.lib.models import Principal
from rag_platform.lib.store import IndexVersion, NotFoundError
from rag_platform.lib.store.conversations import Conversation, ConversationMessage
from serving.errors import ApiError, database_unavailable
from serving.schemas import MessageRequest, SearchRequest
from serving.services import query as query_service
from serving.services.search import Search, start_search
from serving.state import ServingState

logger = logging.getLogger("serving.conversations")


def not_found() -> ApiError:
    """The one 404 for a conversation that is missing or not the caller's."""
    return ApiError(404, "conversation_not_found", "no conversation with this id")


def _unavailable(exc: Exception) -> ApiError:
    logger.error("conversation store unavailable", extra={"error": type(exc).__name__})
    return database_unavailable()


def create(state: ServingState, principal: Principal, title: str) -> Conversation:
    """A new conversation of the caller (its title masked).

    Raises:
        ApiError: 503 ``database_unavailable``.
    """
    masked = state.mask_question(principal.tenant, title) if title.strip() else ""
    try:
        return state.store.conversations.create(principal.tenant, principal.key_id, masked)
    except Exception as exc:
        raise _unavailable(exc) from exc


def get(state: ServingState, principal: Principal, conversation_id: str) -> Conversation:
    """The caller's conversation with its messages.

    Raises:
        ApiError: 404 ``conversation_not_found``; 503 ``database_unavailable``.
    """
    try:
        return state.store.conversations.get(principal.tenant, principal.key_id, conversation_id)
    except NotFoundError as exc:
        raise not_found() from exc
    except Exception as exc:
        raise _unavailable(exc) from exc


def delete(state: ServingState, principal: Principal, conversation_id: str) -> None:
    """Deletes the caller's conversation and its messages.

    Raises:
        ApiError: 404 ``conversation_not_found``; 503 ``database_unavailable``.
    """
    get(state, principal, conversation_id)  # 404 unless it is the caller's
    try:
        state.store.conversations.delete(
            principal.tenant, key_id=principal.key_id, conversation_id=conversation_id
        )
    except Exception as exc:
        raise _unavailable(exc) from exc


@dataclass
class Replied:
    """One answered message.

    Attributes:
        conversation_id: the conversation.
        rewrite: the standalone question and how it was made.
        search: the retrieval (its record is the query-log row).
        answered: the answer and its citations.
    """

    conversation_id: str
    rewrite: Rewrite
    search: Search
    answered: query_service.Answered


def reply(
    state: ServingState,
    principal: Principal,
    version: IndexVersion,
    conversation_id: str,
    body: MessageRequest,
) -> Replied:
    """Answers a message of the caller's conversation and stores both turns.

    Raises:
        ApiError: 404 ``conversation_not_found``; 503 ``database_unavailable``; whatever
            :func:`~serving.services.search.start_search` and
            :func:`~serving.services.query.answer` raise.
    """
    conversation = get(state, principal, conversation_id)
    history = [Turn(m.role, m.content, m.standalone) for m in conversation.messages]
    rewrite = state.models.rewriter.rewrite(history, body.content)
    search = start_search(
        state,
        principal,
        version,
        "query",
        SearchRequest(query=rewrite.question, top_k=body.top_k, filters=body.filters),
        logged_endpoint="conversation",
    )
    answered = query_service.answer(state, search, rewrite.question)
    tenant, query_id = principal.tenant, search.record.query_id
    turns = [
        ConversationMessage(
            ordinal=0,
            role="user",
            content=state.mask_question(tenant, body.content),
            standalone=state.mask_question(tenant, rewrite.question),
            rewrite=rewrite.kind,
            query_id=query_id,
        ),
        ConversationMessage(
            ordinal=0,
            role="assistant",
            content=state.mask_question(tenant, answered.answer.text),
            query_id=query_id,
            citations=[c.chunk_id for c in answered.citations],
        ),
    ]
    try:
        state.store.conversations.append(tenant, principal.key_id, conversation_id, turns)
    except NotFoundError as exc:  # deleted while the answer was being made
        raise not_found() from exc
    except Exception as exc:
        raise _unavailable(exc) from exc
    return Replied(conversation_id, rewrite, search, answered)
