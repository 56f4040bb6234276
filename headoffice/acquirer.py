"""The acquirer connector interface and the built-in simulated acquirer.

A real acquirer integration implements ``AcquirerConnector.authorize``. The simulator's rules are stored in the
database (``hq_settings``), so every ``serve`` process applies the same rules and tests can change them live
(``smartpos-hq acquirer set ...``).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from headoffice.cardfields import is_masked


class _KeyedPayment(BaseModel):
    """What names one authorization of a terminal: its idempotency key, and the payment it is for."""

    model_config = ConfigDict(extra="forbid")

    idempotency_key: str = Field(min_length=1, max_length=100)
    type: str = Field(pattern="^(sale|refund)$")
    amount_minor: StrictInt = Field(gt=0, le=1_000_000_000)
    currency: str = Field(pattern="^[A-Z]{3}$")


class AuthRequest(_KeyedPayment):
    token: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    masked_pan: str | None = Field(default=None, max_length=19)
    scheme: str | None = Field(default=None, max_length=20)
    entry_mode: str | None = Field(default=None, max_length=20)
    reference: str | None = Field(default=None, max_length=100)
    envelope: str | None = Field(default=None, max_length=20000)

    @field_validator("masked_pan")
    @classmethod
    def _masked(cls, value: str | None) -> str | None:
        if value is not None and not is_masked(value):
            raise ValueError("masked_pan must be masked (at most first 8 and last 4 digits shown)")
        return value


class ReversalRequest(_KeyedPayment):
    """The terminal takes back an authorization it asked for under ``idempotency_key``."""

    reason: str | None = Field(default=None, max_length=100, pattern="^[a-z0-9_:.-]+$")


@dataclass(frozen=True)
class AcquirerResult:
    approved: bool
    code: str | None
    reason: str | None


class AcquirerConnector(Protocol):
    def authorize(self, request: AuthRequest, *, denied: bool) -> AcquirerResult:
        """``denied``: head office's deny list holds the card's token. Blocking; runs in a worker thread."""
        ...

    def reverse(self, auth_id: str | None, request: ReversalRequest) -> None:
        """Release an approval head office gave under ``auth_id`` (the terminal reversed it); ``auth_id`` None: head
        office stored no approval under ``request.idempotency_key`` (still in flight, or lost after the acquirer
        answered), so release whatever the acquirer approved under that key, if anything. Blocking. Raise when the
        acquirer did not confirm: head office then stores nothing and the terminal sends the reversal again."""
        ...


class SimulatedRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approve: bool = True
    decline_over_minor: int | None = Field(default=None, ge=0)
    delay_ms: int = Field(default=0, ge=0, le=120_000)
    decline_deny_listed: bool = True


SETTING_KEY = "acquirer.simulated"


class SimulatedAcquirer:
    def __init__(self, rules: SimulatedRules) -> None:
        self.rules = rules

    def authorize(self, request: AuthRequest, *, denied: bool) -> AcquirerResult:
        if self.rules.delay_ms:
            time.sleep(self.rules.delay_ms / 1000)
        if denied and self.rules.decline_deny_listed:
            return AcquirerResult(False, None, "deny_listed")
        if self.rules.decline_over_minor is not None and request.amount_minor > self.rules.decline_over_minor:
            return AcquirerResult(False, None, "over_limit")
        if not self.rules.approve:
            return AcquirerResult(False, None, "declined")
        return AcquirerResult(True, f"{secrets.randbelow(1_000_000):06d}", None)

    def reverse(self, auth_id: str | None, request: ReversalRequest) -> None:
        """The simulator holds no funds: head office's reversed row is the whole effect."""


def rules_from_setting(value: Any) -> SimulatedRules:
    return SimulatedRules.model_validate(value or {})
