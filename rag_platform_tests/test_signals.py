"""SIGTERM stops every entry point and its whole process tree, even when started with SIGINT
ignored (as ``cmd &`` from a script does), and ``serve`` finishes the request in flight.

Each command runs as ``bash -c 'trap "" INT; exec rag-platform ...'`` in a session of its own,
so "the whole tree is gone" means no live process is left in that session (children that
outlive their parent are re-parented, but keep the session).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from rag_platform.lib.net import free_port, wait_for_http
from rag_platform.settings import Settings
from rag_platform_tests.conftest import scifact_tenant
from rag_platform_tests.serving.factories import (
    bearer,
    make_settings,
    new_store,
    publish_tenant,
    scifact_docs,
)

CLI = str(Path(sys.executable).with_name("rag-platform"))
TENANT = "sig"


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields after "pid (comm) "


def session_pids(sid: int) -> set[int]:
    """Live (not zombie) processes of session ``sid``."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            # fields[0] is the state, fields[3] the session id
            if fields and fields[0] != "Z" and int(fields[3]) == sid:
                pids.add(int(entry.name))
    return pids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def poll(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.2)


@contextmanager
def started_with_sigint_ignored(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """Runs ``args`` the way a script's ``cmd &`` does (SIGINT ignored), in its own session."""
    proc = subprocess.Popen(
        ["bash", "-c", 'trap "" INT; exec "$@"', "bash", *args],
        env={**os.environ, **env},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if session_pids(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def assert_tree_gone_after_sigterm(proc: subprocess.Popen, timeout: float) -> None:
    assert len(session_pids(proc.pid)) >= 1
    proc.send_signal(signal.SIGTERM)
    poll(
        lambda: proc.poll() is not None and not session_pids(proc.pid),
        timeout,
        f"SIGTERM stops the process tree (left: {[cmdline(p) for p in session_pids(proc.pid)]})",
    )


def home_env(settings: Settings) -> dict[str, str]:
    return {
        "RAG_HOME": str(settings.home),
        "RAG_DATABASE_URL": settings.resolved_database_url,
        "RAG_TENANTS_FILE": str(settings.tenants_file),
        "RAG_KEY_PEPPER": settings.key_pepper,
        "RAG_MODELS_DIR": str(settings.resolved_models_dir),
    }


class HeldLLM:
    """An OpenAI-compatible endpoint on loopback that answers only when ``release`` is set, so
    a query is certainly in flight while the test signals the API."""

    def __init__(self) -> None:
        self.received = threading.Event()
        self.release = threading.Event()
        held = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                held.received.set()
                held.release.wait(120)
                body = json.dumps(
                    {
                        "choices": [{"message": {"content": "It is about aspirin [1]."}}],
                        "usage": {"prompt_tokens": 50, "completion_tokens": 7},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_serve_drains_the_request_in_flight_and_writes_its_query_log(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    store = new_store(settings)
    publish_tenant(store, settings, TENANT, "v1", scifact_docs(0, 10))
    _, key = store.create_api_key(TENANT, ["all"], name="signals", actor="test")
    llm = HeldLLM()
    port = free_port()
    env = {**home_env(settings), "RAG_LLM_BASE_URL": llm.url, "RAG_LLM_MODEL": "held"}
    try:
        with started_with_sigint_ignored([CLI, "serve", "--port", str(port)], env) as proc:
            base = f"http://127.0.0.1:{port}"
            wait_for_http(f"{base}/health/ready", proc, timeout=180)
            answer: dict[str, httpx.Response] = {}

            def ask() -> None:
                answer["r"] = httpx.post(
                    f"{base}/v1/query",
                    json={"query": "What does aspirin do?", "top_k": 3},
                    headers=bearer(key),
                    timeout=120,
                )

            asking = threading.Thread(target=ask)
            asking.start()
            assert llm.received.wait(60), "the query never reached the LLM"
            proc.send_signal(signal.SIGTERM)
            # the server stops listening while the query is still waiting for the LLM
            poll(lambda: refuses_connections(port), 30, "serve closes its listening socket")
            llm.release.set()
            asking.join(60)
            r = answer["r"]
            assert r.status_code == 200, r.text
            assert r.json()["answer"].startswith("It is about aspirin")
            poll(
                lambda: proc.poll() is not None and not session_pids(proc.pid),
                60,
                "serve exits after draining",
            )
        entry = store.get_query(r.json()["query_id"])
        assert entry is not None and entry.tenant == TENANT
    finally:
        llm.close()
        store.dispose()


def test_ui_stops_dagster_dev_and_its_servers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({"tenants": []}))
    env = {"RAG_HOME": str(home), "RAG_TENANTS_FILE": str(tenants)}
    port = free_port()
    with started_with_sigint_ignored([CLI, "ui", "--port", str(port)], env) as proc:
        wait_for_http(f"http://127.0.0.1:{port}/server_info", proc, timeout=240)
        query = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"

        def code_location_loaded() -> bool:
            r = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=10)
            entries = r.json()["data"]["workspaceOrError"]["locationEntries"]
            return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)

        poll(code_location_loaded, 240, "the rag_platform code location loads")
        # dagster dev, the webserver, the daemon and a code server
        assert len(session_pids(proc.pid)) >= 4
        assert_tree_gone_after_sigterm(proc, timeout=90)


@pytest.mark.slow
def test_materialize_stops_its_masking_workers_and_keeps_the_published_version(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "home", tenants_file=tmp_path / "tenants.yaml")
    store = new_store(settings)
    published = publish_tenant(store, settings, TENANT, "v1", scifact_docs(0, 10))
    # NER masking of 1,000 abstracts in 2 worker processes takes about two minutes: far longer
    # than the deadline below, which only a pool that stops at once meets
    tenant = scifact_tenant(TENANT, limit=1000, pii={"ner": True})
    settings.tenants_file.write_text(yaml.safe_dump({"tenants": [tenant]}))
    env = {**home_env(settings), "RAG_MASK_WORKERS": "2"}
    args = [CLI, "materialize", "--tenant", TENANT]
    try:
        with started_with_sigint_ignored(args, env) as proc:

            def masking_workers() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"materialize exited with {proc.returncode}")
                return any("spawn_main" in cmdline(p) for p in session_pids(proc.pid))

            poll(masking_workers, 300, "materialize starts its masking worker processes")
            assert_tree_gone_after_sigterm(proc, timeout=45)
        now = store.get_published_version(TENANT)
        assert now is not None and now.version == published.version == "v1"
        assert Path(now.path).is_dir()
        assert [v.version for v in store.list_versions(TENANT)] == ["v1"]
    finally:
        store.dispose()
