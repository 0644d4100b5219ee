"""Webhook delivery against receivers on loopback (http.server): signatures verified by the
receiver, retries with backoff on 5xx and dropped connections, final 4xx, the delivery log."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rag_platform.lib.net import free_port
from rag_platform.lib.store import MetadataStore
from rag_platform.lib.tenants import TenantConfig
from rag_platform.lib.webhooks import WebhookSender, sign

SECRET = "s3cr3t"


class Receiver:
    """Answers the statuses in ``script`` in order (then 204); ``None`` drops the connection."""

    def __init__(self, script: list[int | None]) -> None:
        self.script = list(script)
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                status = receiver.script.pop(0) if receiver.script else 204
                if status is None:
                    self.connection.close()
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def verified(self) -> list[dict]:
        out = []
        for headers, body in self.received:
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["X-RAG-Signature"], expected)
            assert headers["X-RAG-Timestamp"].isdigit()
            out.append(json.loads(body))
        return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetadataStore]:
    s = MetadataStore(f"sqlite:///{tmp_path / 'meta.db'}", pepper="p")
    s.migrate()
    yield s
    s.dispose()


def _tenant(*urls: str, events: list[str] | None = None) -> TenantConfig:
    extra = {"events": events} if events else {}
    hooks = [{"url": u, "secret_env": "HOOK_SECRET", **extra} for u in urls]
    return TenantConfig.model_validate({"id": "acme", "webhooks": hooks})


def _sender(store: MetadataStore, env: dict[str, str] | None = None) -> WebhookSender:
    return WebhookSender(
        store.webhook_deliveries,
        attempts=3,
        backoff_seconds=0.05,
        max_backoff_seconds=0.2,
        timeout_seconds=5,
        environ={"HOOK_SECRET": SECRET} if env is None else env,
    )


def test_signed_delivery_is_logged(store: MetadataStore) -> None:
    r = Receiver([])
    try:
        [outcome] = _sender(store).send(_tenant(r.url), "job.completed", {"run_id": "r1"}, "r1")
    finally:
        r.server.shutdown()
    assert outcome.delivered and outcome.attempts == 1 and outcome.status_code == 204
    [body] = r.verified()
    assert body["event"] == "job.completed" and body["tenant"] == "acme"
    assert body["data"] == {"run_id": "r1"} and body["id"] == outcome.delivery_id
    [row] = store.webhook_deliveries.find("acme")
    assert (row.status, row.attempts, row.status_code, row.run_id) == ("delivered", 1, 204, "r1")


def test_server_errors_and_dropped_connections_are_retried(store: MetadataStore) -> None:
    r = Receiver([500, None])
    try:
        [outcome] = _sender(store).send(_tenant(r.url), "index.published", {"run_id": "r2"})
    finally:
        r.server.shutdown()
    assert outcome.delivered and outcome.attempts == 3
    bodies = r.verified()
    assert len(bodies) == 3 and len({b["id"] for b in bodies}) == 1  # the same delivery


def test_a_failing_receiver_is_retried_then_logged_as_failed(store: MetadataStore) -> None:
    r = Receiver([503, 503, 503, 503])
    try:
        [outcome] = _sender(store).send(_tenant(r.url), "job.completed", {"run_id": "r3"}, "r3")
    finally:
        r.server.shutdown()
    assert not outcome.delivered and outcome.attempts == 3 and len(r.received) == 3
    [row] = store.webhook_deliveries.find("acme")
    assert (row.status, row.attempts, row.status_code) == ("failed", 3, 503)
    assert "503" in row.error


def test_client_errors_are_final_and_unreachable_receivers_fail(store: MetadataStore) -> None:
    r = Receiver([400])
    dead = f"http://127.0.0.1:{free_port()}/hook"
    try:
        outcomes = _sender(store).send(_tenant(r.url, dead), "job.completed", {"run_id": "r4"})
    finally:
        r.server.shutdown()
    assert [(o.delivered, o.attempts, o.status_code) for o in outcomes] == [
        (False, 1, 400),
        (False, 3, None),
    ]
    assert "Connect" in outcomes[1].error
    assert {d.status for d in store.webhook_deliveries.find("acme")} == {"failed"}


def test_missing_secret_sends_nothing(store: MetadataStore) -> None:
    r = Receiver([])
    try:
        [outcome] = _sender(store, env={}).send(_tenant(r.url), "job.completed", {"run_id": "x"})
    finally:
        r.server.shutdown()
    assert not outcome.delivered and outcome.attempts == 0 and r.received == []
    assert "HOOK_SECRET" in store.webhook_deliveries.find("acme")[0].error


def test_unsubscribed_events_are_not_sent(store: MetadataStore) -> None:
    r = Receiver([])
    try:
        tenant = _tenant(r.url, events=["index.published"])
        assert _sender(store).send(tenant, "job.completed", {"run_id": "x"}) == []
    finally:
        r.server.shutdown()
    assert r.received == [] and store.webhook_deliveries.find("acme") == []


def test_sign_matches_the_documented_scheme() -> None:
    body = b'{"a": 1}'
    assert sign("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
