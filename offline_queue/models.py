"""What the store hands out: frozen dataclasses over plain values (str, int, bool, dict), safe to pass between
threads and to serialize. None of them ever holds a clear PAN or track data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

from protocol.chain import WIRE_FIELDS

TXN_TYPES = ("sale", "refund", "void")
AUTH_MODES = ("online", "offline")
SYNC_STATES = ("queued", "uploaded", "accepted", "rejected")
PAYMENT_STATES = (
    "waiting_for_card",
    "reading",
    "authorizing",
    "approved",
    "declined",
    "failed",
    "cancelled",
    "timed_out",
)
PRINT_STATES = ("pending", "sending", "printed", "failed", "unknown")


@dataclass(frozen=True)
class Authorization:
    mode: str  # "online" | "offline"
    code: str | None = None
    reason: str | None = None
    auth_id: str | None = None
    # Why a prefer-online payment was decided offline (e.g. "timeout"): kept with the payment for the front end
    # and the technician; not part of the transaction's chained fields.
    fallback: str | None = None


@dataclass(frozen=True)
class Transaction:
    uuid: str
    terminal_id: str
    sequence: int
    batch: int
    type: str
    created_at: str
    amount_minor: int
    currency: str
    scheme: str | None
    masked_pan: str | None
    pan_last4: str | None
    token: str | None
    aid: str | None
    label: str | None
    entry_mode: str | None
    wallet: bool
    auth_mode: str
    auth_code: str | None
    auth_reason: str | None
    auth_id: str | None
    reference: str | None
    void_of: str | None
    voided_by: str | None
    envelope_sha256: str | None
    envelope_present: bool
    prev_hash: str
    hash: str
    idempotency_key: str | None
    payment_id: str | None
    sync_state: str
    sync_code: str | None
    sync_reason: str | None
    synced_at: str | None
    envelope: str | None = field(default=None, repr=False)
    atc: int | None = None
    tvr: str | None = None

    @classmethod
    def of(cls, values: dict[str, Any]) -> Transaction:
        """Build from a dict holding every field, without the generated ``__init__``: a frozen dataclass sets each
        of its 36 fields through ``object.__setattr__`` (about 9 us), and the store builds one per recorded sale
        and per row it reads. The instance is as frozen as one made by ``__init__``."""
        if values.keys() != _TXN_FIELD_NAMES:
            missing, extra = _TXN_FIELD_NAMES - values.keys(), values.keys() - _TXN_FIELD_NAMES
            raise TypeError(f"Transaction.of: missing {sorted(missing)}, unexpected {sorted(extra)}")
        obj = object.__new__(cls)
        obj.__dict__.update(values)
        return obj

    def to_wire(self) -> dict[str, Any]:
        """Exactly the uploaded dict (``protocol.chain.WIRE_FIELDS``)."""
        return {name: getattr(self, name) for name in WIRE_FIELDS}

    def to_public_dict(self) -> dict[str, Any]:
        """For the local API, CLI and receipts: no token, no envelope."""
        return {
            "uuid": self.uuid,
            "sequence": self.sequence,
            "batch": self.batch,
            "type": self.type,
            "created_at": self.created_at,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "reference": self.reference,
            "card": {
                "scheme": self.scheme,
                "masked_pan": self.masked_pan,
                "pan_last4": self.pan_last4,
                "entry_mode": self.entry_mode,
                "aid": self.aid,
                "label": self.label,
                "wallet": self.wallet,
                "atc": self.atc,
                "tvr": self.tvr,
            },
            "authorization": {
                "mode": self.auth_mode,
                "code": self.auth_code,
                "reason": self.auth_reason,
                "auth_id": self.auth_id,
            },
            "void_of": self.void_of,
            "voided_by": self.voided_by,
            "sync_state": self.sync_state,
            "sync_code": self.sync_code,
            "sync_reason": self.sync_reason,
        }


_TXN_FIELD_NAMES = frozenset(f.name for f in fields(Transaction))


@dataclass(frozen=True)
class Batch:
    number: int
    status: str  # "open" | "closed"
    opened_at: str
    closed_at: str | None
    totals: dict[str, Any]
    hq_status: str | None  # None while open; "pending" | "balanced" | "out_of_balance" once closed
    hq_detail: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QueueStats:
    unsynced_count: int
    unsynced_amount_minor: dict[str, int]  # net (sales - refunds +- voids) per currency
    oldest_unsynced_age_s: float | None
    rejected_count: int
    last_sequence: int
    checkpoint: int
    open_batch: int
    last_contact_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_contact_at"] = self.last_contact_at.isoformat() if self.last_contact_at else None
        return data


@dataclass(frozen=True)
class Payment:
    id: str
    idempotency_key: str
    type: str
    amount_minor: int | None
    currency: str | None
    reference: str | None
    mode: str
    void_of: str | None
    state: str
    card: dict[str, Any] | None
    authorization: dict[str, Any] | None
    error: dict[str, Any] | None
    txn_uuid: str | None
    created_at: str
    updated_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PrintJob:
    id: int
    kind: str
    txn_uuid: str | None
    request_id: str
    payload: dict[str, Any]
    state: str
    attempts: int
    error: str | None
    created_at: str
    updated_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StoredParameters:
    version: int
    parameters: dict[str, Any]
    deny_count: int
    updated_at: str
