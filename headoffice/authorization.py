"""Online authorization: idempotent per (terminal, idempotency key), deny list checked at head office.

The acquirer is asked outside any database transaction (``lookup`` -> connector -> ``record``): a slow acquirer
must not hold a connection, nor SQLite's write lock that uploads need."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from headoffice import parameters
from headoffice.acquirer import (
    SETTING_KEY,
    AcquirerConnector,
    AcquirerResult,
    AuthRequest,
    SimulatedAcquirer,
    rules_from_setting,
)
from headoffice.clock import utcnow
from headoffice.errors import HQError
from headoffice.models import Authorization, Setting, Terminal


def result_doc(row: Authorization) -> dict[str, Any]:
    return {"approved": row.approved, "code": row.code, "reason": row.reason, "auth_id": row.auth_id}


def simulated_connector(session: Session) -> AcquirerConnector:
    setting = session.get(Setting, SETTING_KEY)
    return SimulatedAcquirer(rules_from_setting(setting.value if setting else None))


def find_existing(session: Session, terminal_id: str, key: str) -> Authorization | None:
    return session.execute(
        select(Authorization).where(Authorization.terminal_id == terminal_id, Authorization.idempotency_key == key)
    ).scalar_one_or_none()


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


def record(session: Session, terminal_id: str, request: AuthRequest, result: AcquirerResult) -> dict[str, Any]:
    """Store the acquirer's answer; if the same request raced in through another process, its answer wins."""
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
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        again = find_existing(session, terminal_id, request.idempotency_key)
        if again is None:
            raise
        _same_request(again, request)
        return result_doc(again)
    return result_doc(row)
