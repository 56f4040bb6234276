"""Settlement batches: one per (terminal, terminal batch number), opened by the first transaction head office
receives for it, closed when the terminal sends its totals.

Closing compares the terminal's totals per (type, scheme, currency) with what head office holds: ``balanced`` or
``out_of_balance`` with the differences and the sequence numbers head office has not received. A repeated close
(terminal retry, or after a late upload) evaluates again.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from headoffice.clock import as_utc, utcnow
from headoffice.errors import HQError
from headoffice.models import Batch, Terminal, Transaction
from offline_queue.totals import compute_totals

MAX_MISSING_LISTED = 1000


class TotalLine(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = Field(pattern="^(sale|refund|void)$")
    scheme: str | None = None
    currency: str = Field(pattern="^[A-Z]{3}$")
    count: StrictInt = Field(ge=0)
    amount_minor: StrictInt = Field(ge=0)


class CloseRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    totals: list[TotalLine]
    first_sequence: StrictInt | None = Field(default=None, ge=1, le=2**63 - 1)
    last_sequence: StrictInt | None = Field(default=None, ge=1, le=2**63 - 1)


def batch_id_for(session: Session, terminal: Terminal, batch_no: int) -> int:
    """Id of the terminal's batch ``batch_no``, creating it (open) if new. Safe against concurrent creation.

    Looked up first: on PostgreSQL an INSERT ... ON CONFLICT DO NOTHING takes a sequence value even when it inserts
    nothing, so inserting on every upload page left gaps in the batch ids staff see."""
    found = session.execute(
        select(Batch.id).where(Batch.terminal_id == terminal.id, Batch.batch_no == batch_no)
    ).scalar_one_or_none()
    if found is not None:
        return int(found)
    dialect = session.get_bind().dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Batch)
    session.execute(
        ins.values(terminal_id=terminal.id, merchant_id=terminal.merchant_id, batch_no=batch_no, status="open",
                   opened_at=utcnow()).on_conflict_do_nothing()
    )
    return session.execute(
        select(Batch.id).where(Batch.terminal_id == terminal.id, Batch.batch_no == batch_no)
    ).scalar_one()


# What the detail's nets are computed under for a transaction without a scheme (never a real scheme name).
_NO_SCHEME = "\x00no scheme"


def _key(type_: str, scheme: str | None, currency: str) -> tuple[str, str, str]:
    return (type_, scheme or "", currency)


def hq_totals(session: Session, batch_id: int) -> dict[tuple[str, str, str], tuple[int, int]]:
    rows = session.execute(
        select(Transaction.type, Transaction.scheme, Transaction.currency, func.count(),
               func.coalesce(func.sum(Transaction.amount_minor), 0))
        .where(Transaction.batch_id == batch_id, Transaction.status == "accepted")
        .group_by(Transaction.type, Transaction.scheme, Transaction.currency)
    ).all()
    # A missing scheme and an empty one are the same key: their groups add up (the last one used to win).
    totals: dict[tuple[str, str, str], tuple[int, int]] = {}
    for t, s, c, n, a in rows:
        key = _key(t, s, c)
        count, amount = totals.get(key, (0, 0))
        totals[key] = (count + int(n), amount + int(a))
    return totals


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
    batch.closed_at = utcnow()
    batch.terminal_totals = totals_list(terminal_side)
    first, last = request.first_sequence, request.last_sequence
    batch.first_sequence, batch.last_sequence = (first, last) if first and last and last >= first else (None, None)
    ours = reconcile(session, batch)
    return {
        "batch_id": batch.id, "terminal_id": terminal.id, "batch": batch_no, "status": batch.status,
        "differences": batch.differences, "missing_sequences": batch.missing, "hq_totals": totals_list(ours),
    }


def reconcile(session: Session, batch: Batch) -> dict[tuple[str, str, str], tuple[int, int]]:
    """Compare the totals the terminal closed ``batch`` with against what head office holds for it now, and set its
    status, differences and missing sequences (those of the closed range not received into this batch). Run at
    close and again whenever a transaction of a closed batch arrives later. Returns head office's totals."""
    terminal_side = {_key(t["type"], t["scheme"], t["currency"]): (t["count"], t["amount_minor"])
                     for t in batch.terminal_totals or []}
    ours = hq_totals(session, batch.id)
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
    if batch.first_sequence is not None and batch.last_sequence is not None:
        have = set(session.execute(
            select(Transaction.sequence).where(
                Transaction.batch_id == batch.id,
                Transaction.sequence.between(batch.first_sequence, batch.last_sequence),
            )
        ).scalars())
        for seq in range(batch.first_sequence, batch.last_sequence + 1):
            if seq not in have:
                missing.append(seq)
                if len(missing) >= MAX_MISSING_LISTED:
                    break
    batch.status = "balanced" if not differences and not missing else "out_of_balance"
    batch.differences = differences
    batch.missing = missing
    batch.updated_at = utcnow()
    session.flush()
    return ours


def reconcile_closed(session: Session, batch_ids: Iterable[int]) -> None:
    """``reconcile`` each of these batches that has been closed (a late upload into it changes the answer)."""
    for batch in session.execute(
        select(Batch).where(Batch.id.in_(list(batch_ids)), Batch.closed_at.is_not(None)).with_for_update()
    ).scalars():
        reconcile(session, batch)


def summary(batch: Batch) -> dict[str, Any]:
    return {
        "id": batch.id, "terminal_id": batch.terminal_id, "merchant_id": batch.merchant_id, "batch": batch.batch_no,
        "status": batch.status, "opened_at": _iso(batch.opened_at), "closed_at": _iso(batch.closed_at),
        "updated_at": _iso(batch.updated_at),
    }


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None


BATCH_STATUSES = ("open", "balanced", "out_of_balance")
MAX_LIST = 1000


def list_batches(session: Session, *, status: str | None = None, since: datetime | None = None,
                 terminal_id: str | None = None, after: int | None = None,
                 limit: int = MAX_LIST) -> list[dict[str, Any]]:
    """Batches in id order (the order they were opened), at most ``limit``, those with an id above ``after``: a
    caller pages with ``after`` = the last id it got. ``since``: changed at or after it (closed, or evaluated again
    since because a late transaction arrived; when open, opened), so a puller asking for what changed since its
    last pull also gets a batch that turned balanced after it; a time without an offset is UTC."""
    if status is not None and status not in BATCH_STATUSES:
        raise HQError(400, "invalid_status", f"status must be one of {', '.join(BATCH_STATUSES)}")
    query = select(Batch).order_by(Batch.id)
    if status:
        query = query.where(Batch.status == status)
    if since:
        # SQLite keeps these columns as UTC text without an offset: compare in UTC whatever offset was given.
        try:
            since_utc = as_utc(since).astimezone(UTC)
        except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00, past what a datetime holds once in UTC
            raise HQError(400, "invalid_since", "since is outside the dates head office can compare") from None
        query = query.where(func.coalesce(Batch.updated_at, Batch.closed_at, Batch.opened_at) >= since_utc)
    if terminal_id:
        query = query.where(Batch.terminal_id == terminal_id)
    if after is not None:
        query = query.where(Batch.id > after)
    rows = session.execute(query.limit(max(1, min(limit, MAX_LIST)))).scalars()
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
            "void_minor": 0, "net_minor": 0})
        entry["count"] += n
        entry[f"{type_}_minor"] += a
    # The net by the terminal's own rule (offline_queue.totals): a void reverses what it voided, so a void of a
    # refund adds to it and a void of a sale takes away; void_minor alone cannot tell them apart.
    # compute_totals would name a missing scheme "unknown", merging it with a scheme really called that: a sentinel
    # keeps the two apart (the keys of by_scheme_currency are scheme or "").
    computed = compute_totals({"uuid": t.uuid, "type": t.type, "scheme": t.scheme or _NO_SCHEME,
                               "currency": t.currency, "amount_minor": t.amount_minor, "void_of": t.void_of}
                              for t in txns)
    for line in computed["by_scheme"]:
        scheme = "" if line["scheme"] == _NO_SCHEME else line["scheme"]
        by_scheme_currency[(scheme, line["currency"])]["net_minor"] = line["net_amount_minor"]
    doc["totals"] = totals_list(totals)
    doc["totals_by_scheme_currency"] = [by_scheme_currency[k] for k in sorted(by_scheme_currency)]
    doc["net_by_currency"] = {line["currency"]: line["net_amount_minor"] for line in computed["by_currency"]}
    doc["terminal_totals"] = batch.terminal_totals
    doc["differences"] = batch.differences
    doc["missing_sequences"] = batch.missing
    doc["transactions"] = [transaction_doc(t) for t in txns]
    doc["count"] = len(txns)
    return doc
