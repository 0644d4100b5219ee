"""Worker processes with a time budget per task, for the CPU-bound ingestion stages.

:class:`WorkerPool` runs one task per document in ``spawn`` worker processes (pebble's
``ProcessPool``): a task over its time budget has its worker killed (SIGTERM, then SIGKILL after
3 s) and reports a :class:`TaskFailure` of kind ``timeout``; a worker that dies on a task
(killed, out of memory, a crash in a C extension) reports one of kind ``died``. pebble starts a
fresh worker in either case, so one pathological document costs at most its budget on one core
and never stalls the run. Results arrive as they complete, in any order.

Each worker runs with one intra-op thread (:data:`WORKER_THREAD_ENV` in its environment from
the start, ``torch.set_num_threads(1)`` when torch is loaded): N workers use N cores, not N×N
threads.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, TimeoutError, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, TypeVar

import pebble

log = logging.getLogger(__name__)

#: Thread counts of the numerical libraries (OpenMP, OpenBLAS, MKL, BLIS), read when each is
#: loaded: set in the workers' environment before they start.
WORKER_THREAD_ENV: dict[str, str] = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "BLIS_NUM_THREADS": "1",
}

K = TypeVar("K")
R = TypeVar("R")

#: How often (seconds) a wait for results wakes up to check that the pool is still alive.
_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class TaskFailure:
    """A task that produced no result.

    Attributes:
        kind: ``timeout`` (over its budget, its worker was killed) or ``died`` (its worker
            process ended while running it, on every attempt).
        detail: what happened, e.g. ``exit code -9`` (a negative code is the signal).
    """

    kind: Literal["timeout", "died"]
    detail: str


def _init_worker(initializer: Callable[..., None] | None, initargs: tuple[object, ...]) -> None:
    """Runs the pool's initializer in a new worker, then pins torch to one intra-op thread."""
    if initializer is not None:
        initializer(*initargs)
    if "torch" in sys.modules:  # imported by the initializer (spaCy's thinc loads it)
        sys.modules["torch"].set_num_threads(1)


class WorkerPool:
    """A pool of ``spawn`` worker processes, used as a context manager around one stage run.

    Leaving the block normally waits for the workers to exit; leaving it on an exception (an
    interrupt: SIGTERM/SIGINT reach a Dagster step as an exception) drops the queued tasks and
    stops the workers at once. While the pool is open the process environment holds
    :data:`WORKER_THREAD_ENV` (inherited by every worker, also those started to replace a killed
    one); the previous values are restored on exit.

    Args:
        workers: worker processes (at least 1).
        initializer: run once in each new worker (e.g. to load a model), with ``initargs``;
            both must be picklable.
        initargs: arguments of ``initializer``.
    """

    def __init__(
        self,
        workers: int,
        initializer: Callable[..., None] | None = None,
        initargs: tuple[object, ...] = (),
    ) -> None:
        self.workers = max(1, workers)
        self.initializer = initializer
        self.initargs = initargs
        self._pool: pebble.ProcessPool | None = None
        self._saved_env: dict[str, str | None] = {}

    def __enter__(self) -> WorkerPool:
        self._saved_env = {name: os.environ.get(name) for name in WORKER_THREAD_ENV}
        os.environ.update(WORKER_THREAD_ENV)
        self._pool = pebble.ProcessPool(
            max_workers=self.workers,
            initializer=_init_worker,
            initargs=(self.initializer, self.initargs),
            context=mp.get_context("spawn"),
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool, self._pool = self._pool, None
        try:
            if pool is not None:
                if exc is None:
                    pool.close()
                else:  # interrupted or failed: nothing queued is wanted any more
                    pool.stop()
                pool.join()
        finally:
            for name, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def run(
        self,
        function: Callable[..., R],
        tasks: Iterable[tuple[K, tuple[object, ...]]],
        *,
        timeout: float,
        retries: int = 0,
    ) -> Iterator[tuple[K, R | TaskFailure]]:
        """Runs ``function(*args)`` for every ``(key, args)`` of ``tasks`` in the workers.

        Args:
            function: a module-level (picklable) function.
            tasks: ``(key, args)`` pairs; the key identifies the task in the results.
            timeout: most seconds one task may run (counted from when a worker takes it).
            retries: how many more times a task whose worker died is run, each time in a fresh
                worker, before it is reported as ``died``.

        Yields:
            ``(key, result)`` as each task completes, in completion order; the result is a
            :class:`TaskFailure` for a task over its time budget or whose worker died.

        Raises:
            BrokenProcessPool: the workers died outside any task (e.g. while starting), so no
                task can run.
            Exception: whatever ``function`` raised in the worker (re-raised here).
        """
        if self._pool is None:
            raise RuntimeError("WorkerPool.run outside its with block")
        pending: dict[Future[R], tuple[K, tuple[object, ...], int]] = {}
        future_order: dict[Future[R], int] = {}
        for key, args in tasks:
            future = self._schedule(function, args, timeout)
            pending[future] = (key, args, 0)
            future_order[future] = len(future_order)
        while pending:
            done, _ = wait(pending, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
            if not done and not self._pool.active:
                raise BrokenProcessPool("the worker pool stopped with tasks left")
            # Tasks that finished together are all reported before an error of one of them is
            # raised, so a caller caching results as they arrive keeps every finished one.
            error: BaseException | None = None
            for future in sorted(done, key=lambda f: future_order[f]):
                key, args, attempt = pending.pop(future)
                result: R | TaskFailure
                try:
                    result = future.result()
                except TimeoutError:
                    result = TaskFailure("timeout", f"over {timeout:g} s")
                except pebble.ProcessExpired as exc:
                    detail = f"exit code {exc.exitcode}"
                    if attempt < retries:
                        log.warning("worker process died (%s); retrying its task", detail)
                        retry = self._schedule(function, args, timeout)
                        pending[retry] = (key, args, attempt + 1)
                        future_order[retry] = future_order[future]
                        continue
                    result = TaskFailure("died", detail)
                except Exception as exc:  # raised by ``function`` in the worker
                    error = error or exc
                    continue
                yield key, result
            if error is not None:
                raise error

    def _schedule(
        self, function: Callable[..., R], args: tuple[object, ...], timeout: float
    ) -> Future[R]:
        assert self._pool is not None
        try:
            return self._pool.schedule(function, args=args, timeout=timeout)
        except RuntimeError as exc:  # pebble refuses new tasks once its workers broke
            raise BrokenProcessPool(f"the worker pool broke: {exc}") from exc
