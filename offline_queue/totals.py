"""Batch totals from wire rows: one pure function that the terminal and head office both use, so "balanced"
means the same computation on both sides."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_COUNTERS = (
    "sale_count",
    "sale_amount_minor",
    "refund_count",
    "refund_amount_minor",
    "void_count",
    "void_amount_minor",
    "net_amount_minor",
)


def _empty() -> dict[str, int]:
    return dict.fromkeys(_COUNTERS, 0)


def compute_totals(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Rows need ``uuid, type, scheme, currency, amount_minor, void_of``. A void reverses what it voids in the net:
    net = sales - refunds - voided sales + voided refunds. A void whose target is not among ``rows`` is taken to
    void a sale (voids are only allowed inside the open batch, so the target is normally present)."""
    rows = list(rows)
    type_of = {row["uuid"]: row["type"] for row in rows}
    by_scheme: dict[tuple[str, str], dict[str, int]] = {}
    by_currency: dict[str, dict[str, int]] = {}
    for row in rows:
        kind = row["type"]
        amount = int(row["amount_minor"])
        if kind == "sale":
            net = amount
        elif kind == "refund":
            net = -amount
        elif kind == "void":
            net = amount if type_of.get(row.get("void_of")) == "refund" else -amount
        else:
            raise ValueError(f"unknown transaction type {kind!r}")
        key = (row.get("scheme") or "unknown", row["currency"])
        for bucket in (by_scheme.setdefault(key, _empty()), by_currency.setdefault(row["currency"], _empty())):
            bucket[f"{kind}_count"] += 1
            bucket[f"{kind}_amount_minor"] += amount
            bucket["net_amount_minor"] += net
    return {
        "count": len(rows),
        "by_scheme": [{"scheme": s, "currency": c, **v} for (s, c), v in sorted(by_scheme.items())],
        "by_currency": [{"currency": c, **v} for c, v in sorted(by_currency.items())],
    }
