"""Run the Dagster definitions in-process: the one way the CLI, the tests and the benchmarks
materialize a tenant, so they all exercise the same assets and checks as the Dagster UI.

A run's Dagster event stream goes to the console logger (as ``dagster`` prints it) or, given a
``log_file``, to that file (every event, DEBUG included) and to the console only when asked.
After every run the per-stage rates it measured are recorded (``lib/plan.py``'s
``StageRates``) for the next cost preview.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository

from rag_platform.defs.executor import WORKER_METADATA_KEY
from rag_platform.defs.partitions import TENANTS
from rag_platform.settings import PROJECT_ROOT, Settings, get_settings

#: The per-tenant job materialize_tenant runs, and the run tag that names its partition.
PIPELINE_JOB = "tenant_pipeline"
PARTITION_TAG = "dagster/partition"


@lru_cache(maxsize=1)
def load_definitions() -> dg.Definitions:
    from rag_platform.definitions import defs

    return defs()


def dagster_instance(settings: Settings | None = None) -> dg.DagsterInstance:
    """The Dagster instance under ``RAG_HOME/dagster`` (SQLite), created on first use.

    ``DAGSTER_HOME`` is pointed there, so ``dagster dev`` and the CLI share runs and
    materializations.
    """
    settings = settings or get_settings()
    settings.ensure_dirs()
    home = settings.dagster_home
    config = home / "dagster.yaml"
    if not config.exists():
        shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", config)
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.from_config(str(home))


#: Open handlers of :func:`file_logger`, by path, closed when their run ends.
_file_handlers: dict[str, logging.FileHandler] = {}
_file_handlers_lock = threading.Lock()


@dg.logger(
    {
        "path": dg.Field(str, description="The log file (appended to)."),
        "log_level": dg.Field(str, is_required=False, default_value="DEBUG"),
    },
    description="Writes the run's Dagster events to a file.",
)
def file_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    """A logger appending every Dagster event of the run to ``path``."""
    config = init_context.logger_config
    path = str(config["path"])
    logger = logging.Logger("dagster.file", level=logging.getLevelName(config["log_level"]))
    with _file_handlers_lock:
        handler = _file_handlers.get(path)
        if handler is None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path, encoding="utf-8")
            handler.setFormatter(
                logging.Formatter("%(asctime)s - %(levelname)s - %(message)s", "%H:%M:%S")
            )
            _file_handlers[path] = handler
    logger.addHandler(handler)
    return logger


def _close_file_logger(path: Path) -> None:
    with _file_handlers_lock:
        handler = _file_handlers.pop(str(path), None)
    if handler is not None:
        handler.close()


def run_log_path(settings: Settings, started: float | None = None) -> Path:
    """``RAG_HOME/logs/materialize-<UTC timestamp>.log`` for a run started at ``started``
    (epoch seconds; default now)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    return settings.logs_dir / f"materialize-{stamp}.log"


@dataclass
class PipelineSummary:
    """What one tenant run did; ``as_json()`` is the CLI's last line."""

    tenant: str
    success: bool
    documents: int = 0
    chunks: int = 0
    embedded: int = 0
    index_version: str | None = None
    published: bool = False
    seconds: float = 0.0
    quarantined: int = 0
    failed_checks: list[str] = field(default_factory=list)
    seconds_by_stage: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_id: str = ""
    #: Step key -> Celery worker hostname (``name@host``) that ran it; empty when in-process.
    step_workers: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "success": self.success,
            "documents": self.documents,
            "chunks": self.chunks,
            "embedded": self.embedded,
            "index_version": self.index_version,
            "published": self.published,
            "seconds": round(self.seconds, 2),
            "quarantined": self.quarantined,
            "failed_checks": self.failed_checks,
            "run_id": self.run_id,
            "workers": sorted(set(self.step_workers.values())),
        }


def _celery_worker(event: dg.DagsterEvent) -> str | None:
    """The worker hostname of dagster-celery's "Executing steps ... in celery worker" engine
    event, None for any other event."""
    if not event.is_engine_event:
        return None
    metadata = getattr(event.event_specific_data, "metadata", None) or {}
    value = metadata.get(WORKER_METADATA_KEY)
    worker = getattr(value, "value", value)
    return worker if isinstance(worker, str) else None


def _metadata_values(event: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (event.metadata or {}).items():
        out[key] = getattr(value, "value", value)
    return out


def materialize_tenant(
    tenant: str,
    settings: Settings | None = None,
    instance: dg.DagsterInstance | None = None,
    *,
    log_file: Path | None = None,
    console: bool = True,
) -> PipelineSummary:
    """Materializes the tenant's whole graph (the ``tenant_pipeline`` job).

    In this process (``execute_in_process``), or, when ``RAG_CELERY_BROKER_URL`` is set, with the
    job's celery executor: this process orchestrates and every step runs as a Celery task on a
    ``rag-platform worker``; ``step_workers`` then names the worker of each step.

    Args:
        tenant: tenant id.
        settings: default ``get_settings()``.
        instance: default the instance under ``RAG_HOME/dagster``.
        log_file: when given (in-process runs), every Dagster event of the run (DEBUG
            included) is appended to it, and the console gets them only when ``console`` is
            true; a Celery run's events stay in the instance's event log (the Dagster UI).
        console: with a ``log_file``, also print the events to the terminal (``--verbose``).

    Raises:
        KeyError: the tenant is not in the registry.
    """
    from rag_platform.lib.tenants import load_registry

    settings = settings or get_settings()
    registry = load_registry(settings.tenants_file, settings.data_dir)
    registry.get(tenant)  # KeyError for an unknown tenant
    instance = instance or dagster_instance(settings)
    if not instance.has_dynamic_partition(TENANTS, tenant):
        instance.add_dynamic_partitions(TENANTS, [tenant])
    job = load_definitions().resolve_job_def(PIPELINE_JOB)
    run_config: dict[str, Any] = {}
    if log_file is not None and not settings.celery_broker_url:
        job = job.with_logger_defs(
            {"console": dg.default_loggers()["console"], "file": file_logger}
        )
        loggers: dict[str, Any] = {"file": {"config": {"path": str(log_file)}}}
        if console:
            loggers["console"] = {"config": {"log_level": "DEBUG"}}
        run_config["loggers"] = loggers
    start = time.perf_counter()
    try:
        if settings.celery_broker_url:
            # Out of process: the run's executor (celery) needs a job the workers can rebuild;
            # its events go to the instance's event log (the Dagster UI), not to log_file.
            with dg.execute_job(
                reconstructable_pipeline(),
                instance,
                tags={PARTITION_TAG: tenant},
                raise_on_error=False,
            ) as result:
                summary = _summarize(tenant, result, time.perf_counter() - start)
        else:
            in_process = job.execute_in_process(
                run_config=run_config, partition_key=tenant, instance=instance, raise_on_error=False
            )
            summary = _summarize(tenant, in_process, time.perf_counter() - start)
    finally:
        if log_file is not None and not settings.celery_broker_url:
            _close_file_logger(log_file)
    from rag_platform.lib.store import MetadataStore

    store = MetadataStore.from_settings(settings)
    try:
        store.migrate()  # a run that failed before any step opened the store left it empty
        published = store.get_published_version(tenant)
    finally:
        store.dispose()
    md = summary.metadata
    summary.published = bool(
        published and published.version == summary.index_version and "published_index" in md
    )
    from rag_platform.lib.plan import MIN_SHARED_ITEMS, StageRates, measured_rates

    evaluation = md.get("index_evaluation", {})
    questions = None if evaluation.get("reused") else int(evaluation.get("questions") or 0)
    StageRates(settings.home).record(
        tenant, measured_rates(md), questions, shared=measured_rates(md, MIN_SHARED_ITEMS)
    )
    return summary


def reconstructable_pipeline() -> ReconstructableJob:
    """``tenant_pipeline`` as a job another process can rebuild (a Celery worker, a
    multiprocess step): a pointer to ``rag_platform.definitions:defs`` and the job's name."""
    repository = ReconstructableRepository.for_module(
        "rag_platform.definitions", "defs", working_directory=str(PROJECT_ROOT)
    )
    return repository.get_reconstructable_job(PIPELINE_JOB)


def _summarize(
    tenant: str, result: dg.ExecuteInProcessResult | dg.JobExecutionResult, seconds: float
) -> PipelineSummary:
    """The run's summary from its events (``published`` is filled in by the caller)."""
    summary = PipelineSummary(
        tenant=tenant, success=result.success, seconds=seconds, run_id=result.run_id
    )
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        name = mat.asset_key.to_user_string()
        summary.metadata[name] = _metadata_values(mat)
    for event in result.all_events:
        data = event.event_specific_data
        if isinstance(data, dg.AssetCheckEvaluation) and not data.passed:
            summary.failed_checks.append(data.check_name)
        worker = _celery_worker(event)
        if worker is not None and event.step_key:
            summary.step_workers[event.step_key] = worker
    md = summary.metadata
    summary.documents = int(md.get("source_documents", {}).get("documents", 0))
    summary.chunks = int(md.get("chunks", {}).get("chunks", 0))
    summary.embedded = int(md.get("chunk_embeddings", {}).get("embedded", 0))
    summary.quarantined = sum(
        int(md.get(stage, {}).get("quarantined", 0))
        for stage in ("parsed_documents", "masked_documents", "chunks")
    )
    summary.index_version = md.get("search_index", {}).get("version")
    for name, values in md.items():
        if "seconds" in values:
            summary.seconds_by_stage[name] = float(values["seconds"])
    return summary
