"""Who decides a payment, per mode: head office online, the offline risk rules, or online with offline fallback.

Pure decision logic over two callables, so every mode/outcome combination is unit-tested without a network:
``online()`` returns head office's answer or raises ``OnlineUnavailable``; ``offline()`` applies the risk rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

# EMV authorisation response codes a terminal uses for its own offline decisions.
OFFLINE_APPROVED_CODE = "Y1"
OFFLINE_DECLINED_CODE = "Z1"


class OnlineUnavailable(Exception):
    """Head office could not answer in time (network down, timeout, 5xx). ``code`` says which.

    ``maybe_delivered``: the request may have reached head office (only a connection never made rules that out),
    so head office may have approved it and the terminal owes it a reversal."""

    def __init__(self, code: str, message: str, *, maybe_delivered: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.maybe_delivered = maybe_delivered


class OnlineRefused(Exception):
    """Head office refused the request itself (4xx: terminal revoked, bad signature): never fall back offline."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class OfflineDecision:
    approved: bool
    reason: str | None = None  # machine-readable rule that declined


@dataclass(frozen=True)
class Authorization:
    approved: bool
    method: Literal["online", "offline"]
    code: str | None = None
    reason: str | None = None
    auth_id: str | None = None
    # prefer-online only: why head office was not used
    fallback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    mode: str,
    *,
    online: Callable[[], dict[str, Any]] | None,
    offline: Callable[[], OfflineDecision],
) -> Authorization:
    """Authorize under ``mode``. ``online`` is None when the terminal has no head office configured."""
    if mode == "force-offline":
        return _offline(offline(), fallback=None)
    if mode not in ("prefer-online", "require-online"):
        raise ValueError(f"unknown payment mode {mode!r}")
    if online is None:
        if mode == "require-online":
            return Authorization(False, "online", reason="online_unavailable:no_headoffice")
        return _offline(offline(), fallback="no_headoffice")
    try:
        answer = online()
    except OnlineRefused as exc:
        return Authorization(False, "online", reason=f"headoffice_refused:{exc.code}")
    except OnlineUnavailable as exc:
        if mode == "require-online":
            return Authorization(False, "online", reason=f"online_unavailable:{exc.code}")
        return _offline(offline(), fallback=exc.code)
    approved = answer.get("approved") is True
    return Authorization(
        approved,
        "online",
        code=_str_or_none(answer.get("code")),
        reason=None if approved else (_str_or_none(answer.get("reason")) or "declined_by_issuer"),
        auth_id=_str_or_none(answer.get("auth_id")),
    )


def _offline(decision: OfflineDecision, *, fallback: str | None) -> Authorization:
    if decision.approved:
        return Authorization(True, "offline", code=OFFLINE_APPROVED_CODE, fallback=fallback)
    return Authorization(
        False, "offline", code=OFFLINE_DECLINED_CODE, reason=decision.reason or "declined_offline", fallback=fallback
    )


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def reversal_for(payment: dict[str, Any], reason: str) -> dict[str, Any]:
    """What head office needs to take back the online authorization of ``payment``: it was asked under the
    payment id as idempotency key, for the payment's type, amount and currency. ``reason`` is made a code
    (lower-case letters, digits, ``_:.-``; at most 100 characters)."""
    code = "".join(ch if ch.isalnum() or ch in "_:.-" else "_" for ch in reason.lower())[:100]
    return {"idempotency_key": payment["id"], "type": payment["type"], "amount_minor": payment["amount_minor"],
            "currency": payment["currency"], "reason": code}
