"""``/v1/conversations``: conversations of the calling principal.

- ``POST /v1/conversations``: 201, a new empty conversation.
- ``POST /v1/conversations/{id}/messages``: the message rewritten into a standalone question
  from the history, retrieved and answered with ``[n]`` citations (as ``/v1/query``).
- ``GET /v1/conversations/{id}``: the conversation and its messages (PII-masked as stored).
- ``DELETE /v1/conversations/{id}``: 204; the conversation and its messages are deleted.

A conversation is the principal's own: another API key, even of the same tenant, gets 404
exactly as for an unknown id. The flow is :mod:`serving.services.conversations`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from rag_platform.lib.store.conversations import Conversation
from serving.api.deps import PrincipalDep, PublishedVersionDep, StateDep
from serving.schemas import (
    COMMON_ERRORS,
    CitationPublic,
    ConversationAnswerPublic,
    ConversationCreateRequest,
    ConversationPublic,
    ErrorPublic,
    HitPublic,
    MessagePublic,
    MessageRequest,
    TimingsPublic,
    UsagePublic,
)
from serving.services import conversations as service

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorPublic, "description": "No such conversation of the caller."}
}

router = APIRouter(prefix="/v1/conversations", tags=["conversations"], responses=COMMON_ERRORS)


def _public(conv: Conversation) -> ConversationPublic:
    return ConversationPublic(
        conversation_id=conv.conversation_id,
        title=conv.title,
        created_at=conv.created_at,
        updated_at=conv.updated_at,
        messages=[
            MessagePublic(
                ordinal=m.ordinal,
                role=m.role,  # type: ignore[arg-type]
                content=m.content,
                standalone_question=m.standalone if m.role == "user" else None,
                rewrite=m.rewrite if m.role == "user" else None,
                query_id=m.query_id or None,
                citations=list(m.citations),
                created_at=m.created_at,
            )
            for m in conv.messages
        ],
    )


@router.post(
    "",
    response_model=ConversationPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Start a conversation",
)
def create_conversation(
    body: ConversationCreateRequest, principal: PrincipalDep, state: StateDep
) -> ConversationPublic:
    """A new, empty conversation of the calling principal."""
    return _public(service.create(state, principal, body.title))


@router.post(
    "/{conversation_id}/messages",
    response_model=ConversationAnswerPublic,
    responses=NOT_FOUND,
    summary="Ask a question in a conversation",
)
def create_message(
    conversation_id: str,
    body: MessageRequest,
    principal: PrincipalDep,
    version: PublishedVersionDep,
    state: StateDep,
    response: Response,
) -> ConversationAnswerPublic:
    """Rewrites the message into a standalone question from the conversation's history,
    retrieves the caller's visible chunks for it and answers with ``[n]`` citations."""
    done = service.reply(state, principal, version, conversation_id, body)
    got, answered = done.search.retrieved, done.answered
    response.headers["X-Query-Id"] = done.search.record.query_id
    return ConversationAnswerPublic(
        conversation_id=conversation_id,
        query_id=done.search.record.query_id,
        index_version=version.version,
        question=body.content,
        standalone_question=done.rewrite.question,
        rewrite=done.rewrite.kind,
        answer=answered.answer.text,
        mode=answered.answer.mode,
        cached=answered.cached,
        citations=[CitationPublic.from_citation(c) for c in answered.citations],
        hits=[HitPublic.from_hit(h) for h in got.hits],
        usage=UsagePublic(
            prompt_tokens=answered.answer.prompt_tokens,
            completion_tokens=answered.answer.completion_tokens,
        ),
        timings=TimingsPublic(
            embed_ms=got.embed_ms,
            search_ms=got.search_ms,
            answer_ms=answered.answer_ms,
            total_ms=answered.total_ms,
        ),
    )


@router.get(
    "/{conversation_id}",
    response_model=ConversationPublic,
    responses=NOT_FOUND,
    summary="Read a conversation",
)
def get_conversation(
    conversation_id: str, principal: PrincipalDep, state: StateDep
) -> ConversationPublic:
    """The caller's conversation and its messages, oldest first (text PII-masked as stored)."""
    return _public(service.get(state, principal, conversation_id))


@router.delete(
    "/{conversation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=NOT_FOUND,
    summary="Delete a conversation",
)
def delete_conversation(conversation_id: str, principal: PrincipalDep, state: StateDep) -> Response:
    """Deletes the caller's conversation and its messages."""
    service.delete(state, principal, conversation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
