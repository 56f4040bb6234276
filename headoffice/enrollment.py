"""One-time enrollment codes and the enrollment of a terminal's public key.

Codes are stored only as their SHA-256, are single-use (claimed with one conditional UPDATE, so two
``serve`` processes cannot both accept the same code) and expire.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from headoffice.clock import utcnow
from headoffice.errors import HQError
from headoffice.models import EnrollmentCode, Merchant, Terminal
from protocol.signing import SignatureError, public_key_from_text

# No 0/O/1/I/L: codes are read aloud and typed by technicians.
_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
MAX_ID = 64


@dataclass(frozen=True)
class IssuedCode:
    code: str
    merchant_id: str
    terminal_id: str
    expires_at: str


def _hash(code: str) -> str:
    normalised = code.strip().upper().replace("-", "").replace(" ", "")
    return hashlib.sha256(normalised.encode()).hexdigest()


def _check_id(kind: str, value: str) -> str:
    if not value or len(value) > MAX_ID or not all(c.isalnum() or c in "-_." for c in value):
        raise HQError(400, f"invalid_{kind}", f"{kind} id must be 1-{MAX_ID} letters, digits, '-', '_' or '.'")
    return value


def upsert_merchant(session: Session, merchant_id: str, *, name: str | None = None,
                    address: list[str] | None = None) -> Merchant:
    _check_id("merchant", merchant_id)
    merchant = session.get(Merchant, merchant_id)
    if merchant is None:
        merchant = Merchant(id=merchant_id, name=name or merchant_id, address=list(address or []), created_at=utcnow())
        session.add(merchant)
    else:
        if name is not None:
            merchant.name = name
        if address is not None:
            merchant.address = list(address)
    session.flush()
    return merchant


def create_code(session: Session, merchant_id: str, terminal_id: str, ttl: timedelta) -> IssuedCode:
    _check_id("terminal", terminal_id)
    if session.get(Merchant, merchant_id) is None:
        # A mistyped merchant id would enroll the terminal under a merchant nobody set up (its batches, receipts
        # and settlement going there): merchants are created on purpose, with their name.
        raise HQError(404, "unknown_merchant", f"no merchant {merchant_id!r}; create it first with "
                                               f"`smartpos-hq merchants set {merchant_id} --name NAME`")
    if session.get(Terminal, terminal_id) is not None:
        raise HQError(409, "terminal_exists", f"terminal {terminal_id} is already enrolled")
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(12))
    code = "-".join(raw[i : i + 4] for i in range(0, 12, 4))
    now = utcnow()
    # The newest code is the one that counts: earlier unused codes for this terminal stop working (expire now).
    session.execute(
        update(EnrollmentCode)
        .where(EnrollmentCode.terminal_id == terminal_id, EnrollmentCode.used_at.is_(None),
               EnrollmentCode.expires_at > now)
        .values(expires_at=now)
    )
    session.add(EnrollmentCode(code_hash=_hash(code), merchant_id=merchant_id, terminal_id=terminal_id,
                               created_at=now, expires_at=now + ttl))
    session.flush()
    return IssuedCode(code, merchant_id, terminal_id, (now + ttl).isoformat())


def enroll(session: Session, code: str, public_key_text: str) -> tuple[Terminal, Merchant]:
    """Claim ``code`` and register the terminal with ``public_key_text``. Raises ``HQError`` 4xx when not possible."""
    try:
        public_key_from_text(public_key_text)
    except SignatureError as exc:
        raise HQError(400, exc.code, exc.message) from None
    code_hash = _hash(code)
    now = utcnow()
    claimed = session.execute(
        update(EnrollmentCode)
        .where(EnrollmentCode.code_hash == code_hash, EnrollmentCode.used_at.is_(None),
               EnrollmentCode.expires_at > now)
        .values(used_at=now)
    ).rowcount
    row = session.execute(select(EnrollmentCode).where(EnrollmentCode.code_hash == code_hash)).scalar_one_or_none()
    if not claimed:
        if row is None:
            raise HQError(404, "unknown_code", "enrollment code not known; ask head office for a new code")
        if row.used_at is not None:
            again = session.get(Terminal, row.terminal_id)
            if again is not None and again.public_key == public_key_text:
                # The same terminal retrying after a lost answer: same key, same code -> same enrollment.
                merchant = session.get(Merchant, again.merchant_id)
                assert merchant is not None
                return again, merchant
            raise HQError(409, "code_used", "enrollment code was already used; ask head office for a new code")
        raise HQError(410, "code_expired", "enrollment code has expired; ask head office for a new code")
    assert row is not None
    if session.get(Terminal, row.terminal_id) is not None:
        raise HQError(409, "terminal_exists", f"terminal {row.terminal_id} is already enrolled")
    terminal = Terminal(id=row.terminal_id, merchant_id=row.merchant_id, public_key=public_key_text,
                        enrolled_at=now, head_sequence=0, head_hash=None)
    session.add(terminal)
    session.flush()
    merchant = session.get(Merchant, row.merchant_id)
    assert merchant is not None
    return terminal, merchant


def merchant_doc(merchant: Merchant) -> dict[str, Any]:
    return {"id": merchant.id, "name": merchant.name, "address": list(merchant.address or [])}
