"""End to end: ``rag-platform serve`` (uvicorn + the Dagster daemon it starts) on loopback; a
document uploaded through ``POST /v1/documents`` becomes searchable once its job reports
``published``, a ``DELETE`` makes it disappear, the tenant's webhook receiver gets signed
``job.completed`` and ``index.published`` events, and stopping ``serve`` stops the daemon."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from rag_platform.client import RagApiError, RagClient
from rag_platform.defs.partitions import TENANTS
from rag_platform.lib.store import MetadataStore
from rag_platform.runner import dagster_instance
from rag_platform.settings import Settings
from rag_platform_tests.conftest import scifact_tenant
from rag_platform_tests.utils.processes import PlatformServer, platform_env

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SECRET = "e2e-webhook-secret"
TEXT = (
    b"The zorblatt protocol requires quarterly flamingo audits of every warehouse.\n\n"
    b"Auditors record each flamingo's plumage colour in the zorblatt ledger."
)


class Receiver:
    """A webhook receiver on loopback that records each POST and checks its signature."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                if hmac.compare_digest(self.headers.get("X-RAG-Signature", ""), expected):
                    receiver.events.append(json.loads(body))
                    self.send_response(204)
                else:
                    receiver.bad_signatures += 1
                    self.send_response(401)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, event: str, run_id: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e["event"] == event and e["data"]["run_id"] == run_id:
                    return e
            time.sleep(0.5)
        raise AssertionError(f"no {event} for run {run_id}: {self.events}")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def _alive_daemon(pid: int) -> bool:
    return _state(pid) not in ("gone", "Z", "X") and "dagster-daemon" in _cmdline(pid)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_upload_search_delete_through_serve_and_its_daemon(
    tmp_path: Path, receiver: Receiver
) -> None:
    home = tmp_path / "home"
    tenants = tmp_path / "tenants.yaml"
    tenant = scifact_tenant("docs", limit=5)
    tenant["webhooks"] = [{"url": receiver.url, "secret_env": "E2E_HOOK_SECRET"}]
    tenants.write_text(yaml.safe_dump({"tenants": [tenant]}))
    values = {
        "RAG_HOME": str(home),
        "RAG_TENANTS_FILE": str(tenants),
        "RAG_KEY_PEPPER": "e2e-pepper",
        "RAG_MODELS_DIR": str(tmp_path / "models"),
    }
    settings = Settings(home=home, tenants_file=tenants, key_pepper="e2e-pepper")
    instance = dagster_instance(settings)
    instance.add_dynamic_partitions(TENANTS, ["docs"])  # no "new tenant" run from the sensor
    instance.dispose()
    os.environ.pop("DAGSTER_HOME", None)
    store = MetadataStore.from_settings(settings)
    store.migrate()
    writer = store.create_api_key("docs", ["all"], role="writer", actor="test")[1]
    admin = store.create_api_key("docs", ["all"], role="admin", actor="test")[1]
    store.dispose()

    env = platform_env({**values, "E2E_HOOK_SECRET": SECRET})
    serve = PlatformServer(tmp_path / "logs", env=env, startup_timeout=300)
    serve.start()
    try:
        daemons = [p for p in _children(serve.server_pid()) if "dagster-daemon" in _cmdline(p)]
        assert len(daemons) == 1, serve.log_tail()
        with RagClient(serve.url, writer, timeout=120) as rag:
            accepted = rag.upload("zorblatt.txt", content=TEXT, acl_groups=["all"])
            job = rag.wait(accepted.job_id, timeout=900)
            assert job.status == "published" and job.run_id and job.index_version
            assert job.counts["source_documents"]["documents"] == 6  # 5 abstracts + the upload
            hits = rag.search("zorblatt flamingo audits", top_k=3).hits
            assert hits and hits[0].doc_id == accepted.doc_id
            completed = receiver.wait_for("job.completed", job.run_id)
            assert completed["data"]["job_ids"] == [accepted.job_id]
            assert completed["data"]["status"] == "published"
            published = receiver.wait_for("index.published", job.run_id)
            assert published["data"]["index_version"] == job.index_version

            deleted = rag.wait(rag.delete(accepted.doc_id).job_id, timeout=900)
            assert deleted.status == "published"
            assert deleted.index_version != job.index_version
            after = rag.search("zorblatt flamingo audits", top_k=10).hits
            assert accepted.doc_id not in {h.doc_id for h in after}
            with pytest.raises(RagApiError) as exc:
                rag.delete(accepted.doc_id)
            assert exc.value.code == "document_not_found"
        with RagClient(serve.url, admin) as rag_admin:
            log = rag_admin._request("GET", "/v1/admin/webhook-deliveries").json()
        statuses = {(d["event"], d["status"]) for d in log["deliveries"]}
        assert ("job.completed", "delivered") in statuses
        assert ("index.published", "delivered") in statuses
        assert receiver.bad_signatures == 0
    finally:
        serve.stop(timeout=60)
    # the daemon stops with serve (serve waits for it; a zombie counts as stopped)
    deadline = time.monotonic() + 60
    while (alive := [p for p in daemons if _alive_daemon(p)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, [(p, _state(p), _cmdline(p)) for p in alive]
