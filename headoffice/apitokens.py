"""API tokens for head-office staff and systems (``Authorization: Bearer ...``). Stored as SHA-256 only."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from headoffice.clock import utcnow
from headoffice.errors import HQError
from headoffice.models import ApiToken

PREFIX = "hq_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, name: str) -> str:
    if not name or len(name) > 100:
        raise HQError(400, "invalid_name", "token name must be 1-100 characters")
    existing = session.execute(select(ApiToken).where(ApiToken.name == name)).scalar_one_or_none()
    if existing is not None:
        if existing.revoked_at is None:
            raise HQError(409, "token_exists", f"a token named {name!r} exists; revoke it or pick another name")
        # Rotating a leaked token under its name: the revoked one keeps its row (and its history) under a new name.
        existing.name = f"{name[:70]} (revoked #{existing.id})"
        session.flush()
    token = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_hash=_hash(token), created_at=utcnow()))
    session.flush()
    return token


def revoke_token(session: Session, name: str) -> bool:
    result = session.execute(
        update(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return bool(result.rowcount)


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.execute(select(ApiToken).order_by(ApiToken.id)).scalars())


def check_bearer(session: Session, authorization: str | None) -> str:
    """Return the token's name or raise 401."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HQError(401, "unauthenticated", "send an API token: Authorization: Bearer <token>")
    token = authorization[7:].strip()
    digest = _hash(token)
    row = session.execute(
        select(ApiToken).where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
    ).scalar_one_or_none()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        raise HQError(401, "invalid_token", "API token unknown or revoked")
    return row.name
