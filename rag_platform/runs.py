"""What a ``tenant_pipeline`` run of the Dagster instance is doing, read from its events.

Used by ``GET /v1/jobs/{job_id}`` (a job is the run of its batch, tag :data:`BATCH_TAG`) and by
the webhook sensors. Only the instance's run and event storage is read; the code location is
never loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import dagster as dg

#: Run tag carrying the batch id of the API jobs a run syncs.
BATCH_TAG = "rag/batch"
#: Status of an ingestion job.
JobStatus = Literal["queued", "running", "published", "failed"]

_QUEUED = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED}
_FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
_EVENTS = {
    dg.DagsterEventType.STEP_START,
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.ASSET_MATERIALIZATION,
    dg.DagsterEventType.ASSET_CHECK_EVALUATION,
    dg.DagsterEventType.RUN_FAILURE,
    dg.DagsterEventType.RUN_CANCELED,
}


@dataclass
class RunProgress:
    """One run's state.

    Attributes:
        run_id: the Dagster run id.
        tenant: its partition key.
        status: ``queued`` (in the run queue), ``running``, ``published`` (the run published
            ``index_version``, or found it unchanged and kept it published) or ``failed``.
        stage: the step running now, the step that failed, or ``published_index``.
        index_version: the version built (``search_index``'s ``version``), once known.
        error: why the run failed ("" otherwise).
        counts: integer metadata of each asset materialized so far, e.g.
            ``{"source_documents": {"documents": 31, "added": 1, ...}, "chunks": {...}}``.
    """

    run_id: str
    tenant: str
    status: JobStatus
    stage: str = ""
    index_version: str | None = None
    error: str = ""
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def _ints(metadata: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in metadata.items():
        raw = getattr(value, "value", value)
        if isinstance(raw, int) and not isinstance(raw, bool):
            out[key] = raw
    return out


def _root_cause(error: Any) -> str:
    """The innermost cause of a Dagster ``SerializableErrorInfo`` (the user code's exception,
    not Dagster's wrapper), as ``Type: message`` on one line."""
    if error is None:
        return "step failed"
    while getattr(error, "cause", None) is not None:
        error = error.cause
    message = " ".join(str(error.message).split())
    return message[:500] or str(getattr(error, "cls_name", "error"))


def run_progress(instance: dg.DagsterInstance, run: dg.DagsterRun) -> RunProgress:
    """Reads ``run``'s events into a :class:`RunProgress`.

    A run that ended successfully without materializing ``published_index`` (a blocking check
    failed, so publishing was skipped) is ``failed``, with the failed checks as the error.
    """
    tenant = run.tags.get("dagster/partition", "")
    progress = RunProgress(run.run_id, tenant, "queued")
    if run.status in _QUEUED:
        return progress
    started: list[str] = []
    finished: set[str] = set()
    failed_checks: list[str] = []
    failure = ""
    failed_step = ""
    for entry in instance.all_logs(run.run_id, of_type=_EVENTS):
        event = entry.dagster_event
        if event is None:
            continue
        kind = event.event_type
        step = event.step_key or ""
        if kind == dg.DagsterEventType.STEP_START:
            started.append(step)
        elif kind == dg.DagsterEventType.STEP_SUCCESS:
            finished.add(step)
        elif kind == dg.DagsterEventType.STEP_FAILURE:
            failed_step = failed_step or step
            failure = failure or _root_cause(getattr(event.event_specific_data, "error", None))
        elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION:
            mat = event.event_specific_data.materialization  # type: ignore[union-attr]
            name = mat.asset_key.to_user_string()
            progress.counts[name] = _ints(dict(mat.metadata or {}))
            if name == "search_index":
                version = getattr(mat.metadata.get("version"), "value", None)
                progress.index_version = str(version) if version else None
        elif kind == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            data = event.event_specific_data
            if isinstance(data, dg.AssetCheckEvaluation) and not data.passed:
                failed_checks.append(data.check_name)
        elif kind in (dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED):
            failure = failure or (entry.message or kind.value.lower())
    running = [s for s in started if s not in finished]
    if run.status in _FAILED:
        progress.status = "failed"
        progress.stage = failed_step or (running[-1] if running else "")
        progress.error = failure or f"run {run.status.value.lower()}"
    elif run.status == dg.DagsterRunStatus.SUCCESS:
        if "published_index" in progress.counts:
            progress.status, progress.stage = "published", "published_index"
        else:
            progress.status = "failed"
            progress.stage = "published_index"
            checks = ", ".join(failed_checks) or "none reported"
            progress.error = f"not published: blocking checks failed ({checks})"
    else:
        progress.status = "running"
        progress.stage = running[-1] if running else (started[-1] if started else "starting")
    return progress


def batch_run(instance: dg.DagsterInstance, batch_id: str) -> dg.DagsterRun | None:
    """The run requested for ``batch_id`` (newest if retried), or None before it exists."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={BATCH_TAG: batch_id}), limit=1)
    return runs[0] if runs else None
