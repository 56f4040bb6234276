"""The transaction hash chain: tamper evidence shared by terminal and head office.

Each transaction's ``hash`` is SHA-256 over a domain tag, the previous transaction's hash and a canonical encoding
of the chained fields of its wire dict (exactly what is uploaded). Head office recomputes it with this module, so
a changed, removed or reordered transaction shows up as a broken link.

The sealed envelope is chained through ``envelope_sha256`` rather than directly, so the envelope can be wiped once
head office has it and the local chain still verifies.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from operator import itemgetter
from typing import Any

import orjson

GENESIS = "0" * 64
_DOMAIN = b"smartpos-chain-v1\n"

CHAINED_FIELDS: tuple[str, ...] = (
    "uuid",
    "terminal_id",
    "sequence",
    "batch",
    "type",
    "created_at",
    "amount_minor",
    "currency",
    "scheme",
    "masked_pan",
    "pan_last4",
    "token",
    "aid",
    "label",
    "entry_mode",
    "wallet",
    "auth_mode",
    "auth_code",
    "auth_reason",
    "auth_id",
    "reference",
    "void_of",
    "envelope_sha256",
)
# Every key of an uploaded transaction: the chained fields, the link, the hash and the (wipeable) envelope.
WIRE_FIELDS: tuple[str, ...] = (*CHAINED_FIELDS, "prev_hash", "hash", "envelope")

_INT_FIELDS = frozenset({"sequence", "batch", "amount_minor"})
_BOOL_FIELDS = frozenset({"wallet"})
_HASH_RE = re.compile("[0-9a-f]{64}")
# Head office checks every uploaded row: the common case (exact built-in types) is tested in one quick pass and
# only a row that fails it goes through the field-by-field check that names the first bad field.
_STR_FIELDS = tuple(name for name in CHAINED_FIELDS if name not in _INT_FIELDS and name not in _BOOL_FIELDS)
_INT_LIMIT = 2**63
# Taken in sorted order at C speed; OPT_SORT_KEYS then finds the keys already sorted.
_SORTED_FIELDS = tuple(sorted(CHAINED_FIELDS))
_sorted_values = itemgetter(*_SORTED_FIELDS)


class ChainError(ValueError):
    """The chain does not verify. ``code``: gap, bad_link, bad_hash, bad_row, envelope_mismatch;
    ``sequence``: the first transaction that fails."""

    def __init__(self, code: str, sequence: int | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.sequence = sequence
        self.message = message


def is_hash(value: object) -> bool:
    """A chain hash: 64 lower-case hex characters."""
    return isinstance(value, str) and _HASH_RE.fullmatch(value) is not None


def _check_types(fields: Mapping[str, Any]) -> None:
    seq = fields.get("sequence")
    for name in CHAINED_FIELDS:
        if name not in fields:
            raise ChainError("bad_row", seq if isinstance(seq, int) else None, f"transaction lacks field {name!r}")
        value = fields[name]
        if name in _INT_FIELDS:
            ok = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
        elif name in _BOOL_FIELDS:
            ok = isinstance(value, bool)
        else:
            ok = value is None or isinstance(value, str)
        if not ok:
            raise ChainError("bad_row", seq if isinstance(seq, int) else None, f"field {name!r} has the wrong type")


def _plain_types(fields: Mapping[str, Any]) -> bool:
    """True when every chained field is present with exactly a built-in type ``_check_types`` accepts."""
    try:
        for name in _STR_FIELDS:
            value = fields[name]
            if value is not None and value.__class__ is not str:
                return False
        for name in _INT_FIELDS:
            value = fields[name]
            if value.__class__ is not int or not -_INT_LIMIT <= value < _INT_LIMIT:
                return False
        return fields["wallet"].__class__ is bool
    except KeyError:
        return False


def _checked(fields: Mapping[str, Any]) -> None:
    if not _plain_types(fields):
        _check_types(fields)


def canonical(fields: Mapping[str, Any]) -> bytes:
    """Sorted-key compact JSON of the chained fields only (extra keys are ignored, missing ones are an error)."""
    _checked(fields)
    return _encoded(fields)


_WIRE_EXTRAS = ("prev_hash", "hash", "envelope")
_WIRE_LEN = len(CHAINED_FIELDS) + len(_WIRE_EXTRAS)


def _encoded(fields: Mapping[str, Any]) -> bytes:
    """The canonical encoding of ``fields``, whose chained fields are present (the callers check that first)."""
    try:
        if (
            fields.__class__ is dict
            and len(fields) == _WIRE_LEN
            and "envelope" in fields
            and "hash" in fields
            and "prev_hash" in fields
        ):
            # Exactly an uploaded row (the chained fields and the three others): a copy without the three others,
            # key-sorted, costs about half of building the dict of the chained fields one by one.
            chained = dict(fields)
            del chained["prev_hash"], chained["hash"], chained["envelope"]
            return orjson.dumps(chained, option=orjson.OPT_SORT_KEYS)
        # Built in sorted key order, so the dict is its own canonical form (orjson keeps insertion order).
        return orjson.dumps(dict(zip(_SORTED_FIELDS, _sorted_values(fields))))  # noqa: B905 (same length)
    except orjson.JSONEncodeError:  # e.g. a string with a lone surrogate: not representable as UTF-8
        seq = fields["sequence"]
        raise ChainError("bad_row", seq, "transaction has a field that cannot be encoded") from None


def chain_hash(prev_hash_hex: str, wire_fields: Mapping[str, Any]) -> str:
    if not is_hash(prev_hash_hex):
        raise ChainError("bad_link", None, "previous hash must be 64 lower-case hex characters")
    return _digest(prev_hash_hex, canonical(wire_fields))


SORTED_CHAINED_FIELDS: tuple[str, ...] = _SORTED_FIELDS


def chain_hash_sorted(prev_hash_hex: str, fields: dict[str, Any]) -> str:
    """:func:`chain_hash` for a writer that builds the row itself: ``fields`` holds exactly the chained fields,
    inserted in ``SORTED_CHAINED_FIELDS`` order, so the canonical encoding is the dict as it stands (orjson keeps
    insertion order; the result is byte for byte what :func:`canonical` gives, which a test checks). A dict in any
    other shape is refused rather than hashed differently; the value types are still checked."""
    if tuple(fields) != _SORTED_FIELDS:
        raise ChainError("bad_row", None, "fields must be exactly the chained fields, in sorted order")
    if not is_hash(prev_hash_hex):
        raise ChainError("bad_link", None, "previous hash must be 64 lower-case hex characters")
    _checked(fields)
    try:
        encoded = orjson.dumps(fields)
    except orjson.JSONEncodeError:
        raise ChainError("bad_row", fields["sequence"], "transaction has a field that cannot be encoded") from None
    return _digest(prev_hash_hex, encoded)


def _digest(prev_hash_hex: str, encoded: bytes) -> str:
    return hashlib.sha256(_DOMAIN + prev_hash_hex.encode("ascii") + b"\n" + encoded).hexdigest()


def envelope_digest(envelope: str) -> str:
    return hashlib.sha256(envelope.encode("utf-8")).hexdigest()


def row_error(row: Any) -> str | None:
    """What :func:`verify_chain` would say of this row alone, taking its own ``prev_hash`` as the previous hash
    (whether that is the right hash is for the caller to check): a ``ChainError`` code, or None when the row is
    well-formed, hashes correctly and its envelope matches its digest. For head office's per-row pass."""
    if not isinstance(row, Mapping):
        return "bad_row"
    if not _plain_types(row):
        try:
            _check_types(row)
        except ChainError as exc:
            return exc.code
    prev = row.get("prev_hash")
    if not is_hash(prev):
        return "bad_link"
    try:
        encoded = _encoded(row)
    except ChainError as exc:
        return exc.code
    if row.get("hash") != _digest(prev, encoded):
        return "bad_hash"
    envelope = row.get("envelope")
    if envelope is not None and (not isinstance(envelope, str) or row["envelope_sha256"] != envelope_digest(envelope)):
        return "envelope_mismatch"
    return None


def verify_chain(
    rows: Iterable[Mapping[str, Any]], start_prev_hash: str = GENESIS, *, start_sequence: int | None = None
) -> str:
    """Check rows given in sequence order: contiguous sequence numbers (from ``start_sequence`` when given),
    each ``prev_hash`` equal to the previous row's hash (the first to ``start_prev_hash``), each ``hash`` correct,
    and a present envelope matching its digest. Returns the last hash (``start_prev_hash`` for no rows)."""
    prev = start_prev_hash
    prev_ok = False  # after the first row, ``prev`` is a digest computed here
    expected_seq = start_sequence
    for row in rows:
        if not isinstance(row, Mapping):
            raise ChainError("bad_row", None, "a transaction must be an object")
        _checked(row)
        seq = row["sequence"]
        if expected_seq is not None and seq != expected_seq:
            raise ChainError("gap", seq, f"expected sequence {expected_seq}, found {seq}")
        if row.get("prev_hash") != prev:
            raise ChainError("bad_link", seq, f"transaction {seq} does not link to the previous hash")
        if not prev_ok and not is_hash(prev):
            raise ChainError("bad_link", None, "previous hash must be 64 lower-case hex characters")
        prev_ok = True
        digest = _digest(prev, _encoded(row))
        if row.get("hash") != digest:
            raise ChainError("bad_hash", seq, f"transaction {seq} hash does not match its content")
        envelope = row.get("envelope")
        if envelope is not None:
            if not isinstance(envelope, str) or row["envelope_sha256"] != envelope_digest(envelope):
                raise ChainError("envelope_mismatch", seq, f"transaction {seq} envelope does not match its digest")
        prev = digest
        expected_seq = seq + 1
    return prev
