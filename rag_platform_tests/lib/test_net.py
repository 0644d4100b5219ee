"""Loopback helpers against real subprocesses."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from rag_platform.lib.net import free_port, wait_for_http


def test_waits_for_a_real_server_and_reports_one_that_exits() -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", server, timeout=30, interval=0.1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    dying = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exited with 3"):
        wait_for_http(f"http://127.0.0.1:{free_port()}/", dying, timeout=30, interval=0.1)


def test_times_out_when_nothing_answers() -> None:
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(RuntimeError, match="did not answer 200"):
            wait_for_http(f"http://127.0.0.1:{free_port()}/", idle, timeout=0.5, interval=0.1)
    finally:
        idle.kill()
        idle.wait()


def test_a_server_spawned_from_a_shell_that_ignores_int_and_term_still_stops() -> None:
    # What a script's `cmd &` (SIGINT ignored) plus Dagster's SIGTERM-to-SIGINT mapping leave
    # behind: both ignored, and inherited through exec by every server spawned afterwards.
    code = (
        "import subprocess, sys\n"
        "from rag_platform.lib.net import free_port, wait_for_http\n"
        "from rag_platform.settings import configure_runtime_env\n"
        "configure_runtime_env()\n"
        "port = free_port()\n"
        "server = subprocess.Popen([sys.executable, '-m', 'http.server', str(port), '--bind',"
        " '127.0.0.1'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "wait_for_http(f'http://127.0.0.1:{port}/', server, timeout=30, interval=0.1)\n"
        "server.terminate()\n"
        "print(server.wait(timeout=30))\n"
    )
    out = subprocess.run(
        ["bash", "-c", 'trap "" INT TERM; exec "$1" -c "$0"', code, sys.executable],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(-signal.SIGTERM)
