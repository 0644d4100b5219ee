"""Backups of one tenant that restore: the published index, the metadata rows, the registry
entry and the content caches, with a manifest of SHA-256 checksums.

Layout of a backup (a local folder, or the same keys under ``s3://bucket/prefix/``)::

    manifest.json                 format, tenant, time, published version, {file: sha256, bytes}
    registry.yaml                 the tenant's entry of tenants.yaml, as written (placeholders kept)
    metadata/<table>.jsonl        the tenant's rows of every table with a tenant column
    index/<version>/...           the published Qdrant Edge shard (a closed, immutable directory),
                                  or, with RAG_QDRANT_URL, points.jsonl: every point of the
                                  published collection with its vectors and payload
    cache/...                     RAG_HOME/cache/<tenant> (content caches, quarantine; as sealed
                                  on disk: the tenant's wrapped data key is in
                                  metadata/data_keys.jsonl, so a restore needs the master key)

:class:`TenantBackup` writes one; :class:`TenantRestore` verifies every checksum (and that no
file was added, removed or is a link, and that every path stays inside the backup) before it
writes anything, refuses a tenant that already exists unless ``force``, then brings the shard,
the caches, the rows and the registry entry back. The published version's ``path`` is rewritten
to the new ``RAG_HOME``. The tenant's audit rows are appended to the target's hash chain (each
keeps its time, action and actor; ``details.restored_from`` names the original row id and hash),
followed by a ``backup.restore`` row.

Consistency: the metadata rows are read in one transaction (REPEATABLE READ on PostgreSQL, a
snapshot on SQLite); the shard is the version published in that snapshot, copied and then
checked to be still present (a garbage collection that removed it meanwhile fails the backup
instead of writing half a shard). Cache files are content-addressed and written atomically, so
a file is copied whole or, if it vanished meanwhile, left out.

Which tables: every table of the schema with a ``tenant`` (or, for ``tenants``, ``tenant_id``)
column, so a table another module adds is backed up without a change here. Integer surrogate
keys are left to the target database. A Qdrant-server backup is restored into a Qdrant server
(the collection recreated, then the alias switched), an Edge backup into Edge shards; a mix is
refused. The server export reads the collection with ``scroll`` rather than a server snapshot:
the snapshot API is server-only (qdrant-client's local mode, what the tests run, has none) and
a snapshot restores only into a server of a compatible version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import yaml
from sqlalchemy import Connection, Table, delete, select

from rag_platform.lib.models import sha256_hex
from rag_platform.lib.store import MetadataStore
from rag_platform.lib.store.audit import write_audit
from rag_platform.lib.store.schema import Base, JSONObject, UTCDateTime, as_utc, utcnow
from rag_platform.lib.store.tenants import check_tenant
from rag_platform.settings import Settings

#: Written to and required in ``manifest.json``.
BACKUP_FORMAT = "rag-platform-backup/1"
MANIFEST = "manifest.json"
#: Largest manifest read, in bytes (a manifest lists every file: ~150 bytes each).
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_CHUNK = 1024 * 1024


class BackupError(Exception):
    """A backup that cannot be written, or a backup that must not be restored (tampered,
    incomplete, for a tenant that exists)."""


@dataclass(frozen=True)
class BackupReceipt:
    """What :class:`TenantBackup` wrote.

    Attributes:
        tenant: The tenant.
        location: The backup's folder or ``s3://`` URL.
        index_version: The published version backed up, None when nothing was published.
        files: Files in the manifest.
        bytes: Their total size.
        rows: Rows per table.
        manifest_sha256: SHA-256 of ``manifest.json`` (keep it to prove the manifest unchanged).
    """

    tenant: str
    location: str
    index_version: str | None
    files: int
    bytes: int
    rows: dict[str, int]
    manifest_sha256: str

    def to_dict(self) -> JSONObject:
        return {
            "tenant": self.tenant,
            "location": self.location,
            "index_version": self.index_version,
            "files": self.files,
            "bytes": self.bytes,
            "rows": self.rows,
            "manifest_sha256": self.manifest_sha256,
        }


@dataclass(frozen=True)
class RestoreReceipt:
    """What :class:`TenantRestore` brought back."""

    tenant: str
    source: str
    index_version: str | None
    files: int
    rows: dict[str, int]
    replaced: bool
    manifest_sha256: str

    def to_dict(self) -> JSONObject:
        return {
            "tenant": self.tenant,
            "source": self.source,
            "index_version": self.index_version,
            "files": self.files,
            "rows": self.rows,
            "replaced": self.replaced,
            "manifest_sha256": self.manifest_sha256,
        }


# ------------------------------------------------------------------------------------------
# storage: a local folder or s3://bucket/prefix
# ------------------------------------------------------------------------------------------


def is_s3_url(location: str) -> bool:
    return location.startswith("s3://")


def _s3_parts(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if not bucket:
        raise BackupError(f"{url!r}: expected s3://bucket/prefix")
    return bucket, prefix


def _s3_client() -> Any:
    """A boto3 S3 client; endpoint, region and credentials from the standard ``AWS_*``
    environment (``AWS_ENDPOINT_URL`` for MinIO, Ceph, moto ...)."""
    import boto3

    return boto3.client("s3")


def _upload(folder: Path, url: str) -> None:
    bucket, prefix = _s3_parts(url)
    client = _s3_client()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    # the manifest last: a reader that finds it finds every file it lists
    for path in sorted(files, key=lambda p: p.name == MANIFEST):
        key = "/".join(filter(None, [prefix, path.relative_to(folder).as_posix()]))
        client.upload_file(str(path), bucket, key)


def _download(url: str, folder: Path) -> None:
    bucket, prefix = _s3_parts(url)
    client = _s3_client()
    paginator = client.get_paginator("list_objects_v2")
    base = f"{prefix}/" if prefix else ""
    found = False
    for page in paginator.paginate(Bucket=bucket, Prefix=base):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(base) :]
            target = folder / _safe_relpath(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(target))
            found = True
    if not found:
        raise BackupError(f"no backup at {url}")


# ------------------------------------------------------------------------------------------
# files and checksums
# ------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _safe_relpath(rel: str) -> PurePosixPath:
    """``rel`` as a relative POSIX path that stays inside its folder.

    Raises:
        BackupError: Absolute, empty, with ``..`` or a backslash.
    """
    path = PurePosixPath(rel)
    if not rel or "\\" in rel or path.is_absolute() or ".." in path.parts or "" in path.parts:
        raise BackupError(f"unsafe path in backup: {rel!r}")
    return path


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy the regular files of ``src`` to ``dst`` (links are not followed; files that vanish
    during the walk are skipped)."""
    for root, _dirs, names in os.walk(src, followlinks=False):
        for name in names:
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy2(path, target)
            except FileNotFoundError:
                continue


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


# ------------------------------------------------------------------------------------------
# metadata rows
# ------------------------------------------------------------------------------------------


def tenant_tables() -> list[tuple[Table, str]]:
    """Every table with a tenant column, parents before children, with that column's name."""
    tables = []
    for table in Base.metadata.sorted_tables:
        column = "tenant_id" if table.name == "tenants" else "tenant"
        if column in table.c:
            tables.append((table, column))
    return tables


def _surrogate_key(table: Table) -> str | None:
    """The integer autoincrement primary key the target database assigns, if any."""
    pk = list(table.primary_key.columns)
    if len(pk) == 1 and pk[0].autoincrement in (True, "auto") and pk[0].type.python_type is int:
        return pk[0].name
    return None


def _decode_row(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in row.items():
        if name not in table.c:
            raise BackupError(f"table {table.name} has no column {name!r}")
        if isinstance(table.c[name].type, UTCDateTime) and isinstance(value, str):
            value = datetime.fromisoformat(value)
        out[name] = value
    return out


# ------------------------------------------------------------------------------------------
# backup
# ------------------------------------------------------------------------------------------


@dataclass
class _Manifest:
    tenant: str
    index_version: str | None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)


def timestamped(location: str, tenant: str, at: datetime | None = None) -> str:
    """``<location>/<tenant>/<YYYYmmddTHHMMSSZ>``: where a scheduled backup goes."""
    stamp = as_utc(at or utcnow()).strftime("%Y%m%dT%H%M%SZ")
    return f"{location.rstrip('/')}/{tenant}/{stamp}"


class TenantBackup:
    """Writes a consistent backup of one tenant.

    Args:
        settings: Where the tenant's state lives (``RAG_HOME``, the registry, the store).
        store: The metadata store; default ``MetadataStore.from_settings(settings)``.
    """

    def __init__(self, settings: Settings, store: MetadataStore | None = None) -> None:
        self.settings = settings
        self.store = store or MetadataStore.from_settings(settings)

    def run(self, tenant: str, target: str) -> BackupReceipt:
        """Back up ``tenant`` to ``target``.

        Args:
            tenant: Tenant id (in the registry).
            target: A folder (created; must be empty or missing) or ``s3://bucket/prefix``.

        Returns:
            The :class:`BackupReceipt`.

        Raises:
            BackupError: Unknown tenant, non-empty target folder, server backend, the published
                shard missing or removed during the copy.
            botocore.exceptions.ClientError: S3 refused an upload.
        """
        check_tenant(tenant)
        entry = self._registry_entry(tenant)
        if is_s3_url(target):
            with tempfile.TemporaryDirectory(prefix="rag-backup-") as tmp:
                receipt = self._write(tenant, entry, Path(tmp))
                _upload(Path(tmp), target)
        else:
            folder = Path(target).expanduser().resolve()
            if folder.exists() and any(folder.iterdir()):
                raise BackupError(f"{folder} is not empty")
            folder.mkdir(parents=True, exist_ok=True)
            receipt = self._write(tenant, entry, folder)
        self.store.audit(
            "backup.create",
            tenant,
            "backup",
            {"location": target, "manifest_sha256": receipt.manifest_sha256},
        )
        return BackupReceipt(
            tenant,
            target,
            receipt.index_version,
            receipt.files,
            receipt.bytes,
            receipt.rows,
            receipt.manifest_sha256,
        )

    def _registry_entry(self, tenant: str) -> dict[str, Any]:
        path = self.settings.tenants_file
        raw = yaml.safe_load(path.read_text()) if path.exists() else None
        for entry in (raw or {}).get("tenants", []) or []:
            if isinstance(entry, dict) and entry.get("id") == tenant:
                return entry
        raise BackupError(f"unknown tenant {tenant!r} (not in {path})")

    def _write(self, tenant: str, entry: dict[str, Any], folder: Path) -> BackupReceipt:
        (folder / "registry.yaml").write_text(yaml.safe_dump(entry, sort_keys=False))
        meta = folder / "metadata"
        meta.mkdir()
        version: str | None = None
        shard: Path | None = None
        rows: dict[str, int] = {}
        with self.store.db.transaction(write=False) as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            for table, column in tenant_tables():
                stmt = select(table).where(table.c[column] == tenant)
                if table.name == "index_versions":
                    stmt = stmt.where(table.c.status == "published")
                stmt = stmt.order_by(*table.primary_key.columns)
                count = 0
                with (meta / f"{table.name}.jsonl").open("w") as out:
                    for row in conn.execute(stmt).mappings():
                        out.write(json.dumps(dict(row), default=_json_default) + "\n")
                        count += 1
                        if table.name == "index_versions":
                            version, shard = row["version"], Path(row["path"])
                rows[table.name] = count
        backend_kind = "server" if self.settings.qdrant_url else "edge"
        if version is not None and shard is not None and backend_kind == "server":
            _export_collection(self.settings, tenant, version, str(shard), folder)
        elif version is not None and shard is not None:
            if not shard.is_dir():
                raise BackupError(f"the published shard {shard} is missing")
            _copy_tree(shard, folder / "index" / version)
            if not shard.is_dir():
                raise BackupError(f"the published shard {shard} was removed during the backup")
        cache = self.settings.cache_dir / tenant
        if cache.is_dir():
            _copy_tree(cache, folder / "cache")
        manifest = _Manifest(tenant, version, rows=rows)
        total = 0
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            size = path.stat().st_size
            manifest.files[path.relative_to(folder).as_posix()] = {
                "sha256": file_sha256(path),
                "bytes": size,
            }
            total += size
        body = json.dumps(
            {
                "format": BACKUP_FORMAT,
                "backend": backend_kind,
                "tenant": tenant,
                "created_at": utcnow().isoformat(),
                "index_version": version,
                "rows": rows,
                "files": manifest.files,
            },
            indent=1,
            sort_keys=True,
        )
        (folder / MANIFEST).write_text(body)
        return BackupReceipt(
            tenant, str(folder), version, len(manifest.files), total, rows, sha256_hex(body)
        )


# ------------------------------------------------------------------------------------------
# restore
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedBackup:
    """A backup folder whose every file matched its checksum."""

    folder: Path
    tenant: str
    index_version: str | None
    files: int
    manifest_sha256: str
    backend: str = "edge"


def verify_backup(folder: Path) -> VerifiedBackup:
    """Check a backup folder against its manifest.

    Raises:
        BackupError: No or malformed manifest, wrong format, bad tenant id, an unsafe path, a
            missing, extra, linked or changed file (named in the message).
    """
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file() or manifest_path.is_symlink():
        raise BackupError(f"{folder} has no {MANIFEST}")
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BackupError(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes")
    body = manifest_path.read_text()
    try:
        manifest = json.loads(body)
        tenant = check_tenant(manifest["tenant"])
        files: dict[str, dict[str, Any]] = manifest["files"]
        version = manifest["index_version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{MANIFEST} is malformed: {exc}") from exc
    if manifest.get("format") != BACKUP_FORMAT:
        raise BackupError(f"unsupported backup format {manifest.get('format')!r}")
    if version is not None and (not isinstance(version, str) or "/" in version or ".." in version):
        raise BackupError(f"bad index version in {MANIFEST}: {version!r}")
    present = set()
    for path in folder.rglob("*"):
        if path.is_symlink():
            raise BackupError(f"link in backup: {path.relative_to(folder)}")
        if path.is_file() and path != manifest_path:
            present.add(path.relative_to(folder).as_posix())
    listed = {str(_safe_relpath(rel)) for rel in files}
    if extra := sorted(present - listed):
        raise BackupError(f"files not in the manifest: {', '.join(extra[:5])}")
    if missing := sorted(listed - present):
        raise BackupError(f"files missing from the backup: {', '.join(missing[:5])}")
    for rel, meta in sorted(files.items()):
        path = folder / rel
        if not isinstance(meta, dict) or path.stat().st_size != meta.get("bytes"):
            raise BackupError(f"checksum mismatch: {rel} (size differs)")
        if file_sha256(path) != meta.get("sha256"):
            raise BackupError(f"checksum mismatch: {rel}")
    backend = manifest.get("backend", "edge")
    if backend not in ("edge", "server"):
        raise BackupError(f"unknown index backend {backend!r} in {MANIFEST}")
    return VerifiedBackup(folder, tenant, version, len(files), sha256_hex(body), backend)


@contextmanager
def _local_copy(source: str) -> Iterator[Path]:
    if is_s3_url(source):
        with tempfile.TemporaryDirectory(prefix="rag-restore-") as tmp:
            _download(source, Path(tmp))
            yield Path(tmp)
    else:
        folder = Path(source).expanduser().resolve()
        if not folder.is_dir():
            raise BackupError(f"{folder} is not a folder")
        yield folder


class TenantRestore:
    """Brings a tenant back from a backup.

    Args:
        settings: The target ``RAG_HOME``, registry and store.
        store: The metadata store; default ``MetadataStore.from_settings(settings)``, migrated.
    """

    def __init__(self, settings: Settings, store: MetadataStore | None = None) -> None:
        self.settings = settings
        if store is None:
            store = MetadataStore.from_settings(settings)
            store.migrate()
        self.store = store

    def run(self, source: str, *, force: bool = False) -> RestoreReceipt:
        """Verify, then restore, the backup at ``source``.

        Args:
            source: A backup folder or ``s3://bucket/prefix``.
            force: Replace a tenant that exists (its rows, shard folder, caches and registry
                entry); without it such a restore is refused.

        Returns:
            The :class:`RestoreReceipt`.

        Raises:
            BackupError: The backup does not verify (nothing is written), or the tenant exists
                and ``force`` is False, or the server backend is configured, or its data keys
                are wrapped by a master key this RAG_HOME does not have (nothing is written).
        """
        with _local_copy(source) as folder:
            backup = verify_backup(folder)
            tenant = backup.tenant
            exists = self._exists(tenant)
            if exists and not force:
                raise BackupError(
                    f"tenant {tenant!r} exists here; restore with --force to replace it"
                )
            self._check_master_keys(folder)
            target_kind = "server" if self.settings.qdrant_url else "edge"
            if backup.index_version is not None and backup.backend != target_kind:
                raise BackupError(
                    f"the backup holds a Qdrant {backup.backend} index; this RAG_HOME uses "
                    f"the {target_kind} backend (RAG_QDRANT_URL)"
                )
            self.settings.ensure_dirs()
            shard: str | None = None
            if backup.index_version is not None and target_kind == "server":
                shard = _import_collection(self.settings, tenant, backup.index_version, folder)
            elif backup.index_version is not None:
                shard_dir = self.settings.index_dir / tenant / backup.index_version
                _replace_dir(folder / "index" / backup.index_version, shard_dir)
                shard = str(shard_dir)
            cache_src = folder / "cache"
            cache_dst = self.settings.cache_dir / tenant
            if cache_src.is_dir():
                _replace_dir(cache_src, cache_dst)
            elif force:
                shutil.rmtree(cache_dst, ignore_errors=True)
            rows = self._restore_rows(folder, tenant, shard, backup, source)
            self._restore_registry(folder, tenant)
        return RestoreReceipt(
            tenant, source, backup.index_version, backup.files, rows, exists, backup.manifest_sha256
        )

    def _check_master_keys(self, folder: Path) -> None:
        """Refuses a backup whose live data keys (``metadata/data_keys.jsonl``) are wrapped by a
        master key that is not configured here: its sealed caches and text could not be read.
        """
        path = folder / "metadata" / "data_keys.jsonl"
        if not path.exists():
            return
        needed = {
            str(row["master_key_id"])
            for row in map(json.loads, path.read_text().splitlines())
            if row.get("wrapped")
        }
        have = {m.key_id for m in self.store.keyring.masters}
        if needed - have:
            raise BackupError(
                "the backup's data keys are wrapped by master key "
                f"{', '.join(sorted(needed - have))}; configure it (RAG_MASTER_KEY, "
                "RAG_MASTER_KEY_FILE or RAG_KMS_KEY_ID) before restoring"
            )

    def _exists(self, tenant: str) -> bool:
        registry = self.settings.tenants_file
        raw = yaml.safe_load(registry.read_text()) if registry.exists() else None
        in_registry = any(
            isinstance(e, dict) and e.get("id") == tenant
            for e in (raw or {}).get("tenants", []) or []
        )
        return (
            in_registry
            or self.store.tenant_exists(tenant)
            or (not self.settings.qdrant_url and (self.settings.index_dir / tenant).exists())
        )

    def _restore_rows(
        self,
        folder: Path,
        tenant: str,
        shard: str | None,
        backup: VerifiedBackup,
        source: str,
    ) -> dict[str, int]:
        counts: dict[str, int] = {}
        tables = tenant_tables()
        with self.store.db.transaction() as conn:
            for table, column in reversed(tables):
                if table.name != "audit_log":  # the audit chain is only ever appended to
                    conn.execute(delete(table).where(table.c[column] == tenant))
            for table, _column in tables:
                path = folder / "metadata" / f"{table.name}.jsonl"
                if not path.is_file():
                    continue
                counts[table.name] = self._insert(conn, table, path, shard)
            write_audit(
                conn,
                action="backup.restore",
                tenant=tenant,
                actor="restore",
                details={
                    "source": source,
                    "manifest_sha256": backup.manifest_sha256,
                    "index_version": backup.index_version,
                },
            )
        return counts

    def _insert(self, conn: Connection, table: Table, path: Path, shard: str | None) -> int:
        surrogate = _surrogate_key(table)
        count = 0
        with path.open() as f:
            for line in f:
                row = _decode_row(table, json.loads(line))
                if table.name == "audit_log":
                    write_audit(
                        conn,
                        action=row["action"],
                        tenant=row["tenant"],
                        actor=row["actor"],
                        details={
                            **(row["details"] or {}),
                            "restored_from": {"id": row["id"], "row_hash": row.get("row_hash")},
                        },
                        created_at=row["created_at"],
                    )
                else:
                    if table.name == "index_versions" and shard is not None:
                        row["path"] = shard
                    if surrogate is not None:
                        row.pop(surrogate, None)
                    conn.execute(table.insert().values(**row))
                count += 1
        return count

    def _restore_registry(self, folder: Path, tenant: str) -> None:
        entry = yaml.safe_load((folder / "registry.yaml").read_text())
        if not isinstance(entry, dict) or entry.get("id") != tenant:
            raise BackupError("registry.yaml does not hold the backed-up tenant")
        path = self.settings.tenants_file
        raw = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
        others = [
            e
            for e in raw.get("tenants", []) or []
            if not (isinstance(e, dict) and e.get("id") == tenant)
        ]
        raw["tenants"] = [*others, entry]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.restore")
        tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
        tmp.replace(path)


def _replace_dir(src: Path, dst: Path) -> None:
    """Copy ``src`` to a sibling of ``dst``, then swap it in (the old one is removed)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = dst.with_name(f".{dst.name}.restoring")
    shutil.rmtree(staging, ignore_errors=True)
    _copy_tree(src, staging)
    if dst.exists():
        shutil.rmtree(dst)
    staging.rename(dst)


#: File of a server-backend backup holding the published collection's points.
POINTS_FILE = "points.jsonl"


def _export_collection(
    settings: Settings, tenant: str, version: str, collection: str, folder: Path
) -> None:
    """Write every point of the published collection (vectors and payload) as JSON Lines to
    ``index/<version>/points.jsonl`` (floats survive JSON exactly: ``repr`` round-trips)."""
    from rag_platform.lib.index.backend import open_backend

    backend = open_backend(settings)
    target = folder / "index" / version / POINTS_FILE
    target.parent.mkdir(parents=True)
    try:
        reader = backend.open_reader(tenant, version, collection)
    except Exception as exc:
        raise BackupError(f"the published collection {collection} is unavailable: {exc}") from exc
    with target.open("w") as out:
        for p in reader.points():  # type: ignore[attr-defined]
            record = {
                "id": p.id,
                "dense": [float(x) for x in p.dense],
                "sparse": {"indices": p.sparse.indices, "values": p.sparse.values},
                "payload": p.payload,
            }
            out.write(json.dumps(record) + "\n")


def _import_collection(settings: Settings, tenant: str, version: str, folder: Path) -> str:
    """Recreate the collection ``kb_<tenant>_<version>`` from ``points.jsonl`` (replacing one
    of that name) and point the tenant's alias at it.

    Returns:
        The collection name (the version's ``path``).
    """
    import numpy as np

    from rag_platform.lib.embedding import SparseVector
    from rag_platform.lib.index.backend import open_backend
    from rag_platform.lib.index.edge import IndexPoint
    from rag_platform.lib.index.server import ServerBackend

    backend = open_backend(settings)
    assert isinstance(backend, ServerBackend)
    name = backend.location(tenant, version)
    if backend.client.collection_exists(name):
        backend.client.delete_collection(name)
    writer = None
    batch: list[IndexPoint] = []
    with (folder / "index" / version / POINTS_FILE).open() as f:
        for line in f:
            record = json.loads(line)
            dense = np.asarray(record["dense"], dtype=np.float32)
            if writer is None:
                writer = backend.create_writer(tenant, version, int(dense.shape[0]))
            batch.append(
                IndexPoint(
                    id=record["id"],
                    dense=dense,
                    sparse=SparseVector(
                        indices=record["sparse"]["indices"], values=record["sparse"]["values"]
                    ),
                    payload=record["payload"],
                )
            )
            if len(batch) >= 512:
                writer.upsert(batch)
                batch = []
    if writer is None:
        raise BackupError("the backup's collection has no points")
    if batch:
        writer.upsert(batch)
    writer.close()
    backend.publish(tenant, version)
    return name
