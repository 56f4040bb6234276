"""Offline risk rules: pure functions over (parameters, queue statistics, card token, payment).

Used when a payment is approved without head office (``force-offline``, or ``prefer-online`` when head office
cannot be reached). Every rule that fails adds a ``Reason`` with a machine-readable code, so the cashier, the
logs and head office see why; all failing rules are reported, the first is the headline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protocol.amounts import MAX_AMOUNT_MINOR, validate_currency


class RiskParameters(BaseModel):
    """Field names are also the keys of head office's parameters document and of the config's ``[risk]`` table.
    A limit of 0 disables that check (except ``offline_enabled``/``offline_refunds``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # "100" or "yes" is a mistake, not a value

    offline_enabled: bool = True
    offline_refunds: bool = True
    txn_limit_minor: int = Field(default=5000, ge=0, le=MAX_AMOUNT_MINOR)
    txn_limit_by_currency: dict[str, int] = Field(default_factory=dict)
    offline_total_limit_minor: int = Field(default=50000, ge=0, le=MAX_AMOUNT_MINOR * 1000)
    offline_total_by_currency: dict[str, int] = Field(default_factory=dict)
    offline_max_count: int = Field(default=100, ge=0, le=10_000_000)
    max_offline_age_s: int = Field(default=86400, ge=0, le=366 * 86400)
    velocity_max_count_24h: int = Field(default=3, ge=0, le=1_000_000)
    velocity_max_amount_minor_24h: int = Field(default=15000, ge=0, le=MAX_AMOUNT_MINOR * 1000)

    @field_validator("txn_limit_by_currency", "offline_total_by_currency")
    @classmethod
    def _per_currency(cls, value: dict[str, int]) -> dict[str, int]:
        for code, limit in value.items():
            validate_currency(code)
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError(f"limit for {code} must be a non-negative integer")
        return value

    def txn_limit(self, currency: str) -> int:
        return self.txn_limit_by_currency.get(currency, self.txn_limit_minor)

    def offline_total_limit(self, currency: str) -> int:
        return self.offline_total_by_currency.get(currency, self.offline_total_limit_minor)


@dataclass(frozen=True)
class RiskStats:
    """What the queue knows when the payment is evaluated (``QueueStore.risk_stats``)."""

    unsynced_offline_count: int = 0
    unsynced_offline_amount_minor: dict[str, int] = field(default_factory=dict)
    last_contact_at: datetime | None = None
    card_count_24h: int = 0  # offline-or-online sales and refunds on this token in the last 24 h, not voided
    card_amount_24h_minor: int = 0  # their amount in the payment's currency
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class RiskPayment:
    type: str  # "sale" | "refund"
    amount_minor: int
    currency: str
    # The card's expiry date (YYMM, valid through the end of that month); None when it is not known.
    card_expiry: str | None = None


def card_expired(expiry: str | None, now: datetime) -> bool:
    """A card is valid through the last day of its expiry month (EMV tag 5F24 / track 2 YYMM)."""
    if not expiry or len(expiry) != 4 or not expiry.isdigit():
        return False
    year, month = 2000 + int(expiry[:2]), int(expiry[2:])
    return (year, month) < (now.year, now.month)


@dataclass(frozen=True)
class Reason:
    code: str
    message: str
    limit: int | None = None
    value: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "limit": self.limit, "value": self.value}


@dataclass(frozen=True)
class Decision:
    approved: bool
    reasons: tuple[Reason, ...] = ()

    @property
    def reason(self) -> str | None:
        return self.reasons[0].code if self.reasons else None

    def to_dict(self) -> dict[str, Any]:
        return {"approved": self.approved, "reason": self.reason, "reasons": [r.to_dict() for r in self.reasons]}


def evaluate(
    params: RiskParameters, stats: RiskStats, token: str | None, payment: RiskPayment, *, denied: bool = False
) -> Decision:
    """Approve offline only if every rule passes. ``denied``: the card's token is on head office's deny list."""
    reasons: list[Reason] = []
    cur = payment.currency
    amount = payment.amount_minor

    if not params.offline_enabled:
        reasons.append(Reason("offline_disabled", "offline approval is switched off"))
    if payment.type == "refund" and not params.offline_refunds:
        reasons.append(Reason("refund_offline_disabled", "refunds need head office"))
    if card_expired(payment.card_expiry, stats.now):
        # An expired card is the one check an issuer would surely make online; offline the terminal makes it.
        reasons.append(Reason("card_expired", "the card has expired"))
    if token is None:
        reasons.append(Reason("no_card_token", "the card could not be identified for offline checks"))
    elif denied:
        reasons.append(Reason("denied_card", "card is on the deny list"))

    limit = params.txn_limit(cur)
    if limit and amount > limit:
        reasons.append(Reason("over_txn_limit", f"above the offline limit per transaction ({cur})", limit, amount))

    # Refunds count as much as sales: an offline refund is money going out on the terminal's word alone, so the
    # same caps on unsynced offline exposure and per-card activity apply to both.
    if payment.type in ("sale", "refund"):
        total_limit = params.offline_total_limit(cur)
        total_after = stats.unsynced_offline_amount_minor.get(cur, 0) + amount
        if total_limit and total_after > total_limit:
            reasons.append(
                Reason(
                    "over_offline_total",
                    f"unsynced offline amount would exceed the cap ({cur})",
                    total_limit,
                    total_after,
                )
            )
        if params.offline_max_count and stats.unsynced_offline_count + 1 > params.offline_max_count:
            reasons.append(
                Reason(
                    "over_offline_count",
                    "too many unsynced offline transactions",
                    params.offline_max_count,
                    stats.unsynced_offline_count + 1,
                )
            )
        if params.velocity_max_count_24h and stats.card_count_24h + 1 > params.velocity_max_count_24h:
            reasons.append(
                Reason(
                    "velocity_count",
                    "too many payments with this card in 24 h",
                    params.velocity_max_count_24h,
                    stats.card_count_24h + 1,
                )
            )
        velocity_amount = stats.card_amount_24h_minor + amount
        if params.velocity_max_amount_minor_24h and velocity_amount > params.velocity_max_amount_minor_24h:
            reasons.append(
                Reason(
                    "velocity_amount",
                    f"too much spent with this card in 24 h ({cur})",
                    params.velocity_max_amount_minor_24h,
                    velocity_amount,
                )
            )

    if params.max_offline_age_s:
        if stats.last_contact_at is None:
            reasons.append(
                Reason("never_contacted", "no successful contact with head office yet", params.max_offline_age_s)
            )
        else:
            age = int((stats.now - stats.last_contact_at).total_seconds())
            if age > params.max_offline_age_s:
                reasons.append(
                    Reason("no_recent_contact", "head office not reached for too long", params.max_offline_age_s, age)
                )

    return Decision(approved=not reasons, reasons=tuple(reasons))


def merge_parameters(hq: dict[str, Any] | None, overrides: dict[str, Any] | None) -> RiskParameters:
    """Head office's parameters with the config's ``[risk]`` table on top. Keys head office sends that this
    version does not know (e.g. ``receipt_header``) are ignored; unknown override keys are an error."""
    known = set(RiskParameters.model_fields)
    merged = {k: v for k, v in (hq or {}).items() if k in known}
    merged.update(overrides or {})
    return RiskParameters.model_validate(merged)
