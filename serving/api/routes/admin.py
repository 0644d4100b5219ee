"""Tenant administration (role ``admin``; every call is scoped to the admin key's tenant).

Rollbacks and revocations write an audit-log row (``index.rollback``, ``key.revoke``; the
store writes it in the same transaction) with the actor ``key:<admin key id>``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from fastapi import APIRouter, Response

from rag_platform.lib.index.versions import IndexVersions
from rag_platform.lib.lifecycle.erasure import DocumentEraser, check_doc_id
from rag_platform.lib.lifecycle.export import Exporter, to_json_line
from rag_platform.lib.lifecycle.lineage import QueryLineage
from rag_platform.lib.store import NotFoundError, VersionTransitionError
from serving.api.deps import AdminDep, StateDep
from serving.errors import ApiError, database_unavailable
from serving.schemas import (
    COMMON_ERRORS,
    ApiKeyPublic,
    ApiKeysPublic,
    CandidateAcceptRequest,
    DocumentPublic,
    DocumentsPublic,
    ErasureReceiptPublic,
    ErrorPublic,
    FailedCheckPublic,
    GoldenCandidatePublic,
    GoldenCandidatesPublic,
    IndexVersionPublic,
    IndexVersionsPublic,
    LineagePublic,
    ReceiptPublic,
    RollbackPublic,
    RollbackRequest,
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
)

logger = logging.getLogger("serving.admin")

ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **COMMON_ERRORS,
    403: {"model": ErrorPublic, "description": "The API key's role is not admin."},
}

router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=ADMIN_ERRORS)


def _unavailable(exc: Exception) -> ApiError:
    logger.error("admin call failed: store unavailable", extra={"error": type(exc).__name__})
    return database_unavailable()


@router.get("/documents", response_model=DocumentsPublic, summary="Documents in the index")
def list_documents(admin: AdminDep, state: StateDep) -> DocumentsPublic:
    """The tenant's documents in the published version, read from the index payloads (erased
    documents left out)."""
    try:
        version = state.published_version(admin.tenant)
    except Exception as exc:
        raise _unavailable(exc) from exc
    if version is None:
        raise ApiError(503, "index_not_ready", "no index version is published for this tenant")
    try:
        erased = state.erased_doc_ids(admin.tenant)
    except Exception as exc:
        raise _unavailable(exc) from exc
    docs: OrderedDict[str, DocumentPublic] = OrderedDict()
    try:
        with state.retrievers.open_reader(version) as reader:
            for _, payload in reader.payloads():
                if payload.get("tenant") != admin.tenant or payload.get("doc_id") in erased:
                    continue
                doc_id = str(payload.get("doc_id", ""))
                doc = docs.get(doc_id)
                if doc is None:
                    docs[doc_id] = DocumentPublic(
                        doc_id=doc_id,
                        title=str(payload.get("title") or ""),
                        uri=str(payload.get("uri") or ""),
                        source_id=str(payload.get("source_id") or ""),
                        chunks=1,
                    )
                else:
                    doc.chunks += 1
    except (FileNotFoundError, OSError, RuntimeError) as exc:
        raise ApiError(503, "index_unavailable", "the published index cannot be opened") from exc
    documents = sorted(docs.values(), key=lambda d: (d.title, d.doc_id))
    return DocumentsPublic(index_version=version.version, count=len(documents), documents=documents)


@router.delete(
    "/documents/{doc_id}",
    response_model=ErasureReceiptPublic,
    responses={422: {"model": ErrorPublic, "description": "Not a document id."}},
    summary="Erase a document",
)
def erase_document(doc_id: str, admin: AdminDep, state: StateDep) -> ErasureReceiptPublic:
    """Erases a document of the admin's tenant: put on the suppression list (a re-sync does not
    bring it back; the next index version does not hold it), removed from the content caches,
    the stored pipeline assets and the golden-set relevance, and excluded from every search at
    once. Returns the erasure receipt (also written to the audit log as ``erasure.document``);
    ``verification.passed`` says nothing of it is left, ``pending`` what the next
    materialization completes."""
    try:
        doc_id = check_doc_id(doc_id)
    except ValueError as exc:
        raise ApiError(422, "invalid_doc_id", "doc_id must be a document id (a UUID)") from exc
    try:
        receipt = DocumentEraser(state.settings, state.store, state.backend).run(
            admin.tenant, doc_id, actor=f"key:{admin.key_id}"
        )
    except Exception as exc:
        raise _unavailable(exc) from exc
    state.erased.invalidate(admin.tenant)
    return ErasureReceiptPublic.model_validate(receipt.to_dict())


#: Media type of the export archives (JSON Lines).
NDJSON = "application/x-ndjson"
_EXPORT_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {NDJSON: {}},
        "description": "JSON Lines: one record per line with a `type` field; `export` first, "
        "`summary` last.",
    }
}


def _jsonl(records: Any) -> Response:
    body = "".join(to_json_line(r) + "\n" for r in records)
    return Response(body, media_type=NDJSON)


@router.get(
    "/export",
    response_class=Response,
    responses={
        **_EXPORT_RESPONSE,
        404: {"model": ErrorPublic, "description": "The tenant is not in the registry."},
    },
    summary="Export everything stored about the tenant",
)
def export_tenant(admin: AdminDep, state: StateDep) -> Response:
    """The tenant's archive (JSON Lines): documents and chunks as indexed, API key metadata (no
    hashes), query log, feedback, index versions, suppressions, audit rows."""
    try:
        tenant = state.tenants.registry.get(admin.tenant)
    except KeyError as exc:
        raise ApiError(404, "tenant_not_found", "the tenant is not in the registry") from exc
    try:
        return _jsonl(Exporter(state.store, state.backend).tenant_records(tenant))
    except Exception as exc:
        raise _unavailable(exc) from exc


@router.get(
    "/principals/{key_id}/export",
    response_class=Response,
    responses={**_EXPORT_RESPONSE, 404: {"model": ErrorPublic, "description": "No such key."}},
    summary="Export everything stored about a principal",
)
def export_principal(key_id: str, admin: AdminDep, state: StateDep) -> Response:
    """A principal's archive (JSON Lines): its API key metadata, its queries, the feedback it
    gave and the audit rows it made. Only keys of the admin's tenant (else 404)."""
    try:
        records = list(Exporter(state.store, state.backend).principal_records(admin.tenant, key_id))
    except KeyError as exc:
        raise ApiError(404, "key_not_found", "no API key with this id in your tenant") from exc
    except Exception as exc:
        raise _unavailable(exc) from exc
    return _jsonl(records)


@router.get(
    "/queries/{query_id}/lineage",
    response_model=LineagePublic,
    responses={404: {"model": ErrorPublic, "description": "No such query in this tenant."}},
    summary="Lineage of a logged query",
)
def get_query_lineage(query_id: str, admin: AdminDep, state: StateDep) -> LineagePublic:
    """Source to answer in one call: for each cited (and retrieved) chunk of the query, its
    document, source, URI and content hash as the index version holds them; the version; the
    Dagster run that built it with the run's code version and configuration fingerprint."""
    if len(query_id) > 36:
        raise ApiError(404, "query_not_found", "no query with this id in your tenant")
    try:
        lineage = QueryLineage(state.store, state.backend).run(query_id, tenant=admin.tenant)
    except KeyError as exc:
        raise ApiError(404, "query_not_found", "no query with this id in your tenant") from exc
    except Exception as exc:
        raise _unavailable(exc) from exc
    return LineagePublic.model_validate(lineage.to_dict())


@router.get("/index-versions", response_model=IndexVersionsPublic, summary="Index versions")
def list_index_versions(admin: AdminDep, state: StateDep) -> IndexVersionsPublic:
    """Every index version of the tenant, newest first, and which one is published."""
    try:
        versions = state.store.list_versions(admin.tenant)
        published = state.store.get_published_version(admin.tenant)
    except Exception as exc:
        raise _unavailable(exc) from exc
    published_name = published.version if published is not None else None
    return IndexVersionsPublic(
        published_version=published_name,
        versions=[
            IndexVersionPublic(
                version=v.version,
                status=str(v.status),
                documents=v.documents,
                chunks=v.chunks,
                created_at=v.created_at,
                published_at=v.published_at,
                is_published=v.version == published_name,
                failed_checks=[
                    FailedCheckPublic(name=c["name"], reasons=list(c["reasons"]))
                    for c in v.failed_checks
                ],
            )
            for v in versions
        ],
    )


@router.post(
    "/index-versions/rollback",
    response_model=RollbackPublic,
    responses={
        404: {"model": ErrorPublic, "description": "No such version."},
        409: {"model": ErrorPublic, "description": "Nothing to roll back to."},
    },
    summary="Publish an earlier index version",
)
def rollback_index_version(
    body: RollbackRequest, admin: AdminDep, state: StateDep
) -> RollbackPublic:
    """Publishes ``version`` (default: the previously published one); audited."""
    try:
        before = state.store.get_published_version(admin.tenant)
    except Exception as exc:
        raise _unavailable(exc) from exc
    try:
        versions = IndexVersions(
            state.store,
            state.backend,
            state.settings.reports_dir,
            state.settings.versions_kept,
        )
        after = versions.rollback(admin.tenant, to_version=body.version, actor=admin.actor)
    except NotFoundError as exc:
        raise ApiError(404, "version_not_found", "no such index version") from exc
    except VersionTransitionError as exc:
        # e.g. version_rejected (with the failed checks), never_published, no_rollback_target
        raise ApiError(409, exc.code, exc.reason) from exc
    except Exception as exc:
        raise _unavailable(exc) from exc
    state.versions.invalidate(admin.tenant)
    # the store writes the audit row ``index.rollback`` in the same transaction
    previous = before.version if before is not None else None
    return RollbackPublic(previous_version=previous, published_version=after.version)


@router.get(
    "/index-versions/{version}/receipt",
    response_model=ReceiptPublic,
    responses={404: {"model": ErrorPublic, "description": "No such version, or no receipt."}},
    summary="Reconciliation receipt of an index version",
)
def get_index_version_receipt(version: str, admin: AdminDep, state: StateDep) -> ReceiptPublic:
    """What the reconciliation check found when ``version`` was built: source documents
    missing from it, orphans, ACL and chunk-count mismatches (all 0 for a publishable version)."""
    try:
        receipt = state.store.get_receipt(admin.tenant, version)
    except NotFoundError as exc:
        raise ApiError(404, "version_not_found", "no such index version") from exc
    except Exception as exc:
        raise _unavailable(exc) from exc
    if receipt is None:
        raise ApiError(404, "receipt_not_found", "this index version has no receipt")
    return ReceiptPublic.model_validate({"version": version, **receipt.to_dict()})


def _key_public(info: Any) -> ApiKeyPublic:
    return ApiKeyPublic(
        key_id=info.key_id,
        tenant=info.tenant,
        name=getattr(info, "name", "") or "",
        groups=list(getattr(info, "groups", []) or []),
        role=getattr(info, "role", "reader"),
        created_at=getattr(info, "created_at", None),
        expires_at=getattr(info, "expires_at", None),
        revoked_at=getattr(info, "revoked_at", None),
        last_used_at=getattr(info, "last_used_at", None),
    )


@router.get("/keys", response_model=ApiKeysPublic, summary="API keys of the tenant")
def list_api_keys(admin: AdminDep, state: StateDep) -> ApiKeysPublic:
    """The tenant's API keys (ids, names, groups, roles, dates; never secrets)."""
    try:
        keys = state.store.list_api_keys(admin.tenant)
    except Exception as exc:
        raise _unavailable(exc) from exc
    return ApiKeysPublic(keys=[_key_public(k) for k in keys if k.tenant == admin.tenant])


@router.post(
    "/keys/{key_id}/revoke",
    response_model=ApiKeyPublic,
    responses={404: {"model": ErrorPublic, "description": "No such key in this tenant."}},
    summary="Revoke an API key of the tenant",
)
def revoke_api_key(key_id: str, admin: AdminDep, state: StateDep) -> ApiKeyPublic:
    """Revokes ``key_id`` if it belongs to the admin's tenant (else 404, like an unknown key)."""
    try:
        keys = {k.key_id: k for k in state.store.list_api_keys(admin.tenant)}
    except Exception as exc:
        raise _unavailable(exc) from exc
    target = keys.get(key_id)
    if target is None or target.tenant != admin.tenant:
        raise ApiError(404, "key_not_found", "no API key with this id in your tenant")
    try:
        # audit row ``key.revoke`` written by the store in the same transaction
        state.store.revoke_api_key(key_id, actor=admin.actor)
        refreshed = {k.key_id: k for k in state.store.list_api_keys(admin.tenant)}
    except Exception as exc:
        raise _unavailable(exc) from exc
    return _key_public(refreshed.get(key_id, target))


@router.get(
    "/webhook-deliveries",
    response_model=WebhookDeliveriesPublic,
    summary="Webhook delivery log of the tenant",
)
def list_webhook_deliveries(
    admin: AdminDep, state: StateDep, limit: int = 100
) -> WebhookDeliveriesPublic:
    """The tenant's latest webhook deliveries, newest first (``limit`` 1-1000): event, URL,
    outcome, attempts, the receiver's last HTTP status and the error."""
    if not 1 <= limit <= 1000:
        raise ApiError(422, "validation_error", "limit must be between 1 and 1000")
    try:
        rows = state.store.webhook_deliveries.find(admin.tenant, limit)
    except Exception as exc:
        raise _unavailable(exc) from exc
    return WebhookDeliveriesPublic(
        deliveries=[
            WebhookDeliveryPublic(
                delivery_id=r.delivery_id,
                event=r.event,
                url=r.url,
                run_id=r.run_id,
                status=r.status,
                attempts=r.attempts,
                status_code=r.status_code,
                error=r.error,
                created_at=r.created_at,
            )
            for r in rows
        ]
    )


_CANDIDATE_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorPublic, "description": "No such candidate in this tenant."},
    422: {"model": ErrorPublic, "description": "Accepted without documents or answer."},
}


def _candidate_public(c: Any) -> GoldenCandidatePublic:
    from dataclasses import asdict

    return GoldenCandidatePublic.model_validate(asdict(c))


@router.get(
    "/golden-candidates",
    response_model=GoldenCandidatesPublic,
    summary="Golden-set candidates from low-rated queries",
)
def list_golden_candidates(
    admin: AdminDep, state: StateDep, status: str | None = None
) -> GoldenCandidatesPublic:
    """The tenant's golden-set candidates (``status``: pending, accepted or rejected; default
    all), oldest first: question, retrieved chunks, rating, comment and review."""
    if status not in (None, "pending", "accepted", "rejected"):
        raise ApiError(422, "validation_error", "status must be pending, accepted or rejected")
    try:
        found = state.store.golden_candidates.find(admin.tenant, status)  # type: ignore[arg-type]
    except Exception as exc:
        raise _unavailable(exc) from exc
    return GoldenCandidatesPublic(candidates=[_candidate_public(c) for c in found])


def _review(
    admin: Any, state: Any, candidate_id: str, status: str, body: CandidateAcceptRequest | None
) -> GoldenCandidatePublic:
    try:
        done = state.store.golden_candidates.review(
            admin.tenant,
            candidate_id,
            status,
            admin.actor,
            relevant_doc_ids=body.relevant_doc_ids if body else None,
            reference_answer=body.reference_answer if body else "",
        )
    except NotFoundError as exc:
        raise ApiError(404, "candidate_not_found", "no such candidate in your tenant") from exc
    except ValueError as exc:
        raise ApiError(422, "validation_error", str(exc)) from exc
    except Exception as exc:
        raise _unavailable(exc) from exc
    return _candidate_public(done)


@router.post(
    "/golden-candidates/{candidate_id}/accept",
    response_model=GoldenCandidatePublic,
    responses=_CANDIDATE_NOT_FOUND,
    summary="Accept a golden-set candidate",
)
def accept_golden_candidate(
    candidate_id: str, body: CandidateAcceptRequest, admin: AdminDep, state: StateDep
) -> GoldenCandidatePublic:
    """Accepts the candidate with the documents that answer it and/or a reference answer; the
    tenant's next ``golden_set`` materialization includes it."""
    return _review(admin, state, candidate_id, "accepted", body)


@router.post(
    "/golden-candidates/{candidate_id}/reject",
    response_model=GoldenCandidatePublic,
    responses=_CANDIDATE_NOT_FOUND,
    summary="Reject a golden-set candidate",
)
def reject_golden_candidate(
    candidate_id: str, admin: AdminDep, state: StateDep
) -> GoldenCandidatePublic:
    """Rejects the candidate; it is never proposed again."""
    return _review(admin, state, candidate_id, "rejected", None)
