"""The whole platform on one machine, with its dependencies under the test's control.

:func:`fault_stack` starts a PostgreSQL and a Redis of its own (:mod:`.processes`), registers two
SciFact tenants, materializes them with ``rag-platform materialize`` (the real Dagster job, a
subprocess), creates API keys, and runs the query API under uvicorn against that PostgreSQL and
Redis. The fault-injection tests and ``benchmarks/faults.py`` stop, start and kill its parts.

The helpers below answer what a fault must not cause: hits of another tenant
(:func:`tenant_doc_ids`), and documents lost or chunks duplicated in a published shard
(:func:`audit_published`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from rag_platform.lib.index.edge import EdgeIndexReader
from rag_platform.lib.models import make_doc_id
from rag_platform.lib.store import IndexVersion, MetadataStore
from rag_platform.settings import Settings
from rag_platform_tests.conftest import DATA_DIR, SCIFACT, scifact_tenant
from rag_platform_tests.utils.processes import (
    POLL_SECONDS,
    ApiServer,
    DagsterRunWatcher,
    Materialization,
    PostgresProcess,
    RedisProcess,
    platform_env,
)

#: The stack's two tenants: the same SciFact abstracts, different document ids (uuid5 of the
#: tenant), so a hit of the wrong tenant is recognisable by its id.
TENANTS = ("alpha", "beta")
KEY_PEPPER = "faults-pepper"
#: Per-key limit: low enough that a test can exceed it with one key in seconds.
RATE_LIMIT_PER_KEY = 60
#: Keys per tenant the load spreads over, so the load itself stays under the per-key limit.
LOAD_KEYS_PER_TENANT = 150


@dataclass
class FaultStack:
    """The running stack.

    Attributes:
        root: its folder (RAG_HOME, tenants file, server folders and logs).
        pg: its PostgreSQL (the metadata store).
        redis: its Redis (query cache and rate limits).
        api: the query API.
        settings: settings for this process to read the same store (``store``).
        env: the environment ``rag-platform`` subprocesses of the stack run with.
        keys: tenant id → reader API keys for load.
        documents: tenant id → SciFact abstracts currently registered for it.
    """

    root: Path
    pg: PostgresProcess
    redis: RedisProcess
    api: ApiServer
    settings: Settings
    env: dict[str, str]
    store: MetadataStore
    keys: dict[str, list[str]] = field(default_factory=dict)
    documents: dict[str, int] = field(default_factory=dict)

    @property
    def tenants_file(self) -> Path:
        return self.root / "tenants.yaml"

    def write_tenants(self, documents: dict[str, int]) -> None:
        """Registers the tenants over the first ``documents[tenant]`` SciFact abstracts (the
        API re-reads the file within a second)."""
        self.documents = dict(documents)
        tenants = [scifact_tenant(t, limit=n) for t, n in sorted(documents.items())]
        self.tenants_file.write_text(yaml.safe_dump({"tenants": tenants}))

    def materialize(self, tenants: list[str], timeout: float = 900.0) -> list[dict[str, object]]:
        """Runs ``rag-platform materialize`` for each tenant to the end; the JSON summaries.

        Raises:
            RuntimeError: a run failed, timed out or printed no summary.
        """
        summaries = []
        for tenant in tenants:
            run = self.start_materialization(tenant)
            summary = run.wait(timeout)
            if not summary.get("success"):
                raise RuntimeError(f"materialize {tenant} failed: {summary}")
            summaries.append(summary)
        return summaries

    def start_materialization(self, tenant: str) -> Materialization:
        """Starts ``rag-platform materialize --tenant <tenant>`` without waiting for it."""
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        return Materialization(
            tenant, self.env, logs / f"materialize-{tenant}-{time.time_ns()}.log"
        )

    def published(self, tenant: str) -> IndexVersion | None:
        return self.store.get_published_version(tenant)

    def new_key(self, tenant: str, name: str = "") -> str:
        _, key = self.store.create_api_key(tenant, ["all"], name=name, actor="faults")
        return key

    def watcher(self) -> DagsterRunWatcher:
        """A reader of the stack's Dagster instance (close it after use)."""
        return DagsterRunWatcher(self.settings.dagster_home)


@contextmanager
def fault_stack(
    documents: dict[str, int] | None = None,
    root: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[FaultStack]:
    """Starts PostgreSQL, Redis, materializes the tenants, creates keys, starts the API.

    Args:
        documents: tenant id → SciFact abstracts to index; default 20 for each of
            :data:`TENANTS`.
        root: the stack's folder; default a new temporary one, removed afterwards.
        extra_env: more ``RAG_*`` settings for the API and the materializations.

    Yields:
        The running stack; everything is stopped on exit.
    """
    own_root = root is None
    root = Path(tempfile.mkdtemp(prefix="rag-faults-")) if root is None else root
    home = root / "rag_home"
    pg = PostgresProcess(root / "postgres")
    redis = RedisProcess(root / "redis")
    try:
        pg.start()
        redis.start()
        env = platform_env(
            {
                "RAG_HOME": str(home),
                "RAG_TENANTS_FILE": str(root / "tenants.yaml"),
                "RAG_DATA_DIR": str(DATA_DIR),
                "RAG_DATABASE_URL": pg.url,
                "RAG_REDIS_URL": redis.url,
                "RAG_KEY_PEPPER": KEY_PEPPER,
                "RAG_ENVIRONMENT": "test",
                "RAG_RATE_LIMIT_PER_KEY": f"{RATE_LIMIT_PER_KEY}/minute",
                "RAG_RATE_LIMIT_PER_TENANT": "1000000/minute",
                "DAGSTER_HOME": str(home / "dagster"),
                **(extra_env or {}),
            }
        )
        settings = Settings(
            home=home,
            tenants_file=root / "tenants.yaml",
            data_dir=DATA_DIR,
            database_url=pg.url,
            redis_url=None,
            key_pepper=KEY_PEPPER,
            environment="test",
        )
        store = MetadataStore.from_settings(settings)
        store.migrate()
        api = ApiServer(root / "api", env)
        stack = FaultStack(root, pg, redis, api, settings, env, store)
        stack.write_tenants(documents or dict.fromkeys(TENANTS, 20))
        try:
            stack.materialize(sorted(stack.documents))
            for tenant in stack.documents:
                stack.keys[tenant] = [
                    stack.new_key(tenant, f"load-{i}") for i in range(LOAD_KEYS_PER_TENANT)
                ]
            api.start()
            yield stack
        finally:
            api.stop()
            store.dispose()
    finally:
        redis.stop()
        pg.stop()
        if own_root:
            shutil.rmtree(root, ignore_errors=True)


def load_queries(limit: int = 200) -> list[str]:
    """The first ``limit`` SciFact query texts."""
    with (SCIFACT / "queries.jsonl").open() as f:
        return [json.loads(line)["text"] for _, line in zip(range(limit), f, strict=False)]


def tenant_doc_ids(tenant: str, limit: int | None = None) -> set[str]:
    """Document ids the tenant has over the first ``limit`` SciFact abstracts (all when None)."""
    ids: set[str] = set()
    with (SCIFACT / "corpus.jsonl").open() as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            ids.add(make_doc_id(tenant, "corpus", str(json.loads(line)["_id"])))
    return ids


@dataclass(frozen=True)
class ShardAudit:
    """What a published shard holds compared with the documents it should hold.

    Attributes:
        version: the published version.
        points: points in its shard.
        documents_lost: expected documents with no chunk in the shard.
        duplicate_chunks: points beyond the first with the same (doc id, ordinal) or chunk id.
        foreign_documents: documents in the shard that were not expected.
    """

    version: str
    points: int
    documents_lost: int
    duplicate_chunks: int
    foreign_documents: int


def audit_published(stack: FaultStack, tenant: str, expected_doc_ids: set[str]) -> ShardAudit:
    """Reads every point of the tenant's published shard (a copy: the API holds the shard
    open, and a shard opens in one process only) and compares it with ``expected_doc_ids``.

    Raises:
        AssertionError: nothing is published for the tenant.
    """
    version = stack.published(tenant)
    assert version is not None, f"nothing published for {tenant}"
    copy = Path(tempfile.mkdtemp(prefix="rag-audit-")) / version.version
    try:
        shutil.copytree(version.path, copy)
        with EdgeIndexReader(copy, hold_lock=False) as reader:
            payloads = [item[1] for item in reader.scroll() if isinstance(item, tuple)]
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)
    docs = {p["doc_id"] for p in payloads}
    by_position = {(p["doc_id"], p["ordinal"]) for p in payloads}
    by_chunk_id = {p["chunk_id"] for p in payloads}
    return ShardAudit(
        version=version.version,
        points=len(payloads),
        documents_lost=len(expected_doc_ids - docs),
        duplicate_chunks=len(payloads) - min(len(by_position), len(by_chunk_id)),
        foreign_documents=len(docs - expected_doc_ids),
    )


@dataclass(frozen=True)
class KilledRun:
    """A materialization SIGKILLed at a stage.

    Attributes:
        run_id: its Dagster run.
        returncode: its exit status (``-9``).
        started: steps that had started when it was killed.
        succeeded: steps that had succeeded when it was killed.
    """

    run_id: str
    returncode: int
    started: frozenset[str]
    succeeded: frozenset[str]


def kill_materialization_at(
    stack: FaultStack,
    tenant: str,
    step: str,
    marker: Callable[[], bool] | None = None,
    timeout: float = 600.0,
) -> KilledRun:
    """Starts ``rag-platform materialize --tenant <tenant>`` and SIGKILLs its process group once
    the Dagster event log shows ``step`` started (and ``marker()`` is true, when given).

    Raises:
        RuntimeError: the run ended, or ``step`` did not start, within ``timeout`` seconds.
    """
    watcher = stack.watcher()
    try:
        known = watcher.run_ids()
        run = stack.start_materialization(tenant)
        deadline = time.monotonic() + timeout
        run_id: str | None = None
        while True:
            if run.proc.poll() is not None:
                raise RuntimeError(f"the run ended before {step} started: {run.log_path}")
            if time.monotonic() > deadline:
                run.kill()
                raise RuntimeError(f"{step} did not start within {timeout:g} s")
            run_id = run_id or watcher.new_run_id(known)
            if run_id is not None and step in watcher.steps(run_id, "STEP_START"):
                break
            time.sleep(POLL_SECONDS)
        while marker is not None and not marker():
            if run.proc.poll() is not None or time.monotonic() > deadline:
                run.kill()
                raise RuntimeError(f"the marker of {step} never appeared: {run.log_path}")
            time.sleep(POLL_SECONDS / 5)
        returncode = run.kill()
        return KilledRun(
            run_id,
            returncode,
            frozenset(watcher.steps(run_id, "STEP_START")),
            frozenset(watcher.steps(run_id, "STEP_SUCCESS")),
        )
    finally:
        watcher.close()


def new_shard_marker(stack: FaultStack, tenant: str) -> Callable[[], bool]:
    """A marker for :func:`kill_materialization_at`: true once a shard directory that does not
    exist now appears under ``RAG_HOME/indexes/<tenant>/`` (the index build has begun)."""
    folder = stack.settings.index_dir / tenant
    before = {p.name for p in folder.iterdir()} if folder.is_dir() else set()

    def appeared() -> bool:
        return folder.is_dir() and any(
            p.is_dir() and p.name not in before for p in folder.iterdir()
        )

    return appeared


def wait_for_status(url: str, status: int, timeout: float = 60.0) -> httpx.Response:
    """Polls ``GET url`` until it answers ``status``; returns that response.

    Raises:
        TimeoutError: no such answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last: int | None = None
    while True:
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == status:
                return r
            last = r.status_code
        except httpx.HTTPError:
            last = -1
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer {status} within {timeout:g} s (last {last})")
        time.sleep(POLL_SECONDS)
