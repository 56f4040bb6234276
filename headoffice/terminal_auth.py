"""Verifying a terminal's signed request: known terminal, valid fresh signature, unseen nonce, acting for itself.

Nonces live in the database (not in a process), so a request replayed to another ``serve`` process is refused
too. They are kept for twice the timestamp window; anything older is refused as stale anyway.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from headoffice.errors import HQError
from headoffice.models import Nonce, Terminal
from protocol.signing import SignatureError, parse_headers, public_key_from_text, verify_request

# Cleaning old nonces on every request would cost a DELETE each time; one request in this many does it.
_PURGE_EVERY = 200


def authenticate(
    session: Session,
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    *,
    window_s: int,
    path_terminal: str | None = None,
    lock: bool = False,
) -> Terminal:
    """Return the terminal (row-locked when ``lock``) or raise ``HQError`` 401/403. Records the nonce."""
    try:
        signed = parse_headers(headers)
    except SignatureError as exc:
        raise HQError(401, exc.code, exc.message) from None
    if path_terminal is not None and signed.terminal_id != path_terminal:
        raise HQError(403, "wrong_terminal", "a terminal can only act for itself")
    query = select(Terminal).where(Terminal.id == signed.terminal_id)
    if lock:
        # Serialises one terminal's uploads across serve processes (PostgreSQL); SQLite's BEGIN IMMEDIATE
        # already holds the database write lock.
        query = query.with_for_update()
    terminal = session.execute(query).scalar_one_or_none()
    if terminal is None:
        raise HQError(401, "unknown_terminal", "terminal not enrolled at this head office")
    try:
        verify_request(public_key_from_text(terminal.public_key), signed, method, path, body, window_s=window_s)
    except SignatureError as exc:
        raise HQError(401, exc.code, exc.message) from None
    now = int(time.time())
    dialect = session.get_bind().dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Nonce)
    # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT through SQLAlchemy.
    inserted = session.execute(
        ins.values(terminal_id=terminal.id, nonce=signed.nonce, seen_at=now)
        .on_conflict_do_nothing()
        .returning(Nonce.nonce)
    ).first()
    if inserted is None:
        raise HQError(401, "replayed", "this signed request was already used (replay)")
    if secrets.randbelow(_PURGE_EVERY) == 0:
        session.execute(delete(Nonce).where(Nonce.seen_at < now - 2 * window_s))
    return terminal
