"""``rag-platform``: tenants, materialization, API keys, serving, evaluation, index versions.

Commands whose output a script reads (``materialize``, ``eval``, ``keys create``, ``erase ...``,
``lineage``, ``export ... --out``) print one JSON object (or the key) as their last line;
``export`` without ``--out`` prints the archive itself (JSON Lines).

Every command starts by configuring the runtime (``configure_runtime_env``): offline model
libraries, and SIGINT/SIGTERM back to their defaults when the shell that started the command
ignored them, so ``kill`` stops the command and every process it starts (``dagster dev`` and its
servers, masking workers, the API).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from rag_platform.settings import PROJECT_ROOT, Settings, configure_runtime_env, get_settings

app = typer.Typer(
    help="rag-platform: multi-tenant RAG data platform.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
tenants_app = typer.Typer(help="The tenant registry.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (principals).", no_args_is_help=True)
index_app = typer.Typer(help="Index versions: list and roll back.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")
erase_app = typer.Typer(
    help="Right to erasure: documents and principals, with receipts.", no_args_is_help=True
)
app.add_typer(index_app, name="index")
app.add_typer(audit_app, name="audit")
app.add_typer(erase_app, name="erase")
export_app = typer.Typer(
    help="Export everything stored about a tenant or a principal (JSON Lines).",
    no_args_is_help=True,
)
app.add_typer(export_app, name="export")
experiments_app = typer.Typer(
    help="Online experiments of retrieval variants (``experiment`` in tenants.yaml).",
    no_args_is_help=True,
)
app.add_typer(experiments_app, name="experiments")
golden_app = typer.Typer(
    help="Golden-set candidates from low-rated queries: list, accept, reject.",
    no_args_is_help=True,
)
app.add_typer(golden_app, name="golden")


@app.callback()
def configure() -> None:
    """rag-platform: multi-tenant RAG data platform."""
    configure_runtime_env()


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, default=str))


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _store(settings: Settings | None = None) -> Any:
    from rag_platform.lib.store import MetadataStore

    store = MetadataStore.from_settings(settings or get_settings())
    store.migrate()
    return store


# ------------------------------------------------------------------------------------------
# tenants
# ------------------------------------------------------------------------------------------


@tenants_app.command("add")
def tenants_add(
    tenant_id: Annotated[str, typer.Argument(help="Lower-case id: letters, digits, dashes.")],
    path: Annotated[Path, typer.Option(help="Folder of files (filesystem source).")],
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    groups: Annotated[str, typer.Option(help="Default ACL groups, comma-separated.")] = "all",
    include: Annotated[str, typer.Option(help="Glob of files to include.")] = "**/*",
) -> None:
    """Adds a tenant with one filesystem source to the registry."""
    from pydantic import ValidationError

    from rag_platform.lib.tenants import FilesystemSource, TenantConfig, load_registry

    settings = get_settings()
    folder = path.expanduser().resolve()
    if not folder.is_dir():
        _fail(f"{folder} is not a folder")
    registry = load_registry(settings.tenants_file, settings.data_dir)
    if tenant_id in registry.ids:
        _fail(f"tenant {tenant_id!r} already exists")
    try:
        tenant = TenantConfig(
            id=tenant_id,
            name=name,
            sources=[FilesystemSource(id="files", path=folder, include=[include])],
            default_acl_groups=[g.strip() for g in groups.split(",") if g.strip()],
        )
    except ValidationError as exc:
        _fail(str(exc.errors()[0]["msg"]))
    # Re-read raw YAML so ${RAG_DATA_DIR} placeholders of other tenants survive.
    import yaml

    exists = settings.tenants_file.exists()
    raw = yaml.safe_load(settings.tenants_file.read_text()) if exists else None
    raw = raw or {"tenants": []}
    entry = tenant.model_dump(mode="json", exclude_defaults=True)
    for dumped, source in zip(entry["sources"], tenant.sources, strict=True):
        dumped["type"] = source.type  # the discriminator is a default, but must be written
    raw.setdefault("tenants", []).append(entry)
    settings.tenants_file.parent.mkdir(parents=True, exist_ok=True)
    settings.tenants_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_registry(settings.tenants_file, settings.data_dir)  # validates the result
    _store(settings).upsert_tenant(tenant_id, name)
    _echo_json({"tenant": tenant_id, "path": str(folder)})


@tenants_app.command("list")
def tenants_list() -> None:
    """Lists registered tenants with their sources and published index version."""
    from rag_platform.lib.tenants import load_registry

    settings = get_settings()
    store = _store(settings)
    for t in load_registry(settings.tenants_file, settings.data_dir).tenants:
        published = store.get_published_version(t.id)
        _echo_json(
            {
                "tenant": t.id,
                "sources": [s.id for s in t.sources],
                "published": published.version if published else None,
            }
        )


@tenants_app.command("remove")
def tenants_remove(tenant_id: str) -> None:
    """Removes a tenant from the registry (its partition goes with the next sensor tick)."""
    import yaml

    settings = get_settings()
    raw = yaml.safe_load(settings.tenants_file.read_text()) or {}
    before = len(raw.get("tenants", []))
    raw["tenants"] = [t for t in raw.get("tenants", []) if t.get("id") != tenant_id]
    if len(raw["tenants"]) == before:
        _fail(f"unknown tenant {tenant_id!r}")
    settings.tenants_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    _echo_json({"removed": tenant_id})


# ------------------------------------------------------------------------------------------
# materialize
# ------------------------------------------------------------------------------------------


@contextmanager
def _interrupts_not_lost(resend_seconds: float = 5.0) -> Iterator[None]:
    """After a SIGTERM or SIGINT, delivers SIGINT again every ``resend_seconds`` until the block
    ends.

    Dagster turns the signal into an exception raised from its signal handler. When the handler
    happens to run inside a garbage-collector callback (SQLAlchemy registers weakref callbacks),
    CPython prints "Exception ignored" and drops the exception, and the run would carry on to
    its end. A watcher thread reads the signals off ``signal.set_wakeup_fd`` and re-delivers.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    done = threading.Event()
    stop_signals = {int(signal.SIGTERM), int(signal.SIGINT)}

    def watch() -> None:
        while not done.is_set():
            ready, _, _ = select.select([read_fd], [], [], 0.5)
            if ready and stop_signals & set(os.read(read_fd, 512)):
                break
        while not done.wait(resend_seconds):
            os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=watch, name="interrupt-watcher", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)


def _progress_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _run_with_progress(
    tenant: str, settings: Settings, log_file: Path, verbose: bool, console: Any
) -> Any:
    """Materializes one tenant with its live stage lines, Dagster's events going to
    ``log_file`` (and to the terminal with ``verbose``)."""
    from rag_platform.console import StageProgressDisplay
    from rag_platform.runner import materialize_tenant

    with _interrupts_not_lost(), StageProgressDisplay(console, label=tenant):
        return materialize_tenant(tenant, settings, log_file=log_file, console=verbose)


@app.command()
def materialize(
    tenant: Annotated[list[str], typer.Option(help="Tenant id (repeatable).")] = [],  # noqa: B006
    all_tenants: Annotated[bool, typer.Option("--all", help="Every tenant.")] = False,
    plan: Annotated[
        bool,
        typer.Option(
            "--plan",
            help="Only report what a run would parse, mask, chunk and embed, its estimated "
            "seconds and cost; nothing is run or written.",
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Also print Dagster's event stream (it always goes to the log)."
        ),
    ] = False,
) -> None:
    """Materializes each tenant's whole graph in-process (same Definitions as the Dagster UI).

    Shows one live line per stage (parse, mask, chunk, embed, index, evaluate: done/total,
    rate, ETA) on stderr; Dagster's event stream goes to ``RAG_HOME/logs/materialize-<UTC
    time>.log`` (``--verbose`` prints it too). The last line is a JSON summary (one object; a
    list when several tenants ran). SIGTERM or SIGINT interrupts the run: the masking workers
    stop, nothing is published. With ``--plan`` the last line is the plan instead (``to_parse``,
    ``to_mask``, ``to_chunk``, ``to_embed``, ``estimated_seconds``, ``estimated_cost``).
    """
    from rag_platform.lib.tenants import load_registry

    settings = get_settings()
    registry = load_registry(settings.tenants_file, settings.data_dir)
    ids = registry.ids if all_tenants else tenant
    if not ids:
        _fail("give --tenant <id> or --all")
    unknown = [t for t in ids if t not in registry.ids]
    if unknown:
        _fail(f"unknown tenant(s): {', '.join(unknown)}")
    if plan:
        from rag_platform.lib.plan import plan_tenant

        plans = []
        for t in ids:
            result = plan_tenant(settings, registry.get(t)).as_json()
            typer.echo(
                f"{t}: {result['documents']} documents; would parse {result['to_parse']}, mask "
                f"{result['to_mask']}, chunk {result['to_chunk']}, embed {result['to_embed']} "
                f"chunks (~{result['estimated_seconds']:g} s, USD {result['estimated_cost']:.6f})",
                err=True,
            )
            plans.append(result)
        _echo_json(plans[0] if len(plans) == 1 else plans)
        return
    from rag_platform.runner import run_log_path

    log_file = run_log_path(settings)
    console = _progress_console()
    typer.echo(f"Dagster events: {log_file}", err=True)
    summaries = []
    for t in ids:
        summary = _run_with_progress(t, settings, log_file, verbose, console)
        summaries.append(summary.as_json())
        if len(ids) > 1:
            _echo_json(summary.as_json())
    _echo_json(summaries[0] if len(summaries) == 1 else summaries)
    if not all(s["success"] for s in summaries):
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------
# worker
# ------------------------------------------------------------------------------------------

_WORKER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


@app.command()
def worker(
    name: Annotated[
        str, typer.Option(help="Worker name; its Celery hostname is NAME@<host>.")
    ] = "rag-worker",
    loglevel: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Runs a dagster-celery worker for the pipeline's steps (needs RAG_CELERY_BROKER_URL).

    It listens on the ``dagster`` queue of the broker; each step (a Celery task) loads the
    code location, runs the step against the Dagster instance the run names (its instance ref:
    the launcher's RAG_HOME/dagster, or PostgreSQL) and writes its events there. Runs launched
    with the same RAG_CELERY_BROKER_URL (``rag-platform materialize``, ``rag-platform ui``,
    schedules and sensors) send their steps here.

    One step at a time, in this process (Celery's ``solo`` pool): a step starts its own parse
    and mask worker processes, which the daemonic children of the ``prefork`` pool may not.
    Start one worker per host (or more, with distinct ``--name``) to run steps in parallel.

    SIGTERM or SIGINT is a warm shutdown: no new steps, the running one finishes, then the
    worker exits 0; a second SIGINT (or SIGQUIT) is a cold shutdown, and a step it cuts short
    goes back to the queue (``task_acks_late``) for another worker.
    """
    import re

    from rag_platform.defs.executor import worker_app

    if not re.fullmatch(_WORKER_NAME, name):
        _fail("--name: letters, digits, '.', '_' or '-' (at most 63), starting alphanumeric")
    if loglevel.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        _fail("--loglevel must be DEBUG, INFO, WARNING or ERROR")
    settings = get_settings()
    if not settings.celery_broker_url:
        _fail("set RAG_CELERY_BROKER_URL (e.g. redis://127.0.0.1:6379/2) to run a worker")
    argv = [
        "worker",
        f"--hostname={name}@%h",
        "--pool=solo",
        f"--loglevel={loglevel.upper()}",
        "--queues=dagster",
        "--prefetch-multiplier=1",
        "--without-mingle",
        "--without-gossip",
    ]
    worker_app(settings).worker_main(argv)


# ------------------------------------------------------------------------------------------
# keys
# ------------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key is scoped to.")],
    groups: Annotated[str, typer.Option(help="ACL groups, comma-separated.")] = "all",
    role: Annotated[
        str, typer.Option(help="reader, writer (also uploads and deletes documents) or admin.")
    ] = "reader",
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    expires_days: Annotated[int | None, typer.Option(help="Expire after N days.")] = None,
) -> None:
    """Creates an API key; the last line is the key itself (shown once, stored hashed)."""
    from rag_platform.lib.tenants import load_registry

    settings = get_settings()
    if tenant not in load_registry(settings.tenants_file, settings.data_dir).ids:
        _fail(f"unknown tenant {tenant!r}")
    if role not in ("reader", "writer", "admin"):
        _fail("role must be reader, writer or admin")
    expires = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None
    info, plaintext = _store(settings).create_api_key(
        tenant,
        [g.strip() for g in groups.split(",") if g.strip()],
        role=role,
        expires_at=expires,
        name=name,
        actor="cli",
    )
    typer.echo(
        json.dumps({"key_id": info.key_id, "tenant": tenant, "role": role, "groups": info.groups}),
        err=True,
    )
    typer.echo(plaintext)


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option()] = None) -> None:
    """Lists keys (never the secret or its hash)."""
    for info in _store().list_api_keys(tenant):
        _echo_json(info.__dict__)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revokes a key at once."""
    if not _store().revoke_api_key(key_id, actor="cli"):
        _fail(f"unknown key {key_id!r}")
    _echo_json({"revoked": key_id})


@keys_app.command("rotate-master")
def keys_rotate_master(
    new_key_file: Annotated[
        Path | None,
        typer.Option(help="File holding the new master key (32 bytes, base64)."),
    ] = None,
    new_kms_key_id: Annotated[
        str | None, typer.Option(help="Wrap under this AWS KMS key (RAG_KMS_ENDPOINT_URL).")
    ] = None,
) -> None:
    """Re-wraps every tenant's data key under a new master key; the sealed data is not touched.
    With the default key file (RAG_HOME/keys/master.key) the new key is generated and replaces
    it; with RAG_MASTER_KEY or RAG_KMS_KEY_ID give the new key, then set it. Last line JSON."""
    from rag_platform.lib.crypto import (
        AwsKmsMasterKey,
        LocalMasterKey,
        MasterKey,
        SealedDataError,
        rotate_master_key,
    )

    settings = get_settings()
    if new_key_file is not None and new_kms_key_id is not None:
        _fail("give --new-key-file or --new-kms-key-id, not both")
    new: MasterKey | None = None
    try:
        if new_key_file is not None:
            new = LocalMasterKey.from_base64(new_key_file.read_text())
        elif new_kms_key_id is not None:
            new = AwsKmsMasterKey(new_kms_key_id, settings.kms_endpoint_url)
        store = _store(settings)
        summary = rotate_master_key(settings, store.keyring, new)
    except (OSError, ValueError, SealedDataError) as exc:
        _fail(str(exc))
    store.audit("keys.rotate_master", None, "cli", summary)
    _echo_json({"rotated": True, **summary})


# ------------------------------------------------------------------------------------------
# index versions
# ------------------------------------------------------------------------------------------


@app.command("webhooks")
def webhooks_log(
    tenant: Annotated[str, typer.Option()],
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
) -> None:
    """Prints the tenant's webhook delivery log, newest first: one JSON line per delivery."""
    for d in _store().webhook_deliveries.find(tenant, limit):
        _echo_json(d.__dict__)


@index_app.command("list")
def index_list(tenant: Annotated[str, typer.Option()]) -> None:
    """Lists the tenant's index versions, newest first: one JSON line each, with its status
    (building, built, published, retired, rejected, deleted) and, for a rejected version, the
    blocking checks that rejected it."""
    for v in _store().list_versions(tenant):
        _echo_json(
            {
                "version": v.version,
                "status": v.status,
                "documents": v.documents,
                "chunks": v.chunks,
                "created_at": v.created_at,
                "published_at": v.published_at,
                "failed_checks": v.failed_checks,
            }
        )


@index_app.command("rollback")
def index_rollback(
    tenant: Annotated[str, typer.Option()],
    version: Annotated[
        str | None, typer.Option(help="Default: the version published before the current one.")
    ] = None,
) -> None:
    """Publishes an earlier version again (atomic; the API switches without restart). Only a
    version that was published before qualifies: a rejected or never-published build is refused
    with the reason (exit 2)."""
    from rag_platform.lib.index.backend import open_backend
    from rag_platform.lib.index.versions import IndexVersions
    from rag_platform.lib.store import NotFoundError, VersionTransitionError

    settings = get_settings()
    versions = IndexVersions(
        _store(settings), open_backend(settings), settings.reports_dir, settings.versions_kept
    )
    try:
        v = versions.rollback(tenant, version, actor="cli")
    except VersionTransitionError as exc:
        _fail(f"{exc.code}: {exc.reason}")
    except (NotFoundError, ValueError) as exc:
        _fail(str(exc))
    _echo_json({"tenant": tenant, "published": v.version})


@index_app.command("receipt")
def index_receipt(
    tenant: Annotated[str, typer.Option()],
    version: Annotated[str | None, typer.Option(help="Default: the published version.")] = None,
) -> None:
    """Prints a version's reconciliation receipt: source documents missing from it, orphans
    (documents deleted at the source but still indexed), ACL and chunk-count mismatches, with
    sample ids. The last line is JSON; exit 1 when the receipt did not pass, 2 when there is
    none."""
    from rag_platform.lib.store import NotFoundError

    store = _store()
    try:
        receipt = store.get_receipt(tenant, version)
        if version is None:
            published = store.get_published_version(tenant)
            version = published.version if published is not None else None
    except NotFoundError as exc:
        _fail(str(exc))
    if receipt is None:
        _fail(f"tenant {tenant!r}: version {version!r} has no reconciliation receipt")
    for kind, ids in sorted(receipt.samples.items()):
        if ids:
            typer.echo(f"{kind}: {', '.join(ids)}")
    _echo_json({"tenant": tenant, "version": version, **receipt.to_dict()})
    if not receipt.passed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------
# backup, restore
# ------------------------------------------------------------------------------------------


@app.command()
def backup(
    tenant: Annotated[str, typer.Option(help="Tenant to back up.")],
    to: Annotated[str, typer.Option("--to", help="An empty or new folder, or s3://bucket/prefix.")],
) -> None:
    """Writes a consistent backup of a tenant: the published index shard, its metadata rows,
    its registry entry and its content caches, with a manifest of SHA-256 checksums. The last
    line is JSON (files, bytes, rows per table, manifest_sha256); exit 2 on refusal."""
    from rag_platform.lib.backup import BackupError, TenantBackup

    settings = get_settings()
    try:
        receipt = TenantBackup(settings, _store(settings)).run(tenant, to)
    except (BackupError, ValueError) as exc:
        _fail(str(exc))
    _echo_json(receipt.to_dict())


@app.command()
def restore(
    source: Annotated[str, typer.Option("--from", help="A backup folder or s3://bucket/prefix.")],
    force: Annotated[bool, typer.Option(help="Replace the tenant if it exists here.")] = False,
) -> None:
    """Verifies every checksum of a backup, then restores its tenant into this RAG_HOME (refused
    if the tenant exists, unless --force). The last line is JSON; exit 2 on refusal (a tampered
    or incomplete backup: nothing is written)."""
    from rag_platform.lib.backup import BackupError, TenantRestore

    settings = get_settings()
    try:
        receipt = TenantRestore(settings, _store(settings)).run(source, force=force)
    except (BackupError, ValueError) as exc:
        _fail(str(exc))
    _echo_json(receipt.to_dict())


# ------------------------------------------------------------------------------------------
# audit
# ------------------------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify() -> None:
    """Checks the audit log's hash chain from its first row to its last. The last line is JSON
    (``intact``, ``rows``, ``head_hash``, ``broken_id``, ``reason``); exit 0 when intact, 1
    naming the first broken row and why."""
    report = _store().verify_audit()
    if not report.intact:
        typer.echo(f"audit log broken at row {report.broken_id}: {report.reason}", err=True)
    _echo_json(report.to_dict())
    if not report.intact:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------
# erase
# ------------------------------------------------------------------------------------------


def _known_tenant(settings: Settings, tenant: str) -> None:
    from rag_platform.lib.tenants import load_registry

    if tenant not in load_registry(settings.tenants_file, settings.data_dir).ids:
        _fail(f"unknown tenant {tenant!r}")


@erase_app.command("document")
def erase_document(
    tenant: Annotated[str, typer.Option()],
    doc_id: Annotated[str, typer.Option(help="Document id (GET /v1/admin/documents).")],
    reason: Annotated[str, typer.Option(help="Recorded with the suppression.")] = "",
    rebuild: Annotated[
        bool,
        typer.Option(
            help="Materialize the tenant now, so the published version no longer holds "
            "it (default: the next scheduled run does; searches exclude it at once)."
        ),
    ] = False,
) -> None:
    """Erases a document: suppression list (a re-sync does not bring it back), content caches,
    stored assets, golden-set relevance; searches exclude it at once. The last line is the JSON
    receipt (also written to the audit log); exit 1 when its verification failed."""
    from rag_platform.lib.index.backend import open_backend
    from rag_platform.lib.lifecycle.erasure import DocumentEraser, verify_document_erasure

    settings = get_settings()
    _known_tenant(settings, tenant)
    store = _store(settings)
    backend = open_backend(settings)
    try:
        receipt = DocumentEraser(settings, store, backend).run(
            tenant, doc_id, actor="cli", reason=reason
        )
    except ValueError as exc:
        _fail(str(exc))
    out = receipt.to_dict()
    if rebuild:
        from rag_platform.runner import materialize_tenant

        with _interrupts_not_lost():
            summary = materialize_tenant(tenant, settings)
        verification = verify_document_erasure(settings, store, backend, tenant, receipt.subject)
        out["rebuild"] = summary.as_json()
        out["verification"] = verification.to_dict()
        out["pending"] = [
            c.detail for c in verification.checks if c.name == "published_version" and c.detail
        ]
        store.audit("erasure.verify", tenant, "cli", {"subject": receipt.subject, **out})
    _echo_json(out)
    if not out["verification"]["passed"]:
        raise typer.Exit(1)


@erase_app.command("verify")
def erase_verify(
    tenant: Annotated[str, typer.Option()],
    doc_id: Annotated[str, typer.Option()],
) -> None:
    """Re-runs an erased document's verification (caches, stored assets, index versions built
    since, search of the published version). Last line JSON; exit 1 when something is left."""
    from rag_platform.lib.index.backend import open_backend
    from rag_platform.lib.lifecycle.erasure import verify_document_erasure

    settings = get_settings()
    _known_tenant(settings, tenant)
    try:
        verification = verify_document_erasure(
            settings, _store(settings), open_backend(settings), tenant, doc_id
        )
    except ValueError as exc:
        _fail(str(exc))
    _echo_json({"tenant": tenant, "doc_id": doc_id, **verification.to_dict()})
    if not verification.passed:
        raise typer.Exit(1)


@erase_app.command("release")
def erase_release(
    tenant: Annotated[str, typer.Option()],
    doc_id: Annotated[str, typer.Option()],
) -> None:
    """Takes a document off the suppression list: the next sync ingests it again if its source
    still holds it (audited as ``document.release``)."""
    from rag_platform.lib.lifecycle.erasure import check_doc_id

    settings = get_settings()
    _known_tenant(settings, tenant)
    try:
        doc_id = check_doc_id(doc_id)
    except ValueError as exc:
        _fail(str(exc))
    if not _store(settings).release_document(tenant, doc_id, actor="cli"):
        _fail(f"document {doc_id} of tenant {tenant!r} is not suppressed")
    _echo_json({"tenant": tenant, "released": doc_id})


@erase_app.command("principal")
def erase_principal(
    tenant: Annotated[str, typer.Option()],
    principal: Annotated[str, typer.Option(help="The principal's API key id.")],
) -> None:
    """Erases a principal's query-log rows (with the feedback on them), the feedback it gave
    and its spooled query-log records. Last line: the JSON receipt (also in the audit log)."""
    from rag_platform.lib.lifecycle.erasure import PrincipalEraser

    settings = get_settings()
    _known_tenant(settings, tenant)
    try:
        receipt = PrincipalEraser(settings, _store(settings)).run(tenant, principal, actor="cli")
    except ValueError as exc:
        _fail(str(exc))
    _echo_json(receipt.to_dict())
    if not receipt.verification.passed:
        raise typer.Exit(1)


@erase_app.command("tenant")
def erase_tenant(tenant: Annotated[str, typer.Option()]) -> None:
    """Erases a tenant by crypto-shredding: destroys its data keys (everything sealed under
    them is unreadable for good), then removes its caches, stored assets, uploads, index
    versions, rows (the audit log keeps the receipt) and registry entry. Last line: the JSON
    receipt (also in the audit log); exit 1 when its verification failed."""
    from rag_platform.lib.index.backend import open_backend
    from rag_platform.lib.lifecycle.erasure import TenantEraser

    settings = get_settings()
    try:
        receipt = TenantEraser(settings, _store(settings), open_backend(settings)).run(
            tenant, actor="cli"
        )
    except ValueError as exc:
        _fail(str(exc))
    _echo_json(receipt.to_dict())
    if not receipt.verification.passed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------


def _write_export(records: Iterator[dict[str, Any]], out: Path | None) -> None:
    from rag_platform.lib.cache import atomic_write
    from rag_platform.lib.lifecycle.export import write_jsonl

    if out is None:
        write_jsonl(records, sys.stdout)
        return
    out = out.expanduser().resolve()
    if out.is_dir():
        _fail(f"{out} is a folder; give a file path")
    out.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as f:
            counts.update(write_jsonl(records, f))

    atomic_write(out, write)
    _echo_json({"path": str(out), "counts": counts})


@export_app.command("tenant")
def export_tenant(
    tenant: Annotated[str, typer.Option()],
    out: Annotated[Path | None, typer.Option(help="File to write; default: stdout.")] = None,
) -> None:
    """Writes the tenant's archive: documents and chunks as indexed, API key metadata (no
    hashes), query log, feedback, index versions, suppressions, audit rows. One JSON object per
    line with a ``type`` field; with ``--out`` the last line printed is a JSON summary."""
    from rag_platform.lib.index.backend import open_backend
    from rag_platform.lib.lifecycle.export import Exporter
    from rag_platform.lib.tenants import load_registry

    settings = get_settings()
    registry = load_registry(settings.tenants_file, settings.data_dir)
    if tenant not in registry.ids:
        _fail(f"unknown tenant {tenant!r}")
    exporter = Exporter(_store(settings), open_backend(settings))
    _write_export(exporter.tenant_records(registry.get(tenant)), out)


@export_app.command("principal")
def export_principal(
    tenant: Annotated[str, typer.Option()],
    principal: Annotated[str, typer.Option(help="The principal's API key id.")],
    out: Annotated[Path | None, typer.Option(help="File to write; default: stdout.")] = None,
) -> None:
    """Writes a principal's archive: its API key metadata, its queries, the feedback it gave
    and the audit rows it made (JSON Lines, as ``export tenant``)."""
    from rag_platform.lib.index.backend import open_backend
    from rag_platform.lib.lifecycle.export import Exporter

    settings = get_settings()
    _known_tenant(settings, tenant)
    records = Exporter(_store(settings), open_backend(settings)).principal_records(
        tenant, principal
    )
    try:
        first = next(records)
    except KeyError as exc:
        _fail(str(exc.args[0]))

    def chained() -> Iterator[dict[str, Any]]:
        yield first
        yield from records

    _write_export(chained(), out)


# ------------------------------------------------------------------------------------------
# lineage
# ------------------------------------------------------------------------------------------


@app.command()
def lineage(query_id: Annotated[str, typer.Option(help="A logged query id.")]) -> None:
    """Prints a query's lineage as JSON: each cited (and retrieved) chunk's document, source,
    URI and content hash, the index version, the Dagster run that built it, the run's code
    version and configuration fingerprint."""
    from rag_platform.lib.index.backend import open_backend
    from rag_platform.lib.lifecycle.lineage import QueryLineage

    settings = get_settings()
    try:
        found = QueryLineage(_store(settings), open_backend(settings)).run(query_id)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    _echo_json(found.to_dict())


# ------------------------------------------------------------------------------------------
# eval, costs
# ------------------------------------------------------------------------------------------


@app.command("eval")
def eval_command(
    tenant: Annotated[str, typer.Option()],
    golden: Annotated[Path | None, typer.Option(help="JSONL, CSV or BEIR folder.")] = None,
    golden_format: Annotated[str, typer.Option("--format")] = "auto",
    split: Annotated[str, typer.Option(help="BEIR qrels split.")] = "train",
    k: Annotated[int, typer.Option(help="Cut-off for nDCG/precision.")] = 10,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N questions.")] = None,
) -> None:
    """Evaluates the published version on the tenant's (or any) golden set; last line is JSON."""
    from rag_platform.lib.evaluation.runner import evaluate_published

    settings = get_settings()
    try:
        result = evaluate_published(
            settings,
            _store(settings),
            tenant,
            golden=golden,
            golden_format=golden_format,
            split=split,
            k=k,
            limit=limit,
        )
    except (KeyError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    _echo_json(result)


@app.command()
def costs(
    tenant: Annotated[str, typer.Option()],
    day: Annotated[str | None, typer.Option(help="YYYY-MM-DD (UTC); default today.")] = None,
) -> None:
    """Prints a tenant's cost rollup for one day (the same code as tenant_daily_costs)."""
    from rag_platform.lib.costs import PriceTable, tenant_day_rollup

    d = date.fromisoformat(day) if day else datetime.now(UTC).date()
    _echo_json(tenant_day_rollup(_store(), tenant, d, PriceTable.load(get_settings().home)))


# ------------------------------------------------------------------------------------------
# experiments, golden-set candidates
# ------------------------------------------------------------------------------------------


def _tenant_config(settings: Settings, tenant: str) -> Any:
    from rag_platform.lib.tenants import load_registry

    registry = load_registry(settings.tenants_file, settings.data_dir)
    if tenant not in registry.ids:
        _fail(f"unknown tenant {tenant!r}")
    return registry.get(tenant)


@experiments_app.command("report")
def experiments_report(
    tenant: Annotated[str, typer.Option()],
    experiment: Annotated[
        str | None, typer.Option(help="Experiment id; default the tenant's configured one.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only queries from this ISO date-time (UTC) on.")
    ] = None,
) -> None:
    """Per variant: queries, mean rating, refusal rate and latency, joined from the query log
    and the feedback, and whether the differences are significant (Mann-Whitney U on ratings
    and latencies, chi-square on refusals; alpha 0.05). A table, then the JSON as last line."""
    from rag_platform.lib.experiments import experiment_report

    settings = get_settings()
    config = _tenant_config(settings, tenant)
    try:
        start = datetime.fromisoformat(since) if since else None
        report = experiment_report(_store(settings), config, experiment, start)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"experiment {report['experiment']} of {tenant}: {report['queries']} queries")
    for name, v in report["variants"].items():
        typer.echo(
            f"  {name:<16} queries {v['queries']:>6}  rated {v['rated']:>5}  "
            f"mean rating {v['mean_rating'] if v['mean_rating'] is not None else '-':>6}  "
            f"refusal rate {v['refusal_rate'] if v['refusal_rate'] is not None else '-':>6}  "
            f"p50 {v['latency_ms_p50'] if v['latency_ms_p50'] is not None else '-'} ms"
        )
    for measure, t in report["tests"].items():
        verdict = "significant" if t["significant"] else "not significant"
        typer.echo(f"  {measure}: {t['test']} p={t['p_value']} ({verdict})")
    _echo_json(report)


def _candidate_json(c: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(c)


@golden_app.command("candidates")
def golden_candidates_list(
    tenant: Annotated[str, typer.Option()],
    status: Annotated[
        str | None, typer.Option(help="pending, accepted or rejected; default all.")
    ] = None,
) -> None:
    """Lists the tenant's golden-set candidates (one JSON object per line: question, retrieved
    chunks, rating, comment, status)."""
    settings = get_settings()
    _known_tenant(settings, tenant)
    if status not in (None, "pending", "accepted", "rejected"):
        _fail("--status must be pending, accepted or rejected")
    for c in _store(settings).golden_candidates.find(tenant, status):  # type: ignore[arg-type]
        _echo_json(_candidate_json(c))


def _review(
    tenant: str, candidate: str, status: str, doc_ids: list[str], reference: str, reviewer: str
) -> None:
    from rag_platform.lib.store import NotFoundError

    settings = get_settings()
    _known_tenant(settings, tenant)
    try:
        done = _store(settings).golden_candidates.review(
            tenant,
            candidate,
            status,  # type: ignore[arg-type]
            reviewer,
            relevant_doc_ids=doc_ids,
            reference_answer=reference,
        )
    except NotFoundError as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(str(exc))
    _echo_json(_candidate_json(done))


@golden_app.command("accept")
def golden_accept(
    tenant: Annotated[str, typer.Option()],
    candidate: Annotated[str, typer.Option(help="The candidate id.")],
    doc_id: Annotated[
        list[str] | None, typer.Option("--doc-id", help="A document that answers (repeatable).")
    ] = None,
    reference_answer: Annotated[str, typer.Option(help="The reviewed answer.")] = "",
    reviewer: Annotated[str, typer.Option(help="Who reviewed it.")] = "cli",
) -> None:
    """Accepts a candidate into the golden set (needs --doc-id and/or --reference-answer); the
    next golden_set materialization includes it. Last line: the candidate as JSON."""
    _review(tenant, candidate, "accepted", list(doc_id or []), reference_answer, reviewer)


@golden_app.command("reject")
def golden_reject(
    tenant: Annotated[str, typer.Option()],
    candidate: Annotated[str, typer.Option(help="The candidate id.")],
    reviewer: Annotated[str, typer.Option(help="Who reviewed it.")] = "cli",
) -> None:
    """Rejects a candidate (it is never proposed again). Last line: the candidate as JSON."""
    _review(tenant, candidate, "rejected", [], "", reviewer)


# ------------------------------------------------------------------------------------------
# serve, ui, demo
# ------------------------------------------------------------------------------------------


#: A daemon heartbeat younger than this (seconds) means a daemon serves the instance already
#: (Dagster's daemons beat every 30 s).
DAEMON_HEARTBEAT_FRESH_SECONDS = 60.0
#: How long a stopping daemon may take before it is killed (seconds).
DAEMON_STOP_SECONDS = 30.0


def _daemon_running(settings: Settings) -> bool:
    """Whether a Dagster daemon heartbeats for the instance under ``RAG_HOME/dagster``."""
    from rag_platform.runner import dagster_instance

    instance = dagster_instance(settings)
    try:
        now = datetime.now(UTC).timestamp()
        beats = instance.get_daemon_heartbeats().values()
        return any(now - b.timestamp < DAEMON_HEARTBEAT_FRESH_SECONDS for b in beats)
    finally:
        instance.dispose()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))


def _start_daemon(settings: Settings) -> subprocess.Popen[bytes]:
    """Starts ``dagster-daemon run`` on this project's workspace and instance.

    The child gets SIGTERM when this process dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``),
    so a daemon never outlives ``serve``.
    """
    env = {
        **os.environ,
        "DAGSTER_HOME": str(settings.dagster_home.resolve()),
        "RAG_HOME": str(settings.home.resolve()),
        "RAG_TENANTS_FILE": str(settings.tenants_file.resolve()),
    }
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-daemon"),
            "run",
            "-w",
            str(PROJECT_ROOT / "workspace.yaml"),
        ],
        env=env,
        cwd=PROJECT_ROOT,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
    )


def _stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        daemon.terminate()  # Dagster maps SIGTERM onto its SIGINT shutdown
        try:
            daemon.wait(timeout=DAEMON_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    no_daemon: Annotated[
        bool,
        typer.Option(
            "--no-daemon",
            help="Do not start the Dagster daemon (it runs elsewhere, e.g. its own deployment).",
        ),
    ] = False,
) -> None:
    """Runs the query and ingestion API (one process; its thread pool shares the opened index
    shards), and the Dagster daemon that runs the syncs of uploads, unless ``--no-daemon`` or a
    daemon already heartbeats for the instance (``rag-platform ui``).

    On SIGTERM or SIGINT the server stops accepting connections, lets in-flight requests finish
    for up to ``RAG_SHUTDOWN_GRACE_SECONDS``, then runs the app's shutdown, which writes the
    queued query-log rows (to the database, or the spool file when it is down); then the daemon
    it started is stopped (SIGTERM; killed after 30 s).
    """
    import uvicorn

    settings = get_settings()
    _store(settings).dispose()
    daemon = None
    if not no_daemon:
        if _daemon_running(settings):
            typer.echo("a Dagster daemon already serves this instance; not starting one", err=True)
        else:
            daemon = _start_daemon(settings)
    try:
        uvicorn.run(
            "serving.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=1,
            log_config=None,
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        )
    finally:
        if daemon is not None:
            _stop_daemon(daemon)


@app.command()
def ui(port: Annotated[int, typer.Option()] = 3000) -> None:
    """Starts the Dagster UI and daemon (`dagster dev`) on this project's RAG_HOME.

    ``dagster dev`` replaces this process (same pid), so SIGTERM or SIGINT to it shuts down the
    webserver, the daemon and the code servers.
    """
    from rag_platform.runner import dagster_instance

    dagster_instance()  # writes RAG_HOME/dagster/dagster.yaml, sets DAGSTER_HOME
    os.execvp(
        sys.executable,
        [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-w",
            str(PROJECT_ROOT / "workspace.yaml"),
            "-p",
            str(port),
        ],
    )


def _ask(base: str, key: str, question: str) -> dict[str, Any]:
    import httpx

    r = httpx.post(
        f"{base}/v1/query",
        json={"query": question, "top_k": 5},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


@app.command()
def demo(
    tenant: Annotated[list[str], typer.Option(help="Tenants (default: all).")] = [],  # noqa: B006
    keep_serving: Annotated[bool, typer.Option(help="Leave the API running.")] = False,
    port: Annotated[int | None, typer.Option()] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also print Dagster's event stream.")
    ] = False,
) -> None:
    """Starts the API, materializes the demo tenants one after the other and asks each tenant's
    sample question as soon as that tenant is published, printing the cited answer and the time
    to the first answer.

    The API runs without the Dagster daemon while the demo materializes: the daemon's
    ``tenant_registry_sensor`` would launch a second run of a tenant not materialized yet, on the
    same cores, beside the demo's own. With ``--keep-serving`` the daemon (uploads, schedules,
    sensors) starts once every tenant is published, unless one heartbeats for the instance.

    Stage progress and the log file are as for ``materialize``. The last line is JSON:
    ``first_answer_seconds`` and ``seconds`` (both from the start of the first
    materialization), the log file and each tenant's run summary.
    """
    import time

    from rag_platform.lib.net import free_port, wait_for_http
    from rag_platform.lib.tenants import load_registry
    from rag_platform.runner import run_log_path

    settings = get_settings()
    registry = load_registry(settings.tenants_file, settings.data_dir)
    ids = tenant or registry.ids
    unknown = [t for t in ids if t not in registry.ids]
    if unknown:
        _fail(f"unknown tenant(s): {', '.join(unknown)}")
    store = _store(settings)
    port = port or free_port()
    env = {**os.environ, "RAG_HOME": str(settings.home)}
    log_file = run_log_path(settings)
    server_log = log_file.with_name(log_file.name.replace("materialize-", "serve-"))
    server_log.parent.mkdir(parents=True, exist_ok=True)
    console = _progress_console()
    typer.echo(f"Dagster events: {log_file}; API log: {server_log}", err=True)
    # Started first, so its start-up overlaps the first tenant's materialization; its request
    # log goes to a file (to the terminal with --verbose).
    with server_log.open("ab") as server_out:
        server = subprocess.Popen(
            [sys.executable, "-m", "rag_platform.cli", "serve", "--port", str(port), "--no-daemon"],
            env=env,
            stdout=None if verbose else server_out,
            stderr=None if verbose else subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    keys: dict[str, str] = {}
    summaries: list[dict[str, Any]] = []
    first_answer: float | None = None
    daemon: subprocess.Popen[bytes] | None = None
    ready = False
    start = time.perf_counter()
    try:
        for t in ids:
            typer.echo(f"== materializing {t} ...", err=True)
            summary = _run_with_progress(t, settings, log_file, verbose, console)
            summaries.append(summary.as_json())
            _echo_json(summary.as_json())
            if store.get_published_version(t) is None:
                _fail(f"tenant {t} has no published index (see the run above)", 1)
            keys[t] = store.create_api_key(
                t, registry.get(t).default_acl_groups, name="demo", actor="demo"
            )[1]
            if not ready:
                try:
                    wait_for_http(f"{base}/health/ready", server, timeout=120)
                except RuntimeError as exc:
                    _fail(f"the API did not become ready: {exc}", 1)
                ready = True
            for question in registry.get(t).sample_questions[:1] or ["What is this about?"]:
                body = _ask(base, keys[t], question)
                typer.echo(f"\n[{t}] Q: {question}\nA: {body['answer']}")
                for c in body.get("citations", []):
                    page = f", p. {c['page']}" if c.get("page") else ""
                    typer.echo(f"  [{c['index']}] {c['title']}{page} — {c['uri']}")
                if first_answer is None:
                    first_answer = time.perf_counter() - start
                    typer.echo(f"\ntime to first answer: {first_answer:.1f} s\n")
        seconds = time.perf_counter() - start
        if not keep_serving:  # stopped first, so nothing it prints follows the JSON line
            _stop_server(server)
        _echo_json(
            {
                "first_answer_seconds": round(first_answer, 1) if first_answer else None,
                "seconds": round(seconds, 1),
                "log_file": str(log_file),
                "tenants": summaries,
            }
        )
        if keep_serving:
            if not _daemon_running(settings):
                daemon = _start_daemon(settings)
            typer.echo(f"\nAPI at {base}; keys: {json.dumps(keys)}; Ctrl-C to stop.", err=True)
            server.wait()
    finally:
        _stop_server(server)
        if daemon is not None:
            _stop_daemon(daemon)


def _stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    app()
