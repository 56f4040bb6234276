"""Settlement batches: one per (terminal, terminal batch number), opened by the first transaction head office
receives for it, closed when the terminal sends its totals.

Closing compares the terminal's totals per (type, scheme, currency) with what head office holds: ``balanced`` or
``out_of_balance`` with the differences and the sequence numbers head office has not received. A repeated close
(terminal retry, or after a late upload) evaluates again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from headoffice.clock import utcnow
from headoffice.errors import HQError
from headoffice.models import Batch, Terminal, Transaction

MAX_MISSING_LISTED = 1000


class TotalLine(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = Field(pattern="^(sale|refund|void)$")
    scheme: str | None = None
    currency: str = Field(pattern="^[A-Z]{3}$")
    count: int = Field(ge=0)
    amount_minor: int = Field(ge=0)


class CloseRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    totals: list[TotalLine]
    first_sequence: int | None = Field(default=None, ge=1)
    last_sequence: int | None = Field(default=None, ge=1)


def batch_id_for(session: Session, terminal: Terminal, batch_no: int) -> int:
    """Id of the terminal's batch ``batch_no``, creating it (open) if new. Safe against concurrent creation."""
    dialect = session.get_bind().dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Batch)
    session.execute(
        ins.values(terminal_id=terminal.id, merchant_id=terminal.merchant_id, batch_no=batch_no, status="open",
                   opened_at=utcnow()).on_conflict_do_nothing()
    )
    return session.execute(
        select(Batch.id).where(Batch.terminal_id == terminal.id, Batch.batch_no == batch_no)
    ).scalar_one()


def _key(type_: str, scheme: str | None, currency: str) -> tuple[str, str, str]:
    return (type_, scheme or "", currency)


def hq_totals(session: Session, batch_id: int) -> dict[tuple[str, str, str], tuple[int, int]]:
    rows = session.execute(
        select(Transaction.type, Transaction.scheme, Transaction.currency, func.count(),
               func.coalesce(func.sum(Transaction.amount_minor), 0))
        .where(Transaction.batch_id == batch_id, Transaction.status == "accepted")
        .group_by(Transaction.type, Transaction.scheme, Transaction.currency)
    ).all()
    return {_key(t, s, c): (int(n), int(a)) for t, s, c, n, a in rows}


def totals_list(totals: dict[tuple[str, str, str], tuple[int, int]]) -> list[dict[str, Any]]:
    return [
        {"type": t, "scheme": s or None, "currency": c, "count": n, "amount_minor": a}
        for (t, s, c), (n, a) in sorted(totals.items())
    ]


def close(session: Session, terminal: Terminal, batch_no: int, request: CloseRequest) -> dict[str, Any]:
    if batch_no < 1:
        raise HQError(400, "invalid_batch", "batch numbers start at 1")
    batch_id = batch_id_for(session, terminal, batch_no)
    batch = session.execute(select(Batch).where(Batch.id == batch_id).with_for_update()).scalar_one()
    terminal_side: dict[tuple[str, str, str], tuple[int, int]] = {}
    for line in request.totals:
        key = _key(line.type, line.scheme, line.currency)
        n, a = terminal_side.get(key, (0, 0))
        terminal_side[key] = (n + line.count, a + line.amount_minor)
    ours = hq_totals(session, batch_id)
    differences = []
    for key in sorted(set(terminal_side) | set(ours)):
        tn, ta = terminal_side.get(key, (0, 0))
        hn, ha = ours.get(key, (0, 0))
        if (tn, ta) != (hn, ha):
            differences.append({
                "type": key[0], "scheme": key[1] or None, "currency": key[2],
                "terminal_count": tn, "terminal_amount_minor": ta, "hq_count": hn, "hq_amount_minor": ha,
                "count_difference": tn - hn, "amount_difference_minor": ta - ha,
            })
    missing: list[int] = []
    if request.first_sequence and request.last_sequence and request.last_sequence >= request.first_sequence:
        have = set(session.execute(
            select(Transaction.sequence).where(
                Transaction.terminal_id == terminal.id,
                Transaction.sequence.between(request.first_sequence, request.last_sequence),
            )
        ).scalars())
        for seq in range(request.first_sequence, request.last_sequence + 1):
            if seq not in have:
                missing.append(seq)
                if len(missing) >= MAX_MISSING_LISTED:
                    break
    status = "balanced" if not differences and not missing else "out_of_balance"
    batch.status = status
    batch.closed_at = utcnow()
    batch.terminal_totals = totals_list(terminal_side)
    batch.differences = differences
    batch.missing = missing
    session.flush()
    return {
        "batch_id": batch.id, "terminal_id": terminal.id, "batch": batch_no, "status": status,
        "differences": differences, "missing_sequences": missing, "hq_totals": totals_list(ours),
    }


def summary(batch: Batch) -> dict[str, Any]:
    return {
        "id": batch.id, "terminal_id": batch.terminal_id, "merchant_id": batch.merchant_id, "batch": batch.batch_no,
        "status": batch.status, "opened_at": _iso(batch.opened_at), "closed_at": _iso(batch.closed_at),
    }


def _iso(value: datetime | None) -> str | None:
    from headoffice.clock import as_utc

    return as_utc(value).isoformat() if value else None


def list_batches(session: Session, *, status: str | None = None, since: datetime | None = None,
                 terminal_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    query = select(Batch).order_by(Batch.id)
    if status:
        query = query.where(Batch.status == status)
    if since:
        query = query.where(func.coalesce(Batch.closed_at, Batch.opened_at) >= since)
    if terminal_id:
        query = query.where(Batch.terminal_id == terminal_id)
    rows = session.execute(query.limit(limit)).scalars()
    out = []
    for batch in rows:
        doc = summary(batch)
        doc["totals"] = totals_list(hq_totals(session, batch.id))
        out.append(doc)
    return out


TXN_FIELDS = (
    "sequence", "uuid", "type", "amount_minor", "currency", "scheme", "masked_pan", "auth_code", "auth_mode",
    "auth_reason", "entry_mode", "aid", "label", "reference", "void_of", "created_at", "received_at",
)


def transaction_doc(txn: Transaction) -> dict[str, Any]:
    doc = {name: getattr(txn, name) for name in TXN_FIELDS}
    doc["received_at"] = _iso(txn.received_at)
    return doc


def get_batch(session: Session, batch_id: int) -> tuple[Batch, list[Transaction]]:
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise HQError(404, "unknown_batch", f"no batch {batch_id}")
    txns = list(session.execute(
        select(Transaction).where(Transaction.batch_id == batch_id, Transaction.status == "accepted")
        .order_by(Transaction.sequence)
    ).scalars())
    return batch, txns


def batch_doc(session: Session, batch_id: int) -> dict[str, Any]:
    batch, txns = get_batch(session, batch_id)
    doc = summary(batch)
    totals = hq_totals(session, batch_id)
    by_scheme_currency: dict[tuple[str, str], dict[str, Any]] = {}
    for (type_, scheme, currency), (n, a) in totals.items():
        entry = by_scheme_currency.setdefault((scheme, currency), {
            "scheme": scheme or None, "currency": currency, "count": 0, "sale_minor": 0, "refund_minor": 0,
            "void_minor": 0})
        entry["count"] += n
        entry[f"{type_}_minor"] += a
    doc["totals"] = totals_list(totals)
    doc["totals_by_scheme_currency"] = [by_scheme_currency[k] for k in sorted(by_scheme_currency)]
    doc["terminal_totals"] = batch.terminal_totals
    doc["differences"] = batch.differences
    doc["missing_sequences"] = batch.missing
    doc["transactions"] = [transaction_doc(t) for t in txns]
    doc["count"] = len(txns)
    return doc
