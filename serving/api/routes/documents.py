"""The ingestion API (role ``writer`` or ``admin``; everything scoped to the key's tenant).

- ``POST /v1/documents``: a file (``multipart/form-data``, field ``file``, optional
  ``acl_groups`` comma-separated, ``title``, ``uri``) or a text document (JSON
  ``{title, text, uri, acl_groups}``); 202 ``{"doc_id", "job_id"}``.
- ``DELETE /v1/documents/{doc_id}``: an uploaded document; 202 ``{"job_id"}``.
- ``GET /v1/jobs/{job_id}``: the status of the sync a job triggered.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from rag_platform.lib.models import Principal
from serving.api.deps import StateDep, WriterDep
from serving.errors import ApiError
from serving.schemas import (
    COMMON_ERRORS,
    DocumentAcceptedPublic,
    DocumentTextRequest,
    ErrorPublic,
    JobAcceptedPublic,
    JobPublic,
)

WRITER_ERRORS: dict[int | str, dict[str, Any]] = {
    **COMMON_ERRORS,
    403: {"model": ErrorPublic, "description": "The API key's role is not writer or admin."},
}

router = APIRouter(prefix="/v1", tags=["ingestion"], responses=WRITER_ERRORS)

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "acl_groups": {"type": "string", "description": "comma-separated"},
                        "title": {"type": "string"},
                        "uri": {"type": "string"},
                    },
                }
            },
            "application/json": {"schema": DocumentTextRequest.model_json_schema()},
        },
    }
}
_ID = re.compile(r"^[0-9a-f-]{36}$")
#: Most form fields besides the file (acl_groups, title, uri).
_MAX_FORM_FIELDS = 8


def _form_text(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(422, "validation_error", f"form field {name!r} must be text")
    return value


async def _upload(request: Request, principal: Principal, state: StateDep) -> tuple[str, str]:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=_MAX_FORM_FIELDS)
        except Exception as exc:  # malformed multipart, too many parts
            raise ApiError(400, "bad_request", f"cannot read the form: {exc}") from exc
        try:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise ApiError(422, "validation_error", "the form needs a file field `file`")
            content = await file.read()
            return await run_in_threadpool(
                state.ingest.upload,
                principal,
                filename=file.filename or "",
                content=content,
                acl_groups=_form_text(form.get("acl_groups"), "acl_groups"),
                title=_form_text(form.get("title"), "title"),
                uri=_form_text(form.get("uri"), "uri"),
            )
        finally:
            await form.close()
    if content_type == "application/json":
        try:
            body = DocumentTextRequest.model_validate_json(await request.body())
        except ValidationError as exc:  # 400 malformed_json or 422, in the one error shape
            raise RequestValidationError(exc.errors()) from exc
        return await run_in_threadpool(
            state.ingest.upload,
            principal,
            filename=f"{body.title[:80]}.txt",
            content=body.text.encode("utf-8"),
            acl_groups=body.acl_groups,
            title=body.title,
            uri=body.uri,
        )
    raise ApiError(
        415,
        "unsupported_media_type",
        "send multipart/form-data (field `file`) or application/json {title, text}",
    )


@router.post(
    "/documents",
    response_model=DocumentAcceptedPublic,
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=_UPLOAD_BODY,
    responses={
        404: {"model": ErrorPublic, "description": "The key's tenant is not in the registry."},
        415: {"model": ErrorPublic, "description": "File type not accepted."},
    },
    summary="Upload a document",
)
async def create_document(
    request: Request, writer: WriterDep, state: StateDep
) -> DocumentAcceptedPublic:
    """Stores the document in the tenant's managed upload source and queues the sync that
    indexes it; follow it with ``GET /v1/jobs/{job_id}``."""
    doc_id, job_id = await _upload(request, writer, state)
    return DocumentAcceptedPublic(doc_id=doc_id, job_id=job_id)


@router.delete(
    "/documents/{doc_id}",
    response_model=JobAcceptedPublic,
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"model": ErrorPublic, "description": "No such uploaded document."}},
    summary="Delete an uploaded document",
)
def delete_document(doc_id: str, writer: WriterDep, state: StateDep) -> JobAcceptedPublic:
    """Removes the upload and queues the sync that drops it from the next index version."""
    if not _ID.fullmatch(doc_id):
        raise ApiError(
            404, "document_not_found", "no uploaded document with this id in your tenant"
        )
    return JobAcceptedPublic(job_id=state.ingest.delete(writer, doc_id))


@router.get(
    "/jobs/{job_id}",
    response_model=JobPublic,
    responses={404: {"model": ErrorPublic, "description": "No such job in this tenant."}},
    summary="Status of an ingestion job",
)
def get_job(job_id: str, writer: WriterDep, state: StateDep) -> JobPublic:
    """``queued``, ``running`` (stage and counts), ``published`` (index version) or
    ``failed`` (stage and error) — the Dagster run of the job's batch."""
    if not _ID.fullmatch(job_id):
        raise ApiError(404, "job_not_found", "no job with this id in your tenant")
    return state.ingest.job(writer, job_id)
