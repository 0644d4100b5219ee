"""S3 connector: the objects under a prefix of a bucket (AWS S3 or an S3-compatible server),
through boto3.

Each object is one file document (bytes as content, parsed by type like a filesystem file).
Every sync lists the prefix (``ListObjectsV2``, 1,000 keys a page); an object whose version
(``ETag`` and ``LastModified``) equals the manifest's is
:class:`~rag_platform.lib.connectors.base.Unchanged` and not downloaded, so a re-sync costs one
request per 1,000 objects plus one per changed object. Keys of the previous sync no longer
listed are :class:`~rag_platform.lib.connectors.base.Deleted`.

ACL: the object's user metadata ``x-amz-meta-<acl_metadata_key>`` (comma-separated groups; an
empty value means no reader group); an object without it gets the tenant's default groups. A
metadata change in S3 rewrites the object (``CopyObject``), which changes ``LastModified``, so
it is seen by the next sync; but ``LastModified`` has a resolution of one second, so a
metadata-only change in the same second as the object's previous write is not seen until the
object is written again (S3 lists no metadata; reading it for every object on every sync would
cost one request per object).

Credentials come from the environment variables the source names (or boto3's default chain).
Transient errors (connection errors, timeouts, 5xx, 429/503 SlowDown) retry with tenacity;
boto3's own retries are off so attempts stay bounded in one place.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from rag_platform.lib.connectors.base import (
    Change,
    Deleted,
    SourceState,
    Unchanged,
    full_listing_documents,
    transient_retry,
)
from rag_platform.lib.connectors.filesystem import glob_match, mime_type_for
from rag_platform.lib.models import SourceDocument
from rag_platform.lib.tenants import InputBudgets, S3Source, validate_acl_group


class _Skip(Exception):
    """An object that is not read; the message becomes the connector's problem entry."""


class S3Connector:
    """Lists and downloads the objects of a bucket prefix.

    Args:
        source: bucket, prefix, endpoint, credential variable names, ACL metadata key, globs.
        default_acl_groups: groups of objects without the ACL metadata key.
        budgets: the tenant's input budgets; an object over ``max_file_bytes`` (by its listed
            size, so never downloaded) is a problem.
        client: an existing boto3 S3 client (tests); by default one is made from the source.
    """

    def __init__(
        self,
        source: S3Source,
        default_acl_groups: list[str],
        budgets: InputBudgets | None = None,
        client: Any = None,
    ) -> None:
        self.source = source
        self.source_id = source.id
        self.default_acl_groups = list(default_acl_groups)
        self.budgets = budgets or InputBudgets()
        self.problems: list[tuple[str, str]] = []
        self._client = client
        self._cursor: str | None = None

    @property
    def client(self) -> Any:
        """The boto3 client (made on first use)."""
        if self._client is None:
            src = self.source
            credentials: dict[str, str] = {}
            for arg, env in (
                ("aws_access_key_id", src.access_key_id_env),
                ("aws_secret_access_key", src.secret_access_key_env),
            ):
                if env is not None:
                    value = os.environ.get(env)
                    if not value:
                        raise ValueError(
                            f"source {self.source_id!r}: environment variable {env!r} is not set"
                        )
                    credentials[arg] = value
            self._client = boto3.client(
                "s3",
                endpoint_url=src.endpoint_url,
                region_name=src.region,
                config=Config(
                    retries={"max_attempts": 1, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=60,
                    max_pool_connections=max(10, src.fetch_workers * 2),
                ),
                **credentials,
            )
        return self._client

    def _selected(self, rel: str) -> bool:
        src = self.source
        if not any(glob_match(rel, g) for g in src.include):
            return False
        return not any(glob_match(rel, g) for g in src.exclude)

    def _listing(self) -> Iterator[list[dict[str, Any]]]:
        """Pages of ``ListObjectsV2`` entries under the prefix (each page retried)."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.source.bucket, "Prefix": self.source.prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page: dict[str, Any] = transient_retry(
                lambda: self.client.list_objects_v2(**kwargs)  # noqa: B023 (called at once)
            )
            yield list(page.get("Contents", []))
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:
                return

    def _groups(self, metadata: dict[str, str]) -> list[str]:
        key = self.source.acl_metadata_key.lower()
        if key not in metadata:
            return list(self.default_acl_groups)
        groups: list[str] = []
        for item in metadata[key].split(","):
            g = item.strip()
            if g:
                try:
                    validate_acl_group(g)
                except ValueError as exc:
                    raise _Skip(f"invalid ACL in metadata {key!r}: {exc}") from exc
                if g not in groups:
                    groups.append(g)
        return groups

    def _fetch(self, entry: dict[str, Any], version: str) -> SourceDocument:
        """Downloads one object (retried) into a document.

        Raises:
            _Skip: gone since listing, over the size budget, or an invalid ACL.
        """
        key = entry["Key"]
        limit = self.budgets.max_file_bytes

        def get() -> tuple[bytes, dict[str, str]]:
            resp = self.client.get_object(Bucket=self.source.bucket, Key=key)
            body = resp["Body"]
            try:
                data = body.read(limit + 1)
            finally:
                body.close()
            return data, {k.lower(): v for k, v in (resp.get("Metadata") or {}).items()}

        try:
            data, metadata = transient_retry(get)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "AccessDenied", "403"):
                raise _Skip(f"cannot read object: {code}") from exc
            raise
        if len(data) > limit:
            raise _Skip(f"object over max_file_bytes (> {limit})")
        groups = self._groups(metadata)
        modified = entry.get("LastModified")
        if isinstance(modified, datetime) and modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        return SourceDocument(
            source_id=self.source_id,
            native_id=key,
            uri=f"s3://{self.source.bucket}/{key}",
            title=PurePosixPath(key).stem,
            mime_type=mime_type_for(key),
            content=data,
            acl_groups=groups,
            updated_at=modified if isinstance(modified, datetime) else None,
            metadata={"key": key, "etag": entry.get("ETag", ""), "size_bytes": len(data)},
            version=version,
        )

    def _try_fetch(self, job: tuple[dict[str, Any], str]) -> SourceDocument | str:
        try:
            return self._fetch(*job)
        except _Skip as exc:
            return str(exc)

    def changes(self, state: SourceState, *, full: bool = True) -> Iterator[Change]:
        """Lists the prefix (always in full: ``full`` is ignored) and yields new and changed
        objects (downloaded ``fetch_workers`` at a time, in key order), :class:`Unchanged` for
        the others and :class:`Deleted` for keys of ``state`` no longer listed.

        Raises:
            ValueError: a credential variable is unset.
            botocore.exceptions.ClientError: the bucket cannot be listed (missing, denied).
            botocore.exceptions.BotoCoreError: the endpoint is unreachable after retries.
        """
        self.problems = []
        src = self.source
        digest = hashlib.sha256()
        listed: set[str] = set()
        with ThreadPoolExecutor(max_workers=src.fetch_workers) as pool:
            for page in self._listing():
                jobs: list[tuple[dict[str, Any], str]] = []
                for entry in page:
                    key = str(entry["Key"])
                    if key.endswith("/"):
                        continue  # a "folder" marker
                    rel = key[len(src.prefix) :].lstrip("/")
                    if not self._selected(rel):
                        continue
                    listed.add(key)
                    modified = entry.get("LastModified")
                    stamp = modified.isoformat() if isinstance(modified, datetime) else ""
                    version = f"{entry.get('ETag', '')}|{stamp}"
                    digest.update(f"{key}\0{version}\n".encode())
                    if state.versions.get(key) == version:
                        if jobs:  # keep key order: flush the downloads before this one
                            yield from self._run(pool, jobs)
                            jobs = []
                        yield Unchanged(key)
                        continue
                    size = int(entry.get("Size", 0))
                    if size > self.budgets.max_file_bytes:
                        self.problems.append(
                            (
                                key,
                                f"object over max_file_bytes ({size} > "
                                f"{self.budgets.max_file_bytes})",
                            )
                        )
                        continue
                    jobs.append((entry, version))
                yield from self._run(pool, jobs)
        for key in state.versions:
            if key not in listed:
                yield Deleted(key, "object no longer listed under the prefix")
        self._cursor = digest.hexdigest()

    def _run(
        self, pool: ThreadPoolExecutor, jobs: list[tuple[dict[str, Any], str]]
    ) -> Iterator[SourceDocument]:
        for job, outcome in zip(jobs, pool.map(self._try_fetch, jobs), strict=True):
            if isinstance(outcome, str):
                self.problems.append((str(job[0]["Key"]), outcome))
            else:
                yield outcome

    def list_documents(self) -> Iterator[SourceDocument]:
        """Yields every selected object as a document, in key order.

        Raises:
            as :meth:`changes`.
        """
        yield from full_listing_documents(self)

    @property
    def next_cursor(self) -> str | None:
        """SHA-256 of the listed ``(key, ETag, LastModified)`` set after a complete listing."""
        return self._cursor
