"""Settlement files: the CSV export of a batch (header row, one line per transaction, trailer lines).

Trailer lines have ``record`` = ``trailer``: one per (currency, type) with the count and total, then one per
currency with type ``net`` (sales minus refunds, a void reversing what it voided) and the transaction count.

``net_minor`` is what each line does to the net, signed: a sale adds, a refund takes away, a void takes back what
it voided (``void_of`` names that transaction's uuid), so a void of a refund adds. On trailer lines it is the
signed total of that type, and the ``net`` trailer's equals the sum of every line's: the file reconciles from its
own lines.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from protocol.amounts import format_amount

COLUMNS = (
    "record", "batch", "merchant", "terminal", "sequence", "uuid", "type", "amount_minor", "amount", "currency",
    "scheme", "masked_pan", "auth_code", "auth_mode", "entry_mode", "reference", "created_at", "received_at",
    "count", "void_of", "net_minor", "terminal_batch",
)
# batch: head office's batch id (what `batches pull` takes); terminal_batch: the terminal's own batch number, as its
# settlement report prints it.


def _amount(minor: int, currency: str) -> str:
    try:
        return format_amount(minor, currency).split(" ")[0]
    except Exception:  # an unknown currency still exports, without the decimal rendering
        return str(minor)


# A cell a spreadsheet would read as a formula (OWASP "CSV injection"): text a terminal sent (reference, auth code,
# entry mode, scheme) is written with a leading apostrophe when it starts with one of these.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(value: str | None) -> str:
    if not value:
        return ""
    return "'" + value if value.startswith(_FORMULA_START) else value


def batch_csv(doc: dict[str, Any]) -> str:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")
    out.writerow(COLUMNS)
    per: dict[tuple[str, str], list[int]] = {}
    types = {txn["uuid"]: txn["type"] for txn in doc["transactions"]}
    merchant, terminal = _text(doc["merchant_id"]), _text(doc["terminal_id"])
    for txn in doc["transactions"]:
        effect = _net_effect(txn, types)
        out.writerow([
            "txn", doc["id"], merchant, terminal, txn["sequence"], txn["uuid"], txn["type"],
            txn["amount_minor"], _amount(txn["amount_minor"], txn["currency"]), txn["currency"], _text(txn["scheme"]),
            txn["masked_pan"] or "", _text(txn["auth_code"]), txn["auth_mode"] or "", _text(txn["entry_mode"]),
            _text(txn["reference"]), _text(txn["created_at"]), txn["received_at"], "", txn.get("void_of") or "",
            effect, doc["batch"],
        ])
        entry = per.setdefault((txn["currency"], txn["type"]), [0, 0, 0])
        entry[0] += 1
        entry[1] += txn["amount_minor"]
        entry[2] += effect
    net = doc["net_by_currency"]  # the terminal's own rule: a void reverses what it voided
    currencies = sorted({c for c, _t in per})
    for currency in currencies:
        count = 0
        for type_ in ("sale", "refund", "void"):
            n, a, effect = per.get((currency, type_), [0, 0, 0])
            if n:
                out.writerow(_trailer(doc, type_, a, currency, n, effect))
            count += n
        out.writerow(_trailer(doc, "net", net[currency], currency, count, net[currency]))
    if not currencies:
        out.writerow(_trailer(doc, "net", 0, "", 0, 0))
    return buf.getvalue()


def _net_effect(txn: dict[str, Any], types: dict[str, str]) -> int:
    amount = int(txn["amount_minor"])
    if txn["type"] == "sale":
        return amount
    if txn["type"] == "void":
        # A void is of a transaction of the same (open) batch; one whose target is not in it counts as a sale's.
        return amount if types.get(txn.get("void_of") or "") == "refund" else -amount
    return -amount


def _trailer(doc: dict[str, Any], type_: str, amount: int, currency: str, count: int, net_minor: int) -> list[Any]:
    return [
        "trailer", doc["id"], _text(doc["merchant_id"]), _text(doc["terminal_id"]), "", "", type_, amount,
        _amount(amount, currency) if currency else "0", currency, "", "", "", "", "", "", "", "", count, "",
        net_minor, doc["batch"],
    ]
