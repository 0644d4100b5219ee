"""The webhook delivery log (``webhook_deliveries`` table): one row per event and URL, with
the outcome of the last attempt, the number of attempts and the receiver's status or error."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from rag_platform.lib.store.db import Database
from rag_platform.lib.store.rows import check_text, from_row
from rag_platform.lib.store.schema import DeliveryStatus, utcnow, webhook_deliveries_table
from rag_platform.lib.store.tenants import check_tenant

#: Longest error text kept per delivery (characters).
MAX_ERROR_CHARS = 1000


@dataclass
class WebhookDelivery:
    """One delivery (all its attempts) of an event to one URL.

    Attributes:
        id: row id (increasing).
        delivery_id: UUID4 string, also sent as ``X-RAG-Delivery``.
        tenant: the tenant the event is about.
        event: ``job.completed`` or ``index.published``.
        url: the receiver.
        run_id: the Dagster run the event comes from.
        status: ``delivered`` (a 2xx answer) or ``failed`` (every attempt failed).
        attempts: attempts made (1 or more).
        status_code: HTTP status of the last answer, None when no answer came.
        error: why the last attempt failed ("" when delivered).
        created_at: when the outcome was recorded (UTC).
    """

    id: int
    delivery_id: str
    tenant: str
    event: str
    url: str
    run_id: str
    status: DeliveryStatus
    attempts: int
    status_code: int | None
    error: str
    created_at: datetime


class WebhookDeliveryRepository:
    """The ``webhook_deliveries`` table.

    Args:
        db: The database handle.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(
        self,
        *,
        delivery_id: str,
        tenant: str,
        event: str,
        url: str,
        run_id: str,
        status: DeliveryStatus,
        attempts: int,
        status_code: int | None,
        error: str = "",
    ) -> None:
        """Appends the outcome of one delivery.

        Raises:
            ValueError: bad tenant id, empty event.
        """
        check_tenant(tenant)
        with self._db.transaction() as conn:
            conn.execute(
                webhook_deliveries_table.insert().values(
                    delivery_id=delivery_id,
                    tenant=tenant,
                    event=check_text(event, "event", 64),
                    url=url,
                    run_id=run_id[:64],
                    status=status,
                    attempts=attempts,
                    status_code=status_code,
                    error=error[:MAX_ERROR_CHARS],
                    created_at=utcnow(),
                )
            )

    def find(self, tenant: str, limit: int = 100) -> list[WebhookDelivery]:
        """The tenant's deliveries, newest first (at most ``limit``)."""
        check_tenant(tenant)
        stmt = (
            select(webhook_deliveries_table)
            .where(webhook_deliveries_table.c.tenant == tenant)
            .order_by(webhook_deliveries_table.c.id.desc())
            .limit(limit)
        )
        with self._db.transaction(write=False) as conn:
            return [from_row(WebhookDelivery, r) for r in conn.execute(stmt).mappings()]
