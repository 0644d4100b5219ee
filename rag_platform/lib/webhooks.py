"""Per-tenant webhooks: signed JSON events POSTed to the receivers of ``tenants.yaml``.

Each delivery is one POST of the body::

    {"id": "<delivery id>", "event": "job.completed", "tenant": "acme",
     "created_at": "2026-12-01T14:00:00+00:00", "data": {...}}

with the headers ``X-RAG-Event``, ``X-RAG-Delivery`` (the id), ``X-RAG-Timestamp`` (Unix
seconds) and ``X-RAG-Signature: sha256=<hex>``, the HMAC-SHA256 of the exact body bytes under
the secret read from the environment variable the webhook names (the scheme of GitHub's
``X-Hub-Signature-256``). The body carries ``created_at``, so the signature covers the time and a
receiver can refuse replays. A receiver verifies with::

    hmac.compare_digest(header, "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest())

Transport errors, 429 and 5xx answers are retried with exponential backoff (tenacity); another
4xx is final. Every delivery's outcome (status, attempts, last HTTP status, error) is written to
the delivery log (``webhook_deliveries``). A missing secret fails the delivery closed: nothing
unsigned is sent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from rag_platform.lib.store.webhook_deliveries import WebhookDeliveryRepository
from rag_platform.lib.tenants import TenantConfig, WebhookEvent

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-RAG-Signature"


def sign(secret: str, body: bytes) -> str:
    """The ``X-RAG-Signature`` value of ``body``: ``sha256=`` + hex HMAC-SHA256 under
    ``secret`` (UTF-8)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _Retryable(Exception):
    def __init__(self, message: str, status_code: int | None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass
class DeliveryOutcome:
    """One delivery's result (also written to the delivery log)."""

    delivery_id: str
    url: str
    delivered: bool
    attempts: int
    status_code: int | None
    error: str


class WebhookSender:
    """Delivers a tenant's events to its configured webhooks.

    Args:
        deliveries: the delivery log (``store.webhook_deliveries``).
        attempts: most attempts per delivery (default 5).
        backoff_seconds: first wait between attempts, doubled each time (default 0.5 s).
        max_backoff_seconds: longest wait between attempts (default 8 s).
        timeout_seconds: per-attempt HTTP timeout (default 10 s).
        environ: where secrets are read (default ``os.environ``).
    """

    def __init__(
        self,
        deliveries: WebhookDeliveryRepository,
        *,
        attempts: int = 5,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 8.0,
        timeout_seconds: float = 10.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.deliveries = deliveries
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.environ = os.environ if environ is None else environ

    def send(
        self, tenant: TenantConfig, event: WebhookEvent, data: dict[str, Any], run_id: str = ""
    ) -> list[DeliveryOutcome]:
        """Delivers ``event`` to every webhook of ``tenant`` subscribed to it.

        Never raises for a receiver's failure: each outcome is logged and returned.

        Returns:
            One outcome per subscribed webhook, in configuration order.
        """
        outcomes = []
        for hook in tenant.webhooks:
            if event not in hook.events:
                continue
            delivery_id = str(uuid.uuid4())
            secret = self.environ.get(hook.secret_env)
            if not secret:
                outcome = DeliveryOutcome(
                    delivery_id, hook.url, False, 0, None, f"secret {hook.secret_env} is not set"
                )
            else:
                body = json.dumps(
                    {
                        "id": delivery_id,
                        "event": event,
                        "tenant": tenant.id,
                        "created_at": datetime.now(UTC).isoformat(),
                        "data": data,
                    },
                    default=str,
                ).encode()
                outcome = self._deliver(hook.url, event, delivery_id, secret, body)
            self.deliveries.record(
                delivery_id=delivery_id,
                tenant=tenant.id,
                event=event,
                url=hook.url,
                run_id=run_id,
                status="delivered" if outcome.delivered else "failed",
                attempts=outcome.attempts,
                status_code=outcome.status_code,
                error=outcome.error,
            )
            if not outcome.delivered:
                log.warning(
                    "webhook %s to %s failed after %d attempt(s): %s",
                    event,
                    hook.url,
                    outcome.attempts,
                    outcome.error,
                )
            outcomes.append(outcome)
        return outcomes

    def _deliver(
        self, url: str, event: str, delivery_id: str, secret: str, body: bytes
    ) -> DeliveryOutcome:
        attempts = 0
        last_status: int | None = None

        def post(client: httpx.Client) -> httpx.Response:
            nonlocal attempts, last_status
            attempts += 1
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "rag-platform-webhooks",
                "X-RAG-Event": event,
                "X-RAG-Delivery": delivery_id,
                "X-RAG-Timestamp": str(int(time.time())),
                SIGNATURE_HEADER: sign(secret, body),
            }
            try:
                response = client.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:
                last_status = None
                raise _Retryable(f"{type(exc).__name__}: {exc}", None) from exc
            last_status = response.status_code
            if response.status_code == 429 or response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code}", response.status_code)
            return response

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(
                multiplier=self.backoff_seconds,
                min=self.backoff_seconds,
                max=self.max_backoff_seconds,
            ),
            retry=retry_if_exception_type(_Retryable),
        )
        try:
            with httpx.Client(timeout=self.timeout_seconds, follow_redirects=False) as client:
                response = retrying(post, client)
        except RetryError as exc:
            error = str(exc.last_attempt.exception())
            return DeliveryOutcome(delivery_id, url, False, attempts, last_status, error)
        if 200 <= response.status_code < 300:
            return DeliveryOutcome(delivery_id, url, True, attempts, response.status_code, "")
        return DeliveryOutcome(
            delivery_id, url, False, attempts, response.status_code, f"HTTP {response.status_code}"
        )
