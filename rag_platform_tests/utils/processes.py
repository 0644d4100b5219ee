"""Real server processes a test can stop, start and kill -9: PostgreSQL, Redis, the query API,
and ``rag-platform materialize`` runs.

Fault-injection tests (``rag_platform_tests/faults/``) and ``benchmarks/faults.py`` use these
instead of the machine's own PostgreSQL and Redis, which other tests share and which must never
be stopped. Every server listens on a free loopback port (:func:`rag_platform.lib.net.free_port`)
and lives in its own process session, so :meth:`ServerProcess.kill` SIGKILLs the whole group.

Usage::

    with PostgresProcess(tmp / "pg") as pg, RedisProcess(tmp / "redis") as redis:
        pg.stop()      # a clean (fast) shutdown; connections are refused until start()
        pg.start()     # same data directory, same port
        redis.kill()   # SIGKILL, no shutdown at all

As root, PostgreSQL runs as the ``postgres`` user (``runuser``); its folder is chowned to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from rag_platform.lib.net import free_port, wait_for_http
from rag_platform.settings import PROJECT_ROOT

#: PostgreSQL 15 server binaries (Debian's postgresql-15 package).
PG_BIN = Path("/usr/lib/postgresql/15/bin")
#: How often readiness and stage markers are polled, in seconds.
POLL_SECONDS = 0.05


class ServerProcess(ABC):
    """A server run as a subprocess in its own session, with ``start``/``stop``/``kill``.

    Subclasses give the command line (:meth:`command`), how to tell it is ready
    (:meth:`ready`) and, when the process Popen started is not the server itself (``runuser``),
    the server's pid (:meth:`server_pid`). Output goes to ``<workdir>/<name>.log``.

    Args:
        workdir: a folder of this server's own (created if missing; left in place).
        port: the TCP port on 127.0.0.1; default a free one.
        env: the process environment; default this process's.
    """

    name = "server"

    def __init__(
        self, workdir: Path, port: int | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.env = env
        self.log_path = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- subclass hooks ------------------------------------------------------------------------
    @abstractmethod
    def command(self) -> list[str]:
        """The command line that runs the server in the foreground."""

    @abstractmethod
    def ready(self) -> bool:
        """Whether the server answers (never raises)."""

    def prepare(self) -> None:  # noqa: B027 (optional hook: most servers need no set-up)
        """One-time set-up before the first start (e.g. ``initdb``)."""

    def server_pid(self) -> int:
        """The pid that gets the graceful-stop signal; default the process Popen started."""
        assert self._proc is not None
        return self._proc.pid

    stop_signal = signal.SIGTERM

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 120.0) -> None:
        """Starts the server and waits until :meth:`ready`.

        Raises:
            RuntimeError: the process exited, or was not ready within ``timeout`` seconds (the
                message ends with the log's tail).
        """
        if self.running:
            return
        self.prepare()
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self.command(),
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self._proc.returncode}: {self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready within {timeout:g} s: {self.log_tail()}")
            time.sleep(POLL_SECONDS)

    def stop(self, timeout: float = 60.0) -> None:
        """A graceful shutdown (``stop_signal`` to the server), SIGKILL after ``timeout``."""
        if not self.running:
            self._reap()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.server_pid(), self.stop_signal)
        assert self._proc is not None
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILLs the server's whole process group (no shutdown of any kind)."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
        if self._proc is None and self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop(timeout=30)
        finally:
            self.kill()


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """``cmd`` run as ``postgres`` when this process is root (PostgreSQL refuses root)."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PostgresProcess(ServerProcess):
    """A PostgreSQL 15 server of its own: trust auth, 127.0.0.1 only, ``fsync=off``.

    The cluster is created by ``initdb`` on first start in ``<workdir>/data``; ``stop()`` is a
    fast shutdown (SIGINT: open sessions are ended, clients see their connections closed) and
    ``start()`` brings the same cluster back on the same port. :attr:`url` is the SQLAlchemy URL
    of its ``postgres`` database.
    """

    name = "postgres"
    stop_signal = signal.SIGINT

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.data_dir = self.workdir / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=2"

    def prepare(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if os.geteuid() == 0:
            # postgres must reach its folder: let it traverse (not list) the parents, which
            # mkdtemp creates 0700
            for parent in self.workdir.parents:
                mode = parent.stat().st_mode
                if not mode & stat.S_IXOTH:
                    parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            shutil.chown(self.workdir, "postgres", "postgres")
        done = subprocess.run(
            _as_postgres_user(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            ),
            capture_output=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.decode(errors='replace')[-2000:]}")

    def command(self) -> list[str]:
        return _as_postgres_user(
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-k",
                str(self.workdir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=50",
            ]
        )

    def server_pid(self) -> int:
        # the postmaster, not runuser: its pid is the first line of postmaster.pid
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return super().server_pid()

    def ready(self) -> bool:
        try:
            import psycopg

            with psycopg.connect(self.dsn, autocommit=True) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except Exception:
            return False


class RedisProcess(ServerProcess):
    """A Redis server of its own without persistence (``--save '' --appendonly no``)."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]

    def ready(self) -> bool:
        try:
            import redis

            client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False


def platform_env(values: dict[str, str]) -> dict[str, str]:
    """This process's environment without its ``RAG_*`` and ``DAGSTER_HOME`` variables, plus
    ``values``, the checkout first on ``PYTHONPATH`` and the models offline: the environment
    of a ``rag-platform`` or API subprocess that must see only the state it is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_") and k != "DAGSTER_HOME"}
    path = os.environ.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), path) if p)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(values)
    return env


class ApiServer(ServerProcess):
    """The query API under uvicorn (``serving.main:create_app``, lifespan on) on a free port.

    Args:
        workdir: where its log goes.
        env: the ``RAG_*`` settings it runs with (see :func:`platform_env`).
        startup_timeout: seconds to wait for ``/health/ready`` to answer 200.
    """

    name = "api"

    def __init__(self, workdir: Path, env: dict[str, str], startup_timeout: float = 180.0) -> None:
        super().__init__(workdir, env=env)
        self.startup_timeout = startup_timeout

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "serving.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]

    def start(self, timeout: float | None = None) -> None:
        """Starts uvicorn and waits until ``/health/ready`` answers 200 (so every dependency
        is up when it returns)."""
        super().start(timeout or self.startup_timeout)
        assert self._proc is not None
        wait_for_http(f"{self.url}/health/ready", self._proc, timeout=self.startup_timeout)

    def ready(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/health/live", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


class CeleryWorker(ServerProcess):
    """``rag-platform worker --name <name>``: a dagster-celery worker on the broker of ``env``.

    Ready when it answers a Celery ``ping`` addressed to its hostname (``<name>@<host>``), so
    it consumes the ``dagster`` queue when :meth:`start` returns. :meth:`stop` sends SIGTERM,
    the worker's warm shutdown.

    Args:
        workdir: where its log goes (``<name>.log``).
        name: the worker name; distinct per worker.
        env: the ``RAG_*`` settings, with ``RAG_CELERY_BROKER_URL`` (see :func:`platform_env`).
    """

    def __init__(self, workdir: Path, name: str, env: dict[str, str]) -> None:
        self.name = name
        super().__init__(workdir, env=env)
        self.hostname = f"{name}@{socket.gethostname()}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "rag_platform.cli",
            "worker",
            "--name",
            self.name,
            "--loglevel",
            "INFO",
        ]

    #: The worker's pid from its last start (its ``solo`` pool runs every step in it).
    pid_at_start: int | None = None

    def start(self, timeout: float = 120.0) -> None:
        super().start(timeout)
        self.pid_at_start = self.server_pid()

    def send_signal(self, signum: int) -> None:
        """Sends ``signum`` to the worker process."""
        os.kill(self.server_pid(), signum)

    @property
    def returncode(self) -> int | None:
        """The exit status once it has stopped, None while it runs."""
        return self._last_returncode

    _last_returncode: int | None = None

    def ready(self) -> bool:
        from celery import Celery

        assert self.env is not None
        app = Celery(broker=self.env["RAG_CELERY_BROKER_URL"])
        try:
            replies = app.control.ping(destination=[self.hostname], timeout=1.0)
            return any(self.hostname in reply for reply in replies)
        except Exception:
            return False
        finally:
            app.close()

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._last_returncode = self._proc.returncode
        super()._reap()


class Materialization:
    """``rag-platform materialize --tenant <id>`` as a subprocess in its own session.

    Args:
        tenant: the tenant to materialize.
        env: the ``RAG_*`` settings (see :func:`platform_env`).
        log_path: where its output goes (the last line is the CLI's JSON summary).
    """

    def __init__(self, tenant: str, env: dict[str, str], log_path: Path) -> None:
        self.tenant = tenant
        self.env = env
        self.log_path = log_path
        cli = Path(sys.executable).with_name("rag-platform")
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(cli), "materialize", "--tenant", tenant],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> int:
        """SIGKILLs the run's whole process group; returns the exit status (``-9``)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait()

    def wait(self, timeout: float) -> dict[str, object]:
        """Waits for the run to end; returns the CLI's JSON summary.

        Raises:
            RuntimeError: the run did not end within ``timeout`` s (it is killed), or its last
                line is not a JSON summary (the message ends with its output).
        """
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise RuntimeError(f"materialize {self.tenant} took over {timeout:g} s") from exc
        out = self.log_path.read_text(errors="replace")
        for line in reversed(out.strip().splitlines()):
            if line.startswith("{"):
                summary: dict[str, object] = json.loads(line)
                return summary
        raise RuntimeError(
            f"materialize {self.tenant} exited {self.proc.returncode}: {out[-2000:]}"
        )


class DagsterRunWatcher:
    """Reads the step events of runs in a Dagster instance another process is writing.

    Args:
        dagster_home: the instance folder (``RAG_HOME/dagster``; its ``dagster.yaml`` must exist).
    """

    def __init__(self, dagster_home: Path) -> None:
        import dagster as dg

        self.instance = dg.DagsterInstance.from_config(str(dagster_home))

    def run_ids(self) -> set[str]:
        """Ids of every run the instance has recorded."""
        return {r.run_id for r in self.instance.get_runs()}

    def new_run_id(self, known: set[str]) -> str | None:
        """The id of a run not in ``known``, or None when there is none yet."""
        fresh = self.run_ids() - known
        return next(iter(fresh)) if fresh else None

    def steps(self, run_id: str, event: str) -> set[str]:
        """Step keys of ``run_id`` with an event of type ``event`` (``STEP_START``,
        ``STEP_SUCCESS``...)."""
        out: set[str] = set()
        for record in self.instance.all_logs(run_id):
            dagster_event = record.dagster_event
            if (
                dagster_event is not None
                and dagster_event.event_type_value == event
                and dagster_event.step_key
            ):
                out.add(dagster_event.step_key)
        return out

    def close(self) -> None:
        self.instance.dispose()


class MotoServer(ServerProcess):
    """moto's standalone S3-compatible server (``moto[server]``) on a loopback port: a real HTTP
    server speaking the S3 API, state in memory (gone when it stops)."""

    name = "moto"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def ready(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/moto-api/", timeout=1.0).status_code < 500
        except httpx.HTTPError:
            return False

    def client(self) -> object:
        """A boto3 S3 client for this server (test credentials)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


class PlatformServer(ApiServer):
    """``rag-platform serve`` (the API and the Dagster daemon it starts) instead of bare
    uvicorn; stopping it stops the daemon too."""

    name = "serve"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "rag_platform.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
