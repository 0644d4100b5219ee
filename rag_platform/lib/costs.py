"""Cost rollups: usage quantities priced by a price table, per tenant per day.

The default prices are *assumptions* (list prices of common hosted equivalents, USD, late 2024),
there to give an order of magnitude until a deployment supplies its own table as YAML:

- embedding: USD 0.02 per million tokens (OpenAI ``text-embedding-3-small`` list price), i.e.
  0.00002 per 1k tokens. The platform embeds locally; this prices what a hosted model would cost.
- compute: USD 0.048 per vCPU-hour (AWS EC2 ``m7i.large`` on-demand, us-east-1, USD 0.1008/h for
  2 vCPU, rounded), i.e. 0.0000134 per vCPU-second.
- storage: USD 0.023 per GB-month (AWS S3 Standard, first 50 TB), prorated per day over a
  30-day month; GB here is 2**30 bytes, as cloud storage bills it.
- LLM: USD 0.15 per million prompt tokens and 0.60 per million completion tokens (OpenAI
  ``gpt-4o-mini`` list price).
- queries: no flat per-query fee by default (their compute and LLM tokens have their own lines).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from rag_platform.lib.store import MetadataStore

#: A deployment's price table, looked for in RAG_HOME by :meth:`PriceTable.load`.
PRICES_FILE = "prices.yaml"
#: Bytes in one billed GB (binary gigabyte).
BYTES_PER_GB = 1024**3


class PriceTable(BaseModel):
    """USD prices per unit of usage (defaults are documented assumptions, see module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_per_1k_tokens: float = Field(
        default=0.00002, ge=0.0, description="USD per 1k embedded tokens."
    )
    compute_per_second: float = Field(
        default=0.048 / 3600, ge=0.0, description="USD per vCPU-second of pipeline or query work."
    )
    storage_per_gb_month: float = Field(
        default=0.023, ge=0.0, description="USD per GB-month of index and asset storage."
    )
    llm_prompt_per_1k_tokens: float = Field(
        default=0.00015, ge=0.0, description="USD per 1k prompt tokens."
    )
    llm_completion_per_1k_tokens: float = Field(
        default=0.0006, ge=0.0, description="USD per 1k completion tokens."
    )
    per_1k_queries: float = Field(
        default=0.0,
        ge=0.0,
        description="USD per 1k API queries (a flat fee, if the deployment charges one; query "
        "compute and LLM tokens are priced by their own lines).",
    )
    days_per_month: float = Field(
        default=30.0, gt=0.0, description="Days a monthly storage price spans."
    )

    @classmethod
    def load(cls, home: Path) -> PriceTable:
        """The deployment's price table: ``<home>/prices.yaml`` when that file exists, else the
        defaults.

        Args:
            home: ``RAG_HOME``.

        Raises:
            ValueError: as :meth:`from_yaml`.
        """
        candidate = home / PRICES_FILE
        return cls.from_yaml(candidate) if candidate.exists() else cls()

    @classmethod
    def from_yaml(cls, path: Path) -> PriceTable:
        """Defaults overridden by the keys of a YAML mapping (e.g. ``compute_per_second: 1e-5``).

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file is not a mapping, has an unknown key or a negative price.
        """
        path = Path(path)
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a price table must be a YAML mapping of price names")
        try:
            return cls(**data)
        except ValidationError as exc:
            raise ValueError(f"{path}: invalid price table: {exc}") from None


#: usage key → (unit shown, PriceTable field, quantity divisor turning usage into priced units).
USAGE_KINDS: dict[str, tuple[str, str, float]] = {
    "embedding_tokens": ("1k tokens", "embedding_per_1k_tokens", 1000.0),
    "compute_seconds": ("vCPU-second", "compute_per_second", 1.0),
    "storage_bytes": ("GB-day", "storage_per_gb_month", float(BYTES_PER_GB)),
    "llm_prompt_tokens": ("1k tokens", "llm_prompt_per_1k_tokens", 1000.0),
    "llm_completion_tokens": ("1k tokens", "llm_completion_per_1k_tokens", 1000.0),
    "queries": ("1k queries", "per_1k_queries", 1000.0),
}


def rollup_costs(usage: Mapping[str, float], prices: PriceTable) -> dict[str, Any]:
    """Price one tenant-day of usage.

    Args:
        usage: any of ``embedding_tokens``, ``compute_seconds``, ``storage_bytes`` (bytes held
            that day), ``llm_prompt_tokens``, ``llm_completion_tokens``, ``queries``; missing
            kinds count 0.
        prices: the price table.

    Returns:
        ``{"lines": [{"kind", "quantity", "unit", "unit_price_usd", "cost_usd"}, ...],
        "total_usd": float, "currency": "USD"}``, one line per kind in :data:`USAGE_KINDS`
        order. ``quantity`` is in ``unit`` (thousands of tokens, seconds, GB-days); the storage
        unit price is the GB-month price divided by ``days_per_month``.

    Raises:
        ValueError: an unknown usage kind, or a negative / non-finite quantity.
    """
    unknown = sorted(set(usage) - set(USAGE_KINDS))
    if unknown:
        raise ValueError(f"unknown usage kind(s) {unknown}; known: {sorted(USAGE_KINDS)}")
    lines: list[dict[str, Any]] = []
    total = 0.0
    for kind, (unit, price_field, divisor) in USAGE_KINDS.items():
        raw = float(usage.get(kind, 0.0))
        if not math.isfinite(raw) or raw < 0:
            raise ValueError(f"usage {kind} must be a finite number >= 0, got {raw}")
        quantity = raw / divisor
        unit_price = float(getattr(prices, price_field))
        if kind == "storage_bytes":
            unit_price /= prices.days_per_month
        cost = quantity * unit_price
        total += cost
        lines.append(
            {
                "kind": kind,
                "quantity": quantity,
                "unit": unit,
                "unit_price_usd": unit_price,
                "cost_usd": cost,
            }
        )
    return {"lines": lines, "total_usd": total, "currency": "USD"}


def tenant_day_rollup(
    store: MetadataStore, tenant: str, day: date, prices: PriceTable
) -> dict[str, Any]:
    """One tenant-day of usage from the metadata store, priced.

    Usage is what :meth:`MetadataStore.usage_by_day` reports, plus ``storage_bytes`` of the
    tenant's published index version as it is on disk now.

    Returns:
        ``{"tenant", "day", "usage", "lines", "total_usd", "currency"}``.
    """
    from rag_platform.lib.index.versions import directory_bytes

    usage = dict(store.usage_by_day(tenant, day))
    published = store.get_published_version(tenant)
    if published is not None and Path(published.path).exists():
        usage["storage_bytes"] = float(directory_bytes(Path(published.path)))
    return {
        "tenant": tenant,
        "day": day.isoformat(),
        "usage": usage,
        **rollup_costs(usage, prices),
    }
