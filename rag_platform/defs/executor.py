"""The pipeline's executor: dagster-celery workers when ``RAG_CELERY_BROKER_URL`` is set, else
Dagster's default (steps in the launching process, or one process per step under ``dagster dev``).

The executor and the worker (``rag-platform worker``) build their Celery app from the same
settings through :func:`celery_app_args`, so both agree on the broker, the result backend and the
``dagster`` queue. Sources: dagster-celery's ``celery_executor`` and ``make_app``
(https://docs.dagster.io/integrations/libraries/celery).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import dagster as dg

from rag_platform.settings import Settings, get_settings

if TYPE_CHECKING:
    from celery import Celery

#: Celery settings both sides use, on top of dagster-celery's defaults (prefetch 1, queue
#: ``dagster``): retry the broker connection at start-up instead of exiting, and requeue a step
#: whose worker died mid-task (``acks_late`` + ``reject_on_worker_lost``) rather than lose it.
CELERY_CONFIG_SOURCE: dict[str, Any] = {
    "broker_connection_retry_on_startup": True,
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_hijack_root_logger": False,
}

#: Metadata key of the engine event a worker reports when it starts a step (dagster-celery).
WORKER_METADATA_KEY = "Celery worker"


def _env_or_value(name: str, value: str) -> str | dict[str, str]:
    """``{"env": name}`` when the process environment holds ``value`` under ``name``, so the URL
    (and a password in it) is read at launch instead of being kept in the job definition."""
    return {"env": name} if os.environ.get(name) == value else value


def celery_app_args(settings: Settings) -> dict[str, Any]:
    """The executor config shared by :func:`pipeline_executor` and :func:`worker_app`.

    Returns:
        ``{"broker", "backend", "config_source"}`` in dagster-celery's executor config schema.

    Raises:
        ValueError: ``RAG_CELERY_BROKER_URL`` is not set.
    """
    broker = settings.celery_broker_url
    backend = settings.resolved_celery_backend_url
    if broker is None or backend is None:
        raise ValueError("RAG_CELERY_BROKER_URL is not set: there is no Celery broker")
    backend_var = (
        "RAG_CELERY_BACKEND_URL" if settings.celery_backend_url else "RAG_CELERY_BROKER_URL"
    )
    return {
        "broker": _env_or_value("RAG_CELERY_BROKER_URL", broker),
        "backend": _env_or_value(backend_var, backend),
        "config_source": dict(CELERY_CONFIG_SOURCE),
    }


def pipeline_executor(settings: Settings | None = None) -> dg.ExecutorDefinition | None:
    """The celery executor configured from the settings, or None (Dagster's default executor)
    when no broker is set.

    Read when the definitions load: a code location (``dagster dev``, a run worker,
    ``rag-platform materialize``) started with ``RAG_CELERY_BROKER_URL`` sends every step of
    ``tenant_pipeline`` to the workers. The run's IO manager writes under ``RAG_HOME/storage``,
    so workers on other hosts need that folder (and the index folder) on shared storage.
    """
    settings = settings or get_settings()
    if settings.celery_broker_url is None:
        return None
    from dagster_celery import celery_executor

    return celery_executor.configured(celery_app_args(settings), name="celery")


def worker_app(settings: Settings) -> Celery:
    """The Celery app a ``rag-platform worker`` runs: dagster-celery's ``execute_plan`` task on
    the ``dagster`` queue, with the broker and backend of :func:`celery_app_args` resolved.

    Raises:
        ValueError: ``RAG_CELERY_BROKER_URL`` is not set.
    """
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    args = celery_app_args(settings)
    executor = CeleryExecutor.for_cli(
        broker=settings.celery_broker_url,
        backend=settings.resolved_celery_backend_url,
        config_source=args["config_source"],
    )
    app = make_app(executor.app_args())
    create_task(app)
    return app
