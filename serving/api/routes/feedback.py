"""``POST /v1/feedback``: a rating of an earlier search or query of the caller's tenant."""

from __future__ import annotations

import logging

from fastapi import APIRouter, status

from rag_platform.lib.store import NotFoundError
from serving.api.deps import PrincipalDep, StateDep
from serving.errors import ApiError, database_unavailable
from serving.schemas import COMMON_ERRORS, ErrorPublic, FeedbackPublic, FeedbackRequest

logger = logging.getLogger("serving.feedback")

router = APIRouter(prefix="/v1", tags=["feedback"])


@router.post(
    "/feedback",
    response_model=FeedbackPublic,
    status_code=status.HTTP_201_CREATED,
    responses={**COMMON_ERRORS, 404: {"model": ErrorPublic, "description": "Unknown query id."}},
    summary="Rate a search or an answer",
)
def create_feedback(
    body: FeedbackRequest, principal: PrincipalDep, state: StateDep
) -> FeedbackPublic:
    """Stores the rating against the query-log row ``query_id``.

    A query id of another tenant answers 404 exactly like an unknown one, so ids of other
    tenants cannot be probed.
    """

    def add() -> str:
        return str(
            state.store.add_feedback(
                body.query_id,
                principal.tenant,
                principal.key_id,
                body.rating,
                body.type,
                body.comment,
            )
        )

    try:
        try:
            feedback_id = add()
        except NotFoundError:
            # the query may be moments old, its row still with the query-log writer
            state.flush_query_log()
            feedback_id = add()
    except NotFoundError as exc:
        raise ApiError(404, "query_not_found", "no query with this id") from exc
    except ValueError as exc:
        raise ApiError(422, "validation_error", "the feedback is not valid") from exc
    except Exception as exc:
        raise database_unavailable() from exc
    return FeedbackPublic(feedback_id=str(feedback_id), query_id=body.query_id)
