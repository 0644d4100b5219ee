"""Tests of WorkerPool (real spawn worker processes): per-task time budgets, a worker killed
mid-task, a pool whose workers cannot start, thread limits and an interrupt."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from rag_platform.lib.ingestion.workers import WORKER_THREAD_ENV, TaskFailure, WorkerPool


def _poll(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


def _square(x: int) -> int:
    return x * x


def _spin(seconds: float) -> str:
    """Burns CPU for ``seconds`` (a task that is slow however idle the machine is)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "finished"


def _hold(folder: str) -> int:
    """Announces this worker's pid in ``folder`` and holds until ``folder/release`` exists."""
    Path(folder, str(os.getpid())).write_text("")
    deadline = time.monotonic() + 60
    while not Path(folder, "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return os.getpid()


def _thread_env() -> dict[str, str | None]:
    import torch

    return {
        **{k: os.environ.get(k) for k in WORKER_THREAD_ENV},
        "torch": str(torch.get_num_threads()),
    }


def _import_torch() -> None:
    import torch  # noqa: F401  (a worker that loads torch, as spaCy's thinc does)


def _die_at_start() -> None:
    os._exit(3)


def _announced(folder: Path) -> list[int]:
    return [int(p.name) for p in folder.iterdir() if p.name.isdigit()]


class TestWorkerPool:
    def test_results_arrive_as_they_complete_and_a_slow_task_times_out(self) -> None:
        tasks = [("slow", (_spin, 30.0)), *((f"n{i}", (_square, i)) for i in range(5))]
        with WorkerPool(2) as pool:
            started = time.monotonic()
            out = list(pool.run(_call, tasks, timeout=1.0))
            elapsed = time.monotonic() - started
        keys = [k for k, _ in out]
        assert sorted(keys) == sorted(k for k, _ in tasks)
        assert keys[-1] == "slow"  # the quick ones did not wait for it
        results = dict(out)
        assert results["slow"] == TaskFailure("timeout", "over 1 s")
        assert [results[f"n{i}"] for i in range(5)] == [0, 1, 4, 9, 16]
        assert elapsed < 20  # the slow task was stopped, not awaited

    def test_a_worker_killed_mid_task_is_retried_in_a_fresh_worker(self, tmp_path: Path) -> None:
        with WorkerPool(1) as pool:
            done = pool.run(_call, [("held", (_hold, str(tmp_path)))], timeout=60, retries=1)
            killed: list[int] = []

            def kill_then_release() -> bool:
                pids = _announced(tmp_path)
                if pids and not killed:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                if len(pids) == 2:
                    (tmp_path / "release").write_text("")
                    return True
                return False

            watcher = threading.Thread(
                target=_poll, args=(kill_then_release, 60, "the retry announces itself")
            )
            watcher.start()
            ((key, pid),) = list(done)
            watcher.join()
        assert key == "held" and pid != killed[0] and pid in _announced(tmp_path)

    def test_a_task_whose_worker_dies_on_every_attempt_is_reported(self, tmp_path: Path) -> None:
        tasks = [("held", (_hold, str(tmp_path))), *((f"n{i}", (_square, i)) for i in range(3))]
        with WorkerPool(2) as pool:
            done = pool.run(_call, tasks, timeout=60, retries=1)
            first = next(done)  # a quick task: the other worker holds
            killed: set[int] = set()

            def kill_each_holder() -> None:
                deadline = time.monotonic() + 60
                while len(killed) < 2 and time.monotonic() < deadline:
                    for pid in set(_announced(tmp_path)) - killed:
                        os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
                    time.sleep(0.02)

            killer = threading.Thread(target=kill_each_holder)
            killer.start()
            rest = dict([first, *done])
            killer.join()
        assert rest["held"] == TaskFailure("died", f"exit code {-signal.SIGKILL}")
        assert [rest[f"n{i}"] for i in range(3)] == [0, 1, 4]

    def test_workers_that_cannot_start_raise_broken_pool(self) -> None:
        with pytest.raises(BrokenProcessPool), WorkerPool(2, initializer=_die_at_start) as pool:
            list(pool.run(_square, [(0, (1,)), (1, (2,))], timeout=30))

    def test_workers_run_one_intra_op_thread_and_the_environment_is_restored(self) -> None:
        before = {k: os.environ.get(k) for k in WORKER_THREAD_ENV}
        with WorkerPool(1, initializer=_import_torch) as pool:
            ((_, seen),) = list(pool.run(_thread_env, [(0, ())], timeout=60))
        assert seen == {**WORKER_THREAD_ENV, "torch": "1"}
        assert {k: os.environ.get(k) for k in WORKER_THREAD_ENV} == before

    def test_an_interrupt_stops_the_workers_at_once(self) -> None:
        children_before = set(multiprocessing.active_children())
        started = time.monotonic()
        # SIGINT while the step waits for results, as Dagster delivers SIGTERM/SIGINT to a step
        interrupt = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
        interrupt.start()
        with pytest.raises(KeyboardInterrupt), WorkerPool(2) as pool:
            for _ in pool.run(_call, [(i, (_spin, 60.0)) for i in range(4)], timeout=120):
                pass  # never reached: the first result would take a minute
            raise AssertionError("unreachable")
        interrupt.join()
        assert time.monotonic() - started < 30
        left = set(multiprocessing.active_children()) - children_before
        assert not [p for p in left if p.is_alive()]


def _call(function: Callable[..., object], *args: object) -> object:
    return function(*args)
