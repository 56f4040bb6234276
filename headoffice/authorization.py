"""Online authorization: idempotent per (terminal, idempotency key), deny list checked at head office; reversals.

The acquirer is asked outside any database transaction (``lookup`` -> connector -> ``record``): a slow acquirer
must not hold a connection, nor SQLite's write lock that uploads need.

A terminal that did not get head office's answer in time does not know whether it approved; it sends a reversal
for that idempotency key (durably queued on the terminal, sent by its sync engine). The reversal can overtake the
authorization it reverses (the acquirer is still thinking): it then leaves a tombstone row, the late authorization
finds it and answers "reversed", and an approval the acquirer gave meanwhile is reversed at the acquirer. That
reversal is owed durably: the approval is stored with ``acquirer_reversal_due_at`` set, in the same commit, and is
cleared only once the acquirer confirmed. A failed attempt (or a head office that stopped before making it) is
retried by every serve process's background pass, with a back-off doubling from the retry interval up to
``MAX_REVERSAL_BACKOFF_S``; an attempt claims the row for ``REVERSAL_LEASE_S`` first, so two processes do not both
call the acquirer for it (and one that dies mid-call frees it when the lease runs out)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from headoffice import parameters
from headoffice.acquirer import (
    SETTING_KEY,
    AcquirerConnector,
    AcquirerResult,
    AuthRequest,
    ReversalRequest,
    SimulatedAcquirer,
    rules_from_setting,
)
from headoffice.clock import utcnow
from headoffice.errors import HQError
from headoffice.models import Authorization, Setting, Terminal

TOMBSTONE_REASON = "reversed_before_authorization"
MAX_REVERSAL_BACKOFF_S = 900.0
REVERSAL_LEASE_S = 120.0


def result_doc(row: Authorization) -> dict[str, Any]:
    if row.reversed_at is not None:
        return {"approved": False, "code": None, "reason": "reversed", "auth_id": row.auth_id, "reversed": True}
    return {"approved": row.approved, "code": row.code, "reason": row.reason, "auth_id": row.auth_id,
            "reversed": False}


def simulated_connector(session: Session) -> AcquirerConnector:
    setting = session.get(Setting, SETTING_KEY)
    return SimulatedAcquirer(rules_from_setting(setting.value if setting else None))


def find_existing(session: Session, terminal_id: str, key: str, *, for_update: bool = False) -> Authorization | None:
    """``for_update``: lock the row (PostgreSQL) so two reversals of one key arriving at once do not both act."""
    query = select(Authorization).where(Authorization.terminal_id == terminal_id,
                                        Authorization.idempotency_key == key)
    if for_update:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def lookup(session: Session, terminal: Terminal, request: AuthRequest) -> tuple[dict[str, Any] | None, bool]:
    """(the earlier answer for this idempotency key or None, whether the card's token is deny-listed)."""
    existing = find_existing(session, terminal.id, request.idempotency_key)
    if existing is not None:
        _same_request(existing, request)
        return result_doc(existing), False
    denied = bool(request.token) and request.token in set(parameters.current(session).deny_list)
    return None, denied


def _same_request(row: Authorization, request: AuthRequest) -> None:
    """A retry carries the same key *and* the same payment; another payment under a used key is refused, not
    answered with the first payment's approval."""
    if (row.type, row.amount_minor, row.currency, row.token) != (
            request.type, request.amount_minor, request.currency, request.token):
        raise HQError(409, "idempotency_key_reused",
                      "this idempotency key was used for another authorization (type, amount, currency or card)")


def record(session: Session, terminal_id: str, request: AuthRequest,
           result: AcquirerResult) -> tuple[dict[str, Any], str | None]:
    """Store the acquirer's answer; if the same request raced in through another process, its answer wins.

    Returns (the answer, the auth id to reverse at the acquirer): the second is set when the terminal's reversal
    overtook this authorization and the acquirer approved it meanwhile."""
    row = Authorization(
        auth_id=str(uuid.uuid4()),
        terminal_id=terminal_id,
        idempotency_key=request.idempotency_key,
        type=request.type,
        amount_minor=request.amount_minor,
        currency=request.currency,
        masked_pan=request.masked_pan,
        token=request.token,
        approved=result.approved,
        code=result.code,
        reason=result.reason,
        created_at=utcnow(),
    )
    again = _insert_or_existing(session, row)
    if again is not None:
        if again.reversed_at is not None and again.code is None and again.reason == TOMBSTONE_REASON:
            # The reversal's tombstone: it keeps what the acquirer answered (for staff), and an approval is
            # reversed at the acquirer as soon as it is given. The terminal is answered "reversed".
            _same_payment(again, request.type, request.amount_minor, request.currency)
            again.approved, again.code = result.approved, result.code
            again.masked_pan, again.token = request.masked_pan, request.token
            if not result.approved:
                again.reason = result.reason
                return result_doc(again), None
            again.acquirer_reversal_due_at = utcnow()  # owed from this commit on, until the acquirer confirms
            return result_doc(again), again.auth_id
        _same_request(again, request)
        return result_doc(again), None
    return result_doc(row), None


def _insert_or_existing(session: Session, row: Authorization) -> Authorization | None:
    """Insert ``row``; when another request stored one under the same (terminal, key) first, return that one."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        again = find_existing(session, row.terminal_id, row.idempotency_key)
        if again is None:
            raise
        return again
    return None


def _same_payment(row: Authorization, type_: str, amount_minor: int, currency: str) -> None:
    if (row.type, row.amount_minor, row.currency) != (type_, amount_minor, currency):
        raise HQError(409, "idempotency_key_reused",
                      "this idempotency key belongs to another authorization (type, amount or currency)")


def reversal_plan(session: Session, terminal_id: str, request: ReversalRequest) -> tuple[bool, str | None]:
    """Before anything is stored: (whether the acquirer must be told, the auth id it knows the approval by).

    The acquirer is told first and the reversal stored after it confirmed, so a failing acquirer leaves the
    reversal owed (the terminal sends it again) instead of marked done with the hold still standing. With no
    authorization stored under the key (still in flight, or approved at the acquirer and lost by head office before
    it was stored) the acquirer is asked to reverse by the key (``auth_id`` None)."""
    row = find_existing(session, terminal_id, request.idempotency_key)
    if row is None:
        return True, None
    _same_payment(row, request.type, request.amount_minor, request.currency)
    if row.reversed_at is not None or not row.approved:
        return False, None
    return True, row.auth_id


def reverse(session: Session, terminal_id: str, request: ReversalRequest) -> dict[str, Any]:
    """Mark the authorization under this key reversed (idempotent), or leave a tombstone when none arrived yet."""
    now = utcnow()
    row = find_existing(session, terminal_id, request.idempotency_key, for_update=True)
    if row is None:
        tombstone = Authorization(
            auth_id=str(uuid.uuid4()), terminal_id=terminal_id, idempotency_key=request.idempotency_key,
            type=request.type, amount_minor=request.amount_minor, currency=request.currency,
            approved=False, reason=TOMBSTONE_REASON, created_at=now,
            reversed_at=now, reversal_reason=request.reason,
        )
        row = _insert_or_existing(session, tombstone)
        if row is None:
            return {"status": "reversed_before_authorization", "auth_id": tombstone.auth_id}
    _same_payment(row, request.type, request.amount_minor, request.currency)
    if row.reversed_at is not None:
        return {"status": "already_reversed", "auth_id": row.auth_id}
    row.reversed_at = now
    row.reversal_reason = request.reason
    return {"status": "reversed" if row.approved else "not_approved", "auth_id": row.auth_id}


# -- reversals head office owes the acquirer ----------------------------------------------------------------------

def due_acquirer_reversals(session: Session, now: datetime, *, limit: int = 100,
                           waiting_too: bool = False) -> list[str]:
    """Auth ids whose owed acquirer reversal is due (oldest first); ``waiting_too``: every owed one, also those
    waiting out a back-off or claimed by an attempt in progress."""
    due = Authorization.acquirer_reversal_due_at
    query = select(Authorization.auth_id).where(due.is_not(None))
    if not waiting_too:
        query = query.where(due <= now)
    return list(session.execute(query.order_by(due).limit(limit)).scalars())


def claim_acquirer_reversal(session: Session, auth_id: str, now: datetime, *,
                            force: bool = False) -> ReversalRequest | None:
    """Take the owed reversal of ``auth_id`` for one attempt (the row is not due again for ``REVERSAL_LEASE_S``);
    None when nothing is owed or it is not due (another process holds it, or it was confirmed). ``force``: take it
    even if it is not due (staff asking for it now). That may repeat a request another process is making at the
    same moment, which acquirers take as the repeat it is: a reversal names the authorization it undoes."""
    due = Authorization.acquirer_reversal_due_at
    owed = [Authorization.auth_id == auth_id, due.is_not(None)]
    if not force:
        owed.append(due <= now)
    claimed = session.execute(
        update(Authorization)
        .where(*owed)
        .values(acquirer_reversal_due_at=now + timedelta(seconds=REVERSAL_LEASE_S),
                acquirer_reversal_attempts=Authorization.acquirer_reversal_attempts + 1)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return None
    row = session.get(Authorization, auth_id)
    assert row is not None
    return ReversalRequest(idempotency_key=row.idempotency_key, type=row.type, amount_minor=row.amount_minor,
                           currency=row.currency, reason=row.reversal_reason)


def settle_acquirer_reversal(session: Session, auth_id: str, *, confirmed: bool, now: datetime,
                             retry_s: float) -> None:
    """After an attempt: nothing owed any more (``confirmed``), or due again after the back-off."""
    row = session.get(Authorization, auth_id, with_for_update=True)
    if row is None or row.acquirer_reversal_due_at is None:
        return
    if confirmed:
        row.acquirer_reversal_due_at = None
        return
    failures = max(1, row.acquirer_reversal_attempts)
    backoff = min(retry_s * 2 ** min(failures - 1, 20), MAX_REVERSAL_BACKOFF_S)
    row.acquirer_reversal_due_at = now + timedelta(seconds=backoff)
