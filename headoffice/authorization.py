"""Online authorization: idempotent per (terminal, idempotency key), deny list checked at head office."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from headoffice import parameters
from headoffice.acquirer import SETTING_KEY, AcquirerConnector, AuthRequest, SimulatedAcquirer, rules_from_setting
from headoffice.clock import utcnow
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


def authorize(
    session: Session,
    terminal: Terminal,
    request: AuthRequest,
    connector_for: Callable[[Session], AcquirerConnector] = simulated_connector,
) -> dict[str, Any]:
    existing = find_existing(session, terminal.id, request.idempotency_key)
    if existing is not None:
        return result_doc(existing)
    denied = bool(request.token) and request.token in set(parameters.current(session).deny_list)
    result = connector_for(session).authorize(request, denied=denied)
    row = Authorization(
        auth_id=str(uuid.uuid4()),
        terminal_id=terminal.id,
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
        # The same request raced in through another process: its answer is the answer.
        again = find_existing(session, terminal.id, request.idempotency_key)
        if again is None:
            raise
        return result_doc(again)
    return result_doc(row)

