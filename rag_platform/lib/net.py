"""Loopback helpers for HTTP servers started as subprocesses (the demo, benchmarks, tests)."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_http(
    url: str, proc: subprocess.Popen[Any], timeout: float, interval: float = 0.5
) -> None:
    """Polls ``url`` until it answers 200 while ``proc`` (the server) keeps running.

    Raises:
        RuntimeError: ``proc`` exited (the message names its exit code), or ``url`` did not
            answer 200 within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout:g} s")
        time.sleep(interval)
