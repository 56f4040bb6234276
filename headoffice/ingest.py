"""Ingestion of a terminal's uploaded transactions: idempotent on (terminal, sequence), chain-verified.

The terminal's row is locked for the whole page (``SELECT ... FOR UPDATE``; SQLite holds the write lock), so pages
of one terminal are applied one after the other even across ``serve`` processes. The row carries the chain head
(last sequence + hash) head office has verified; a page must continue exactly from it.

Per transaction, in sequence order:
- sequence at or below the head: a replay. Same hash -> its stored answer again (nothing stored twice);
  different hash -> ``rejected: conflict`` (nothing stored).
- sequence = head + 1: the hash must recompute from the previous hash and the fields (``protocol.chain``), else
  ``rejected: chain_broken`` and the rest of the page is not looked at. Then the content is checked and the
  envelope opened; a transaction that fails those checks is kept as a ``rejected`` row (without card data) so the
  chain stays continuous and the terminal can dead-letter it and go on.
- sequence above head + 1: ``rejected: gap`` (head office expects head + 1), rest of the page too.

Two steps: ``prepare_page`` does the per-row CPU work (hashes, checks, envelope opening) without the lock or any
database access; ``apply_page`` then decides against the chain head under the lock and writes.
"""

from __future__ import annotations

import re
import uuid as uuid_mod
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import BigInteger, Boolean, DateTime, Integer, LargeBinary, String, func, insert, select
from sqlalchemy.orm import Session

from headoffice import batches as batch_service
from headoffice.cardfields import card_matches, is_masked, open_card
from headoffice.clock import utcnow
from headoffice.errors import HQError
from headoffice.keystore import Keystore
from headoffice.models import Batch, Terminal, Transaction
from protocol.amounts import validate_amount, validate_currency
from protocol.carddata import redact
from protocol.chain import GENESIS, row_error
from protocol.errors import ValidationError

MAX_PAGE = 5000


class UploadRequest(BaseModel):
    """A page of transactions in sequence order, each exactly as the terminal chained it (``protocol.chain``)."""

    model_config = ConfigDict(extra="forbid")
    transactions: list[dict[str, Any]] = Field(max_length=MAX_PAGE)


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _result(sequence: Any, status: str, reason: str | None = None, duplicate: bool = False) -> dict[str, Any]:
    return {"sequence": sequence, "status": status, "reason": reason, "duplicate": duplicate}


class Ahead(Exception):
    """The page starts beyond the chain head: an earlier page of the same terminal is probably still being
    applied by another request (pipelined uploads). The caller may wait briefly and apply again."""


@dataclass
class PreparedRow:
    sequence: int
    hash: Any
    prev_hash: Any
    chain_error: str | None  # None: the row hashes correctly from its own prev_hash and names this terminal
    row: dict[str, Any] | None
    status: str
    reason: str | None
    values: tuple[Any, ...] | None = None  # ``row`` in _ROW_COLUMNS order, for COPY


def _sequences(payload: Any) -> tuple[list[dict[str, Any]], list[int]]:
    if not isinstance(payload, dict) or not isinstance(payload.get("transactions"), list):
        raise HQError(400, "invalid_page", 'body must be {"transactions": [...]}')
    wires = payload["transactions"]
    if len(wires) > MAX_PAGE:
        raise HQError(413, "page_too_large", f"at most {MAX_PAGE} transactions per page")
    sequences = []
    for wire in wires:
        seq = wire.get("sequence") if isinstance(wire, dict) else None
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise HQError(400, "invalid_page", "every transaction needs an integer sequence >= 1")
        sequences.append(seq)
    if sequences != sorted(sequences) or len(set(sequences)) != len(sequences):
        raise HQError(400, "invalid_page", "transactions must be in strictly increasing sequence order")
    return wires, sequences


def prepare_page(payload: Any, terminal_id: str, keystore: Keystore, *, known_head: int = 0) -> list[PreparedRow]:
    """Everything per row that needs no database: structure, each row's own hash, content checks, envelope
    opening and re-encryption. Runs before the terminal's lock is taken, so pipelined pages of one terminal
    (and pages of different terminals in other workers) do this CPU work in parallel.

    ``known_head``: a chain head of the terminal read earlier (heads only grow). Rows at or below it are replays,
    which ``apply_page`` answers from what is stored by comparing hashes: only their hash is checked here, their
    envelopes are not opened again."""
    wires, sequences = _sequences(payload)
    prepared = []
    append = prepared.append
    for wire, seq in zip(wires, sequences, strict=True):
        error = row_error(wire)
        if error is None and wire["terminal_id"] != terminal_id:
            error = "terminal_id"
        row, status, reason, values = None, "rejected", None, None
        if error is None and seq > known_head:
            try:
                row, status = _accepted_row(terminal_id, wire, keystore), "accepted"
            except _Rejected as exc:
                row, status, reason = _rejected_row(wire, exc.reason), "rejected", exc.reason
            values = _ROW_VALUES(row)
        append(PreparedRow(seq, wire.get("hash"), wire.get("prev_hash"), error, row, status, reason, values))
    return prepared


def ingest_page(session: Session, terminal: Terminal, payload: Any, keystore: Keystore) -> dict[str, Any]:
    """Prepare and apply in one go (the terminal row must already be locked by the caller)."""
    return apply_page(session, terminal, prepare_page(payload, terminal.id, keystore))


def apply_page(session: Session, terminal: Terminal, prepared: list[PreparedRow], *,
               wait_ahead: bool = False) -> dict[str, Any]:
    """Continue the terminal's chain with ``prepared`` (its row is locked by the caller). With ``wait_ahead``,
    raises ``Ahead`` instead of answering "gap" when the page starts beyond the head."""
    head_seq = terminal.head_sequence
    head_hash = terminal.head_hash
    if wait_ahead and prepared and all(p.sequence > head_seq + 1 for p in prepared):
        raise Ahead()
    results: list[dict[str, Any]] = []
    stored: dict[int, tuple[str, str, str | None, str]] = {}
    replayed = [p.sequence for p in prepared if p.sequence <= head_seq]
    if replayed:
        stored = {
            seq: (h, st, why, prev)
            for seq, h, st, why, prev in session.execute(
                select(Transaction.sequence, Transaction.chain_hash, Transaction.status, Transaction.reject_reason,
                       Transaction.prev_hash)
                .where(Transaction.terminal_id == terminal.id,
                       Transaction.sequence.between(replayed[0], replayed[-1]))
            )
        }

    rows: list[tuple[PreparedRow, int]] = []
    batch_ids: dict[int, int] = {}
    rejected_batches: set[int] = set()  # batches that only rejected rows of this page went into
    terminal_id = terminal.id
    now = utcnow()
    stop_reason: str | None = None
    for p in prepared:
        seq = p.sequence
        if stop_reason:
            results.append(_result(seq, "rejected", stop_reason))
            continue
        if seq <= head_seq:
            previous = stored.get(seq)
            if previous is None:
                # Below the head but never stored cannot happen unless rows were deleted by hand.
                results.append(_result(seq, "rejected", "unknown_history"))
            elif previous[0] != p.hash or p.chain_error is not None or p.prev_hash != previous[3]:
                # Same sequence, different content (or same hash over changed fields): a forgery or a bug.
                results.append(_result(seq, "rejected", "conflict"))
            else:
                results.append(_result(seq, previous[1], previous[2], duplicate=True))
            continue
        if seq != head_seq + 1:
            stop_reason = f"gap: head office expects sequence {head_seq + 1}"
            results.append(_result(seq, "rejected", stop_reason))
            continue
        if p.chain_error is not None:
            stop_reason = f"chain_broken: {p.chain_error}"
            results.append(_result(seq, "rejected", stop_reason))
            continue
        if p.prev_hash != (head_hash or GENESIS):
            stop_reason = "chain_broken: bad_link"
            results.append(_result(seq, "rejected", stop_reason))
            continue
        if p.row is None:
            # Prepared as a replay, yet above the head: the head moved back since the page was authenticated (rows
            # removed by hand). Nothing of the page is kept; the terminal retries it as it retries any 5xx.
            raise HQError(503, "retry", "head office's chain head moved back while the page was prepared; send again")
        batch_no = p.row["batch_no"]
        batch_id = batch_ids.get(batch_no)
        if batch_id is None and p.status == "accepted":
            batch_id = batch_ids[batch_no] = batch_service.batch_id_for(session, terminal, batch_no)
        elif batch_id is None:
            batch_id, number = _batch_for_rejected(session, terminal, batch_no, rows[-1][1] if rows else None,
                                                   head_seq)
            rejected_batches.add(batch_id)
            if number != batch_no:  # stored with the batch it is kept in, not the number it claimed
                row = {**p.row, "batch_no": number}
                p = PreparedRow(p.sequence, p.hash, p.prev_hash, p.chain_error, row, p.status, p.reason,
                                _ROW_VALUES(row))
        rows.append((p, batch_id))
        results.append({"sequence": seq, "status": p.status, "reason": p.reason, "duplicate": False})
        head_seq, head_hash = seq, p.hash

    if any(p.status == "accepted" and p.row["type"] == "void" for p, _b in rows):  # type: ignore[index]
        rows = _check_voids(session, rows, results)
    if rows:
        _insert(session, terminal, rows, now)
        terminal.head_sequence = head_seq
        terminal.head_hash = head_hash
        # A late row, accepted or rejected, changes what a closed batch is missing.
        batch_service.reconcile_closed(session, set(batch_ids.values()) | rejected_batches)
    session.flush()
    accepted = sum(1 for r in results if r["status"] == "accepted")
    return {
        "terminal_id": terminal_id,
        "head_sequence": head_seq,
        "accepted": accepted,
        "rejected": len(results) - accepted,
        "results": results,
    }


def _batch_for_rejected(session: Session, terminal: Terminal, batch_no: int, before: int | None,
                        head_seq: int) -> tuple[int, int]:
    """The batch a rejected row is kept in. Its fields are not trusted, its batch number included: it joins the
    batch of that number if head office has it, opens it only if it is the terminal's next batch, and otherwise stays
    in the batch of the row before it in the chain. (A malformed number used to open a batch 0, and any number a
    batch that staff saw open for ever and that moved the batch a replaced terminal continues from.) Returns the
    batch's id and number; the row is stored with that number."""
    found = session.execute(
        select(Batch.id).where(Batch.terminal_id == terminal.id, Batch.batch_no == batch_no)).scalar_one_or_none()
    if found is not None:
        return int(found), batch_no
    highest = int(session.execute(
        select(func.max(Batch.batch_no)).where(Batch.terminal_id == terminal.id)).scalar() or 0)
    if before is None and head_seq:
        before = session.execute(select(Transaction.batch_id).where(
            Transaction.terminal_id == terminal.id, Transaction.sequence == head_seq)).scalar_one_or_none()
    if before is not None and batch_no != highest + 1:
        number = session.execute(select(Batch.batch_no).where(Batch.id == before)).scalar_one()
        return int(before), int(number)
    return batch_service.batch_id_for(session, terminal, highest + 1), highest + 1


def _check_voids(session: Session, rows: list[tuple[PreparedRow, int]],
                 results: list[dict[str, Any]]) -> list[tuple[PreparedRow, int]]:
    """A void must reverse an accepted sale or refund of the same batch (the open batch on the terminal), with the
    same amount and currency, that no other void has reversed: the terminal checks this too, and head office does
    not take its word for it. A void that fails is stored rejected (its chain position kept), like any row whose
    content fails. Targets are looked up among the batch's stored rows and the page's rows before the void."""
    by_batch: dict[int, set[str]] = {}
    for p, batch_id in rows:
        if p.status == "accepted" and p.row["type"] == "void":  # type: ignore[index]
            by_batch.setdefault(batch_id, set()).add(p.row["void_of"])  # type: ignore[index]
    known: dict[tuple[int, str], tuple[str, int, str]] = {}  # (batch, uuid) -> (type, amount, currency)
    voided: set[tuple[int, str]] = set()
    for batch_id, targets in by_batch.items():
        for uuid_, type_, amount, currency, void_of in session.execute(
            select(Transaction.uuid, Transaction.type, Transaction.amount_minor, Transaction.currency,
                   Transaction.void_of)
            .where(Transaction.batch_id == batch_id, Transaction.status == "accepted",
                   (Transaction.uuid.in_(targets)) | (Transaction.void_of.in_(targets)))
        ):
            if uuid_ in targets:
                known[(batch_id, uuid_)] = (type_, amount, currency)
            if type_ == "void" and void_of in targets:
                voided.add((batch_id, void_of))
    status_at = {r["sequence"]: r for r in results}
    checked = []
    for p, batch_id in rows:
        row = p.row
        assert row is not None
        if p.status == "accepted":
            reason = None
            if row["type"] == "void":
                target = known.get((batch_id, row["void_of"]))
                if target is None:
                    reason = "void_target_unknown: no accepted transaction of this batch with that uuid"
                elif target[0] == "void":
                    reason = "void_of_void"
                elif (batch_id, row["void_of"]) in voided:
                    reason = "already_voided"
                elif (target[1], target[2]) != (row["amount_minor"], row["currency"]):
                    reason = "void_mismatch: amount and currency must equal the voided transaction's"
                else:
                    voided.add((batch_id, row["void_of"]))
            if reason is not None:
                rejected = _rejected_row({"batch": row["batch_no"], "uuid": row["uuid"]}, reason)
                p = PreparedRow(p.sequence, p.hash, p.prev_hash, p.chain_error, rejected, "rejected", reason,
                                _ROW_VALUES(rejected))
                status_at[p.sequence].update(status="rejected", reason=reason)
            else:
                known[(batch_id, row["uuid"])] = (row["type"], row["amount_minor"], row["currency"])
        checked.append((p, batch_id))
    return checked


# Columns known only under the terminal's lock; all the others come from prepare_page (PreparedRow.values).
_APPLY_COLUMNS = ("terminal_id", "sequence", "merchant_id", "batch_id", "received_at", "prev_hash", "chain_hash",
                  "status", "reject_reason")
_ROW_COLUMNS = tuple(c.name for c in Transaction.__table__.columns if c.name not in ("id", *_APPLY_COLUMNS))
_ROW_VALUES = itemgetter(*_ROW_COLUMNS)
_COPY = f"COPY transactions ({', '.join((*_APPLY_COLUMNS, *_ROW_COLUMNS))}) FROM STDIN (FORMAT BINARY)"


def _pg_type(column: Any) -> str:
    """The PostgreSQL type a binary COPY sends for a column (it must match the column exactly)."""
    kind = column.type
    if isinstance(kind, LargeBinary):
        return "bytea"
    if isinstance(kind, Boolean):
        return "bool"
    if isinstance(kind, DateTime):
        return "timestamptz" if kind.timezone else "timestamp"
    if isinstance(kind, BigInteger):
        return "int8"
    if isinstance(kind, Integer):
        return "int4"
    if isinstance(kind, String):
        return "varchar"
    raise TypeError(f"no binary COPY type for column {column.name} ({kind})")


_COPY_TYPES = [_pg_type(Transaction.__table__.c[name]) for name in (*_APPLY_COLUMNS, *_ROW_COLUMNS)]


def _insert(session: Session, terminal: Terminal, rows: list[tuple[PreparedRow, int]], now: Any) -> None:
    """PostgreSQL: binary COPY straight into the table (several times faster than INSERT; the binary format about a
    third of the client CPU of the text one, bytea above all). Safe without ON CONFLICT
    because the terminal's row lock is held and continuity was checked; the unique (terminal, sequence)
    constraint still refuses a duplicate, failing the whole page rather than storing anything twice."""
    terminal_id, merchant_id = terminal.id, terminal.merchant_id
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        session.execute(insert(Transaction), [
            {**p.row, "terminal_id": terminal_id, "sequence": p.sequence, "merchant_id": merchant_id,  # type: ignore[dict-item]
             "batch_id": batch_id, "received_at": now, "prev_hash": p.prev_hash, "chain_hash": p.hash,
             "status": p.status, "reject_reason": p.reason}
            for p, batch_id in rows
        ])
        return
    driver = connection.connection.driver_connection
    with driver.cursor() as cur, cur.copy(_COPY) as copy:
        copy.set_types(_COPY_TYPES)
        write_row = copy.write_row
        for p, batch_id in rows:
            values = p.values if p.values is not None else _ROW_VALUES(p.row)
            write_row((terminal_id, p.sequence, merchant_id, batch_id, now, p.prev_hash, p.hash, p.status, p.reason,
                       *values))


_TYPES = ("sale", "refund", "void")
_AUTH_MODES = ("online", "offline")


_TOKEN = re.compile(r"^[0-9a-f]{64}\Z")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")


_SHORTEST_CARD_DATA = 12


# Texts already found free of card data. Most repeat on every row (AID, label, scheme), and redact()'s Luhn pass
# costs ~2 µs on an AID's digit run; only clean values are kept, so no card number lingers here.
_CLEAN_TEXT: set[str] = set()
_CLEAN_TEXT_MAX = 4096


def _holds_card_data(value: str) -> bool:
    if value in _CLEAN_TEXT:
        return False
    if redact(value) != value:
        return True
    if len(_CLEAN_TEXT) >= _CLEAN_TEXT_MAX:
        _CLEAN_TEXT.clear()  # references and the like are unique: start over rather than grow
    _CLEAN_TEXT.add(value)
    return False


def _accepted_row(terminal_id: str, wire: dict[str, Any], keystore: Keystore) -> dict[str, Any]:
    """The stored row of a transaction whose chain fields are well-formed (``protocol.chain.row_error``: every text
    field is a str or None, the numbers are ints, ``wallet`` a bool), or ``_Rejected`` with the first problem."""
    type_ = wire["type"]
    if type_ not in _TYPES:
        raise _Rejected("invalid: type")
    try:
        amount = validate_amount(wire["amount_minor"])
        currency = validate_currency(wire["currency"])
    except ValidationError as exc:
        raise _Rejected(f"invalid: {exc.code}") from None
    batch_no = wire["batch"]
    if batch_no < 1:
        raise _Rejected("invalid: batch")
    txn_uuid = wire["uuid"]
    if txn_uuid is None:
        raise _Rejected("invalid: uuid missing")
    if len(txn_uuid) > 36 or not _UUID.match(txn_uuid):
        raise _Rejected("invalid: uuid")
    masked = wire["masked_pan"]
    if masked is not None:
        if len(masked) > 19:
            raise _Rejected("invalid: masked_pan")
        if not is_masked(masked):
            raise _Rejected("invalid: masked_pan is not masked")
    token = wire["token"]
    if token is not None and (len(token) > 64 or not _TOKEN.match(token)):
        raise _Rejected("invalid: token")
    void_of = wire["void_of"]
    if (type_ == "void") != (void_of is not None):
        raise _Rejected("invalid: void_of missing" if type_ == "void" else "invalid: void_of on a " + type_)
    if void_of is not None and (len(void_of) > 36 or not _UUID.match(void_of)):
        raise _Rejected("invalid: void_of")
    auth_mode = wire["auth_mode"]
    if auth_mode is not None and auth_mode not in _AUTH_MODES:
        raise _Rejected("invalid: auth_mode")
    pan_last4 = wire["pan_last4"]
    if pan_last4 is not None and len(pan_last4) > 4:
        raise _Rejected("invalid: pan_last4")
    card_data = None
    envelope = wire.get("envelope")
    if envelope is not None:
        card = open_card(keystore, envelope)
        if card is None:
            raise _Rejected("envelope_unreadable")
        if not card_matches(keystore, card, token=token, masked_pan=masked, pan_last4=pan_last4):
            raise _Rejected("envelope_mismatch")
        aad = f"{terminal_id}:{wire['sequence']}".encode()
        card_data = keystore.encrypt_card_data(orjson.dumps(card), aad)
    row = {
        "uuid": txn_uuid,
        "batch_no": batch_no,
        "type": type_,
        "amount_minor": amount,
        "currency": currency,
        "masked_pan": masked,
        "pan_last4": pan_last4,
        "wallet": wire["wallet"],
        "token": token,
        "auth_mode": auth_mode,
        "card_data": card_data,
    }
    for key, limit, shape in _TAIL_TEXT:
        value = wire[key]
        if value is None:
            if key == "created_at":
                raise _Rejected("invalid: created_at missing")
        elif len(value) > limit or not value.isprintable():  # a NUL made PostgreSQL refuse the whole page, for ever
            raise _Rejected(f"invalid: {key}")
        elif shape is not None:
            if not shape.fullmatch(value):
                raise _Rejected(f"invalid: {key}")
        # Any text field could carry a card number (a faulty or hostile terminal): what redact() would mask holds at
        # least 12 digits, so shorter text needs no regex pass.
        elif len(value) >= _SHORTEST_CARD_DATA and _holds_card_data(value):
            raise _Rejected(f"invalid: {key} contains card data")
        row[key] = value
    return row


# The plain text fields checked after the card data, in the order their problems are reported, with their length
# limit and, for those of a fixed shape, the pattern they must match (which leaves no room for a card number); the
# others are checked for card data.
# auth_id is head office's own (a UUID it gave the authorization); void_of was checked as a UUID above.
_TAIL_TEXT = (("scheme", 20, None), ("aid", 32, None), ("label", 64, None), ("entry_mode", 20, None),
              ("auth_code", 12, None), ("auth_reason", 100, None), ("auth_id", 64, _UUID),
              ("reference", 100, None), ("void_of", 36, _UUID),
              ("created_at", 40, re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)",
                                            re.ASCII)),
              ("envelope_sha256", 64, re.compile(r"[0-9a-f]{64}", re.ASCII)))


def _rejected_row(wire: dict[str, Any], reason: str) -> dict[str, Any]:
    """Keeps the chain position only: no field of a transaction that failed its checks is trusted or stored,
    since a malformed field could be anything, card data included."""
    fields = wire
    batch_no = fields.get("batch")
    if isinstance(batch_no, bool) or not isinstance(batch_no, int) or batch_no < 1:
        batch_no = 0
    txn_uuid = fields.get("uuid")
    try:
        txn_uuid = str(uuid_mod.UUID(str(txn_uuid)))
    except ValueError:
        txn_uuid = "00000000-0000-0000-0000-000000000000"
    return {
        "uuid": txn_uuid, "batch_no": batch_no, "type": "invalid", "amount_minor": 0, "currency": "XXX",
        "scheme": None, "aid": None, "label": None, "entry_mode": None, "masked_pan": None, "pan_last4": None,
        "wallet": None, "token": None, "auth_mode": None, "auth_code": None, "auth_reason": None, "auth_id": None,
        "reference": None, "void_of": None, "created_at": "", "envelope_sha256": None, "card_data": None,
    }


def chain_head(session: Session, terminal: Terminal) -> dict[str, Any]:
    """What head office holds of ``terminal``'s chain: the last accepted sequence and its hash, and the highest batch
    number it has seen (closed or still open). A terminal whose queue had to be replaced continues from here, so
    its next sale is the next sequence of the same chain and its batch numbers do not collide with old ones."""
    batch = session.execute(select(func.max(Batch.batch_no)).where(Batch.terminal_id == terminal.id)).scalar()
    head_batch = session.execute(  # the batch the head row is kept in (a rejected row's claim is not trusted)
        select(Batch.batch_no).join(Transaction, Transaction.batch_id == Batch.id)
        .where(Transaction.terminal_id == terminal.id, Transaction.sequence == terminal.head_sequence)
    ).scalar()
    return {"sequence": int(terminal.head_sequence or 0), "hash": terminal.head_hash,
            "batch": max(int(batch or 0), int(head_batch or 0))}
