"""The pipeline's executor: Dagster's default without a broker; with RAG_CELERY_BROKER_URL, every
step of two tenants' runs executes on two real ``rag-platform worker`` processes (Redis broker)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import dagster as dg
import pytest

from rag_platform.defs.executor import (
    WORKER_METADATA_KEY,
    celery_app_args,
    pipeline_executor,
    worker_app,
)
from rag_platform.lib.index.edge import EdgeIndexReader
from rag_platform.lib.store import MetadataStore
from rag_platform.runner import dagster_instance
from rag_platform.settings import Settings
from rag_platform_tests.conftest import scifact_tenant
from rag_platform_tests.utils.processes import CeleryWorker, Materialization, platform_env
from rag_platform_tests.utils.services import flushed_redis

#: Redis logical database of the Celery tests' broker and results (flushed before and after).
CELERY_TEST_DB = 12


class TestExecutorSelection:
    def test_without_a_broker_the_default_executor_stays(self) -> None:
        assert pipeline_executor(Settings(celery_broker_url=None)) is None
        assert Settings(celery_broker_url=None).resolved_celery_backend_url is None

    def test_a_redis_broker_is_its_own_result_backend(self, monkeypatch) -> None:
        monkeypatch.setenv("RAG_CELERY_BROKER_URL", "redis://127.0.0.1:6379/3")
        settings = Settings()
        assert settings.resolved_celery_backend_url == "redis://127.0.0.1:6379/3"
        args = celery_app_args(settings)
        # read from the environment at launch, not kept in the job definition
        assert args["broker"] == {"env": "RAG_CELERY_BROKER_URL"}
        assert args["backend"] == {"env": "RAG_CELERY_BROKER_URL"}
        executor = pipeline_executor(settings)
        assert isinstance(executor, dg.ExecutorDefinition) and executor.name == "celery"

    def test_an_amqp_broker_gets_rpc_results_and_an_explicit_backend_wins(self) -> None:
        amqp = Settings(celery_broker_url="amqp://guest:guest@127.0.0.1:5672//")
        assert amqp.resolved_celery_backend_url == "rpc://"
        assert celery_app_args(amqp)["broker"] == "amqp://guest:guest@127.0.0.1:5672//"
        both = Settings(
            celery_broker_url="amqp://guest:guest@127.0.0.1:5672//",
            celery_backend_url="redis://127.0.0.1:6379/4",
        )
        assert both.resolved_celery_backend_url == "redis://127.0.0.1:6379/4"

    def test_no_broker_no_app_args(self) -> None:
        with pytest.raises(ValueError, match="RAG_CELERY_BROKER_URL"):
            celery_app_args(Settings(celery_broker_url=None))

    def test_the_worker_command_refuses_without_a_broker_or_with_a_bad_name(
        self, rag_home, monkeypatch
    ) -> None:
        from typer.testing import CliRunner

        from rag_platform.cli import app
        from rag_platform.settings import get_settings

        runner = CliRunner()
        monkeypatch.delenv("RAG_CELERY_BROKER_URL", raising=False)
        result = runner.invoke(app, ["worker", "--name", "alpha"])
        assert result.exit_code == 2 and "RAG_CELERY_BROKER_URL" in result.output
        monkeypatch.setenv("RAG_CELERY_BROKER_URL", "redis://127.0.0.1:6379/12")
        get_settings.cache_clear()
        for bad in ("../etc", "a b", "x" * 64, "-q"):
            result = runner.invoke(app, ["worker", "--name", bad])
            assert result.exit_code == 2, (bad, result.output)
        result = runner.invoke(app, ["worker", "--loglevel", "TRACE"])
        assert result.exit_code == 2 and "--loglevel" in result.output

    def test_the_worker_app_serves_dagster_celerys_task_on_the_dagster_queue(self) -> None:
        app = worker_app(Settings(celery_broker_url="redis://127.0.0.1:6379/3"))
        try:
            assert "execute_plan" in app.tasks
            assert [q.name for q in app.conf.task_queues] == ["dagster"]
            assert app.conf.task_acks_late is True
        finally:
            app.close()


def _step_workers(instance: dg.DagsterInstance, run_id: str) -> tuple[dict[str, str], set[int]]:
    """Step key -> the Celery worker that reported starting it, and the pids of every
    STEP_START of the run (from the run's stored event log)."""
    workers: dict[str, str] = {}
    start_pids: set[int] = set()
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or not event.step_key:
            continue
        if event.event_type_value == "STEP_START" and event.pid is not None:
            start_pids.add(event.pid)
        if event.is_engine_event:
            metadata = getattr(event.event_specific_data, "metadata", None) or {}
            if WORKER_METADATA_KEY in metadata:
                workers[event.step_key] = metadata[WORKER_METADATA_KEY].value
    return workers, start_pids


@pytest.mark.integration
@pytest.mark.slow
def test_two_tenants_run_their_steps_on_two_celery_workers(
    rag_home: Settings, write_tenants, tmp_path: Path
) -> None:
    write_tenants(scifact_tenant("sci-a", limit=10), scifact_tenant("sci-b", limit=14))
    with flushed_redis(CELERY_TEST_DB) as broker:
        env = platform_env(
            {
                "RAG_HOME": str(rag_home.home),
                "RAG_TENANTS_FILE": str(rag_home.tenants_file),
                "RAG_DATA_DIR": str(rag_home.data_dir),
                "RAG_MODELS_DIR": str(rag_home.resolved_models_dir),
                "RAG_CELERY_BROKER_URL": broker,
            }
        )
        # the SQLite instance is created once, before four processes open it
        dagster_instance(rag_home).dispose()
        logs = tmp_path / "logs"
        workers = [CeleryWorker(logs, "alpha", env), CeleryWorker(logs, "beta", env)]
        try:
            for w in workers:
                w.start(timeout=120)
            runs = [
                Materialization(t, env, logs / f"materialize-{t}.log") for t in ("sci-a", "sci-b")
            ]
            summaries = {run.tenant: run.wait(timeout=600) for run in runs}
            orchestrator_pids = {run.proc.pid for run in runs}
        finally:
            for w in workers:
                w.stop(timeout=60)  # SIGTERM: warm shutdown
    hostnames = {w.hostname for w in workers}
    worker_pids = {w.pid_at_start for w in workers}
    assert [w.returncode for w in workers] == [0, 0], [w.log_tail() for w in workers]

    instance = dg.DagsterInstance.from_config(str(rag_home.dagster_home))
    store = MetadataStore.from_settings(rag_home)
    used: set[str] = set()
    try:
        for tenant, summary in summaries.items():
            assert summary["success"] and summary["published"], summary
            step_workers, start_pids = _step_workers(instance, str(summary["run_id"]))
            steps = {
                r.dagster_event.step_key
                for r in instance.all_logs(str(summary["run_id"]))
                if r.dagster_event is not None and r.dagster_event.event_type_value == "STEP_START"
            }
            # every step that ran was a Celery task on one of the two workers, in its process
            assert steps and set(step_workers) == steps, (steps, step_workers)
            assert set(step_workers.values()) <= hostnames
            assert start_pids <= worker_pids and not start_pids & orchestrator_pids
            assert set(summary["workers"]) == set(step_workers.values())
            used |= set(step_workers.values())

            published = store.get_published_version(tenant)
            assert published is not None and published.version == summary["index_version"]
            with EdgeIndexReader(Path(published.path)) as reader:
                assert len(list(reader.scroll())) == summary["chunks"] > 0
    finally:
        store.dispose()
        instance.dispose()
    assert used == hostnames, f"steps ran only on {used}"


@pytest.mark.integration
def test_sigterm_to_materialize_revokes_the_run_then_the_worker_stops_with_0(
    rag_home: Settings, write_tenants, tmp_path: Path
) -> None:
    """SIGTERM to the orchestrating ``materialize``: the run fails as interrupted, its queued
    steps are revoked, nothing is published; SIGTERM to the idle worker: exit status 0."""
    write_tenants(scifact_tenant("sci", limit=10))
    with flushed_redis(CELERY_TEST_DB) as broker:
        env = platform_env(
            {
                "RAG_HOME": str(rag_home.home),
                "RAG_TENANTS_FILE": str(rag_home.tenants_file),
                "RAG_DATA_DIR": str(rag_home.data_dir),
                "RAG_MODELS_DIR": str(rag_home.resolved_models_dir),
                "RAG_CELERY_BROKER_URL": broker,
            }
        )
        dagster_instance(rag_home).dispose()
        worker = CeleryWorker(tmp_path, "gamma", env)
        worker.start(timeout=120)
        try:
            log = tmp_path / "materialize.log"
            run = Materialization("sci", env, log)
            deadline = time.monotonic() + 180
            marker = 'Submitting celery task for step "parsed_documents"'
            while marker not in log.read_text(errors="replace"):
                assert run.proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            run.proc.send_signal(signal.SIGTERM)
            summary = run.wait(timeout=120)
            assert run.proc.returncode == 1
            assert summary["success"] is False and summary["published"] is False
            assert "revoking active tasks" in log.read_text(errors="replace")

            worker.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 120  # a step it had started finishes first
            while worker.running and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not worker.running, worker.log_tail()
        finally:
            worker.kill()
    assert worker.returncode == 0, worker.log_tail()
    store = MetadataStore.from_settings(rag_home)
    try:
        store.migrate()
        assert store.get_published_version("sci") is None
    finally:
        store.dispose()
