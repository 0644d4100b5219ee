"""The managed upload source: documents sent through ``POST /v1/documents``.

Every tenant has one, with the reserved source id :data:`UPLOAD_SOURCE_ID`, in a folder the
platform owns (``RAG_HOME/uploads/<tenant>``; no ``tenants.yaml`` entry needed). Each upload is
one folder named by a random upload id::

    RAG_HOME/uploads/<tenant>/<upload_id>/<file name>    the bytes as sent
    RAG_HOME/uploads/<tenant>/<upload_id>/.acl           its ACL groups, one per line
    RAG_HOME/uploads/<tenant>/<upload_id>/.meta.json     title and URI given by the client

It is read by the filesystem connector's own walk (containment, budgets, ``.acl`` files, hidden
entries skipped), so an upload is exactly a file in a filesystem source; :class:`UploadConnector`
only applies the title and URI of ``.meta.json``. A folder is written under a hidden temporary
name and renamed into place, so a sync never sees half an upload.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath

from rag_platform.lib.connectors.filesystem import (
    ACL_FILE_NAME,
    FilesystemConnector,
    mime_type_for,
)
from rag_platform.lib.models import SourceDocument, make_doc_id
from rag_platform.lib.tenants import FilesystemSource, TenantConfig, validate_acl_group

#: Source id of every tenant's managed upload source (a configured source may not use it).
UPLOAD_SOURCE_ID = "uploads"
#: File of an upload's folder holding the client's title and URI.
META_FILE_NAME = ".meta.json"
#: Longest file name kept (characters).
MAX_FILENAME_CHARS = 200
#: Longest title and URI accepted (characters).
MAX_TITLE_CHARS = 500
MAX_URI_CHARS = 2000
#: Most ACL groups one document may carry.
MAX_ACL_GROUPS = 64

_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


class UploadRejected(ValueError):
    """An upload the policy refuses.

    Attributes:
        code: stable snake_case reason (``unsupported_media_type``, ``file_too_large``,
            ``empty_document``, ``invalid_acl_group``, ``invalid_filename``,
            ``uploads_disabled``, ``invalid_field``).
        status: the HTTP status the API answers with.
    """

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class UploadSource(FilesystemSource):
    """The tenant's managed upload folder as a filesystem source (built, never configured)."""


class UploadConnector(FilesystemConnector):
    """The filesystem connector over an upload folder, with each upload's ``.meta.json`` title
    and URI applied (a missing or unreadable ``.meta.json`` keeps the file's own)."""

    def list_documents(self) -> Iterator[SourceDocument]:
        """Yields one document per upload (see :meth:`FilesystemConnector.list_documents`)."""
        for doc in super().list_documents():
            meta_path = self.root / PurePosixPath(doc.native_id).parent / META_FILE_NAME
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                meta = {}
            title = meta.get("title") if isinstance(meta, dict) else None
            uri = meta.get("uri") if isinstance(meta, dict) else None
            yield replace(
                doc,
                title=str(title)[:MAX_TITLE_CHARS] if title else doc.title,
                uri=str(uri)[:MAX_URI_CHARS] if uri else doc.uri,
            )


def parse_acl_groups(value: str | list[str] | None) -> list[str] | None:
    """ACL groups of an upload: a comma-separated string (multipart field) or a list (JSON).

    Returns:
        The groups, de-duplicated in order; None when none were given (the tenant's
        ``default_acl_groups`` apply).

    Raises:
        UploadRejected: ``invalid_acl_group`` (a bad name, or more than
            :data:`MAX_ACL_GROUPS`).
    """
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    groups = [p.strip() for p in parts if p.strip()]
    if not groups:
        return None
    if len(groups) > MAX_ACL_GROUPS:
        raise UploadRejected("invalid_acl_group", f"at most {MAX_ACL_GROUPS} ACL groups")
    try:
        return list(dict.fromkeys(validate_acl_group(g) for g in groups))
    except ValueError as exc:
        raise UploadRejected("invalid_acl_group", str(exc)) from exc


def safe_filename(name: str) -> str:
    """The last path component of ``name`` with unsafe characters replaced by ``_``.

    Raises:
        UploadRejected: ``invalid_filename`` (nothing left, a hidden name, or no extension).
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    base = _UNSAFE.sub("_", base)[-MAX_FILENAME_CHARS:].strip(" ")
    if not base or base.startswith(".") or "." not in base:
        raise UploadRejected("invalid_filename", "the file needs a name with an extension")
    return base


class UploadStore:
    """Writes and deletes uploads under ``root/<tenant>``.

    Args:
        root: ``RAG_HOME/uploads`` (``Settings.uploads_dir``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def tenant_dir(self, tenant_id: str) -> Path:
        """``root/<tenant>`` (the tenant id is pattern-checked by the registry)."""
        return self.root / tenant_id

    def save(
        self,
        tenant: TenantConfig,
        filename: str,
        content: bytes,
        acl_groups: list[str] | None,
        *,
        title: str | None = None,
        uri: str | None = None,
        max_bytes: int | None = None,
    ) -> str:
        """Stores one upload after checking it against the tenant's policy.

        Args:
            tenant: the tenant (its ``uploads`` policy and ``budgets`` apply).
            filename: the client's file name; its extension decides the MIME type.
            content: the bytes.
            acl_groups: checked groups (:func:`parse_acl_groups`); None for the default.
            title: display title (default: the file name's stem).
            uri: the document's URI in the client's world (default: the file's ``file://``).
            max_bytes: a lower size limit than the tenant's ``budgets.max_file_bytes``.

        Returns:
            The document id the sync will give it.

        Raises:
            UploadRejected: ``uploads_disabled`` (403), ``invalid_filename``,
                ``unsupported_media_type`` (415), ``file_too_large`` (413),
                ``empty_document``, ``invalid_field`` (title or URI too long).
        """
        if not tenant.uploads.enabled:
            raise UploadRejected("uploads_disabled", "uploads are disabled for this tenant", 403)
        name = safe_filename(filename)
        mime = mime_type_for(name)
        if mime not in tenant.uploads.allowed_mime_types:
            allowed = ", ".join(tenant.uploads.allowed_mime_types)
            raise UploadRejected(
                "unsupported_media_type", f"type {mime} is not accepted; allowed: {allowed}", 415
            )
        limit = min(tenant.budgets.max_file_bytes, max_bytes or tenant.budgets.max_file_bytes)
        if len(content) > limit:
            raise UploadRejected("file_too_large", f"the file exceeds {limit} bytes", 413)
        if not content.strip():
            raise UploadRejected("empty_document", "the document is empty")
        if title is not None and len(title) > MAX_TITLE_CHARS:
            raise UploadRejected("invalid_field", f"title over {MAX_TITLE_CHARS} characters")
        if uri is not None and len(uri) > MAX_URI_CHARS:
            raise UploadRejected("invalid_field", f"uri over {MAX_URI_CHARS} characters")
        upload_id = uuid.uuid4().hex
        folder = self.tenant_dir(tenant.id)
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".staging-{upload_id}"
        staging.mkdir()
        try:
            (staging / name).write_bytes(content)
            if acl_groups is not None:
                (staging / ACL_FILE_NAME).write_text("".join(f"{g}\n" for g in acl_groups))
            meta = {"title": title, "uri": uri, "filename": filename[:MAX_FILENAME_CHARS]}
            (staging / META_FILE_NAME).write_text(json.dumps(meta))
            os.replace(staging, folder / upload_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return make_doc_id(tenant.id, UPLOAD_SOURCE_ID, f"{upload_id}/{name}")

    def find(self, tenant_id: str, doc_id: str) -> Path | None:
        """The upload folder of ``doc_id``, or None when the tenant has no such upload."""
        folder = self.tenant_dir(tenant_id)
        if not folder.is_dir():
            return None
        for upload in folder.iterdir():
            if upload.name.startswith(".") or upload.is_symlink() or not upload.is_dir():
                continue
            for item in upload.iterdir():
                if item.name.startswith("."):
                    continue
                native_id = f"{upload.name}/{item.name}"
                if make_doc_id(tenant_id, UPLOAD_SOURCE_ID, native_id) == doc_id:
                    return upload
        return None

    def delete(self, tenant_id: str, doc_id: str) -> bool:
        """Removes the upload of ``doc_id``; False when the tenant has no such upload."""
        upload = self.find(tenant_id, doc_id)
        if upload is None:
            return False
        shutil.rmtree(upload)
        return True

    def with_upload_source(self, tenant: TenantConfig) -> TenantConfig:
        """``tenant`` with its managed upload source appended once its folder exists.

        Raises:
            ValueError: a configured source already uses the id :data:`UPLOAD_SOURCE_ID`.
        """
        if any(s.id == UPLOAD_SOURCE_ID for s in tenant.sources):
            raise ValueError(
                f"tenant {tenant.id!r}: source id {UPLOAD_SOURCE_ID!r} is reserved for uploads"
            )
        folder = self.tenant_dir(tenant.id)
        if not tenant.uploads.enabled or not folder.is_dir():
            return tenant
        source = UploadSource(id=UPLOAD_SOURCE_ID, path=folder)
        return tenant.model_copy(update={"sources": [*tenant.sources, source]})
