"""Versioned terminal parameters and the deny list.

Each change writes a new ``parameter_sets`` row holding the full parameters and deny list with the next version
number; terminals ask with the version they have and get the document only when it changed. Two concurrent
changes cannot take the same version (primary key): the loser retries on top of the winner.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from headoffice.clock import utcnow
from headoffice.errors import HQError
from headoffice.models import ParameterSet

_TOKEN_RE = re.compile(r"^[0-9a-f]{64}\Z")


def _risk_defaults() -> dict[str, Any]:
    """The terminal's own defaults (``offline_queue.risk``), so a fresh head office serves complete parameters."""
    try:
        from offline_queue import risk
    except ImportError:
        return {}
    cls = getattr(risk, "RiskParameters", None)
    if cls is None:
        return {}
    try:
        instance = cls()
    except Exception:  # parameters without defaults: nothing to seed
        return {}
    if hasattr(instance, "model_dump"):
        return dict(instance.model_dump(mode="json"))
    import dataclasses

    if dataclasses.is_dataclass(instance):
        return dataclasses.asdict(instance)
    return {}


def validate_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the terminal's ``RiskParameters`` (same field names), if that module exists.
    ``receipt_header`` (list of lines) is head office's own addition."""
    header = params.get("receipt_header")
    if header is not None and (not isinstance(header, list) or not all(isinstance(x, str) for x in header)):
        raise HQError(400, "invalid_parameters", "receipt_header must be a list of text lines")
    try:
        from offline_queue import risk
    except ImportError:
        return params
    cls = getattr(risk, "RiskParameters", None)
    if cls is None:
        return params
    risk_fields = {k: v for k, v in params.items() if k != "receipt_header"}
    try:
        if hasattr(cls, "model_validate"):
            checked = cls.model_validate(risk_fields).model_dump(mode="json")
        else:
            checked = _dataclass_dict(cls(**risk_fields))
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "parameters"
        raise HQError(400, "invalid_parameters", f"parameter {where}: {first.get('msg', 'invalid')}") from None
    except Exception as exc:
        raise HQError(400, "invalid_parameters", f"parameters rejected: {exc}") from None
    if header is not None:
        checked["receipt_header"] = header
    return checked


def _dataclass_dict(obj: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(obj)


def current(session: Session) -> ParameterSet:
    row = session.execute(select(ParameterSet).order_by(ParameterSet.version.desc()).limit(1)).scalar_one_or_none()
    if row is None:
        # Two processes may seed at once: the loser builds on the winner's row instead of resetting it.
        row = _write(session, lambda p, d: (p or _risk_defaults(), d), note="defaults")
    return row


def peek(session: Session) -> ParameterSet:
    """What ``current`` gives, without storing the defaults when nothing is stored yet (for commands that only
    show): the defaults as version 1 would hold them, not added to the session."""
    row = session.execute(select(ParameterSet).order_by(ParameterSet.version.desc()).limit(1)).scalar_one_or_none()
    if row is not None:
        return row
    return ParameterSet(version=1, parameters=_risk_defaults(), deny_list=[], created_at=utcnow(), note="defaults")


def current_version(session: Session) -> int:
    return current(session).version


def document(row: ParameterSet) -> dict[str, Any]:
    return {"version": row.version, "parameters": dict(row.parameters), "deny_list": list(row.deny_list)}


def _write(
    session: Session,
    change: Callable[[dict[str, Any], list[str]], tuple[dict[str, Any], list[str]]],
    *,
    note: str | None,
) -> ParameterSet:
    for _attempt in range(5):
        latest = session.execute(
            select(ParameterSet).order_by(ParameterSet.version.desc()).limit(1)
        ).scalar_one_or_none()
        params = dict(latest.parameters) if latest else {}
        deny = list(latest.deny_list) if latest else []
        new_params, new_deny = change(params, deny)
        if latest is not None and new_params == params and sorted(set(new_deny)) == sorted(set(deny)):
            return latest  # nothing changes: no new version for terminals to fetch
        row = ParameterSet(
            version=(latest.version + 1) if latest else 1,
            parameters=new_params,
            deny_list=sorted(set(new_deny)),
            created_at=utcnow(),
            note=note,
        )
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:
            continue
        return row
    raise HQError(503, "busy", "parameters are being changed concurrently; try again")


def set_parameters(session: Session, updates: dict[str, Any], *, unset: list[str] | None = None) -> ParameterSet:
    current(session)

    def change(params: dict[str, Any], deny: list[str]) -> tuple[dict[str, Any], list[str]]:
        merged = {**params, **updates}
        for key in unset or []:
            merged.pop(key, None)
        return validate_parameters(merged), deny

    return _write(session, change, note="parameters: " + ", ".join(sorted(updates) + [f"-{k}" for k in unset or []]))


def check_token(token: str) -> str:
    token = token.strip().lower()
    if not _TOKEN_RE.match(token):
        raise HQError(400, "invalid_token", "a card token is 64 hex characters (HMAC-SHA256)")
    return token


def deny_add(session: Session, tokens: list[str]) -> ParameterSet:
    current(session)
    checked = [check_token(t) for t in tokens]
    return _write(session, lambda p, d: (p, d + checked), note=f"deny +{len(checked)}")


def deny_remove(session: Session, tokens: list[str]) -> ParameterSet:
    current(session)
    checked = {check_token(t) for t in tokens}
    return _write(session, lambda p, d: (p, [t for t in d if t not in checked]), note=f"deny -{len(checked)}")
