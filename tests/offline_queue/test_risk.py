"""Offline risk rules: each rule declines with its own reason code; properties checked with hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError as PydanticError

from offline_queue.risk import RiskParameters, RiskPayment, RiskStats, evaluate, merge_parameters

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TOKEN = "ab" * 32
PARAMS = RiskParameters()


def stats(**kw) -> RiskStats:
    return RiskStats(**{"last_contact_at": NOW - timedelta(minutes=5), "now": NOW, **kw})


def pay(amount=1000, currency="EUR", kind="sale") -> RiskPayment:
    return RiskPayment(kind, amount, currency)


def test_a_small_sale_with_recent_contact_is_approved():
    decision = evaluate(PARAMS, stats(), TOKEN, pay())
    assert decision.approved and decision.reason is None and decision.to_dict()["reasons"] == []


@pytest.mark.parametrize(
    ("params", "st_kw", "payment", "denied", "code"),
    [
        ({"offline_enabled": False}, {}, pay(), False, "offline_disabled"),
        ({"offline_refunds": False}, {}, pay(kind="refund"), False, "refund_offline_disabled"),
        ({}, {}, pay(5001), False, "over_txn_limit"),
        ({"txn_limit_by_currency": {"JPY": 3000}}, {}, pay(3001, "JPY"), False, "over_txn_limit"),
        ({}, {"unsynced_offline_amount_minor": {"EUR": 49500}}, pay(1000), False, "over_offline_total"),
        ({}, {"unsynced_offline_count": 100}, pay(), False, "over_offline_count"),
        ({}, {"last_contact_at": NOW - timedelta(days=2)}, pay(), False, "no_recent_contact"),
        ({}, {"last_contact_at": None}, pay(), False, "never_contacted"),
        ({}, {"card_count_24h": 3}, pay(), False, "velocity_count"),
        ({}, {"card_amount_24h_minor": 14500}, pay(1000), False, "velocity_amount"),
        ({}, {}, pay(), True, "denied_card"),
        ({}, {}, RiskPayment("sale", 1000, "EUR", card_expiry="2610"), False, "card_expired"),
        # refunds are money going out: the same caps on offline exposure and per-card activity
        ({}, {"unsynced_offline_amount_minor": {"EUR": 49500}}, pay(1000, kind="refund"), False, "over_offline_total"),
        ({}, {"unsynced_offline_count": 100}, pay(kind="refund"), False, "over_offline_count"),
        ({}, {"card_count_24h": 3}, pay(kind="refund"), False, "velocity_count"),
        ({}, {"card_amount_24h_minor": 14500}, pay(1000, kind="refund"), False, "velocity_amount"),
    ],
)
def test_each_rule_declines_with_its_reason(params, st_kw, payment, denied, code):
    decision = evaluate(RiskParameters(**params), stats(**st_kw), TOKEN, payment, denied=denied)
    assert not decision.approved
    assert decision.reason == code
    assert [r.code for r in decision.reasons] == [code]


def test_no_token_means_no_offline_approval_and_all_failures_are_listed():
    decision = evaluate(PARAMS, stats(card_count_24h=9, last_contact_at=None), None, pay(9999))
    assert {r.code for r in decision.reasons} == {
        "no_card_token",
        "over_txn_limit",
        "velocity_count",
        "never_contacted",
    }
    limit = next(r for r in decision.reasons if r.code == "over_txn_limit")
    assert (limit.limit, limit.value) == (5000, 9999)


def test_other_currencies_do_not_count_against_the_cap():
    assert evaluate(PARAMS, stats(unsynced_offline_amount_minor={"USD": 49999}), TOKEN, pay(1000, "EUR")).approved


def test_zero_disables_a_limit():
    params = RiskParameters(txn_limit_minor=0, max_offline_age_s=0, velocity_max_count_24h=0)
    assert evaluate(params, stats(last_contact_at=None, card_count_24h=50, card_amount_24h_minor=0), TOKEN,
                    pay(4000)).approved  # fmt: skip


def test_parameters_are_validated_and_merged():
    with pytest.raises(PydanticError):
        RiskParameters(txn_limit_minor=-1)
    with pytest.raises(PydanticError):
        RiskParameters(unknown_key=1)
    with pytest.raises(PydanticError):
        RiskParameters(txn_limit_by_currency={"EURO": 5})
    merged = merge_parameters({"txn_limit_minor": 9000, "offline_max_count": 7, "receipt_header": ["Shop"]},
                              {"offline_max_count": 3})  # fmt: skip
    assert (merged.txn_limit_minor, merged.offline_max_count) == (9000, 3)
    with pytest.raises(PydanticError):
        merge_parameters({}, {"no_such_rule": 1})
    assert RiskParameters.model_validate(RiskParameters().model_dump(mode="json")) == RiskParameters()


amounts = st.integers(min_value=1, max_value=10**7)


@settings(max_examples=200, deadline=None)
@given(
    amount=amounts,
    limit=st.integers(min_value=0, max_value=10**7),
    unsynced=st.integers(min_value=0, max_value=10**7),
    count=st.integers(min_value=0, max_value=200),
    card_count=st.integers(min_value=0, max_value=10),
    card_amount=st.integers(min_value=0, max_value=10**6),
    age=st.integers(min_value=0, max_value=3 * 86400),
)
def test_approval_iff_every_limit_holds(amount, limit, unsynced, count, card_count, card_amount, age):
    params = RiskParameters(txn_limit_minor=limit)
    s = stats(
        unsynced_offline_amount_minor={"EUR": unsynced},
        unsynced_offline_count=count,
        card_count_24h=card_count,
        card_amount_24h_minor=card_amount,
        last_contact_at=NOW - timedelta(seconds=age),
    )
    decision = evaluate(params, s, TOKEN, pay(amount))
    expected = (
        (limit == 0 or amount <= limit)
        and unsynced + amount <= params.offline_total_limit_minor
        and count + 1 <= params.offline_max_count
        and card_count + 1 <= params.velocity_max_count_24h
        and card_amount + amount <= params.velocity_max_amount_minor_24h
        and age <= params.max_offline_age_s
    )
    assert decision.approved == expected
    assert decision.approved == (not decision.reasons)


@settings(max_examples=150, deadline=None)
@given(smaller=amounts, extra=st.integers(min_value=0, max_value=10**6), unsynced=st.integers(0, 10**6))
def test_a_larger_amount_is_never_easier_to_approve(smaller, extra, unsynced):
    s = stats(unsynced_offline_amount_minor={"EUR": unsynced})
    if evaluate(PARAMS, s, TOKEN, pay(smaller + extra)).approved:
        assert evaluate(PARAMS, s, TOKEN, pay(smaller)).approved


@pytest.mark.parametrize(("expiry", "expired"), [
    ("2611", False),  # valid through the last day of its month
    ("2610", True), ("2612", False), ("2001", True), ("3001", False), (None, False), ("", False),
])
def test_a_card_expires_after_its_expiry_month(expiry, expired):
    decision = evaluate(PARAMS, stats(), TOKEN, RiskPayment("sale", 1000, "EUR", card_expiry=expiry))
    assert decision.approved is not expired and (decision.reason == "card_expired") is expired
