"""The queue statistics the risk rules read come from the recorded transactions and the stored deny list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from offline_queue.risk import RiskParameters, RiskPayment, evaluate
from tests.harness.queue import TEST_PANS, FakeEmvRead, sale


def test_risk_stats_follow_the_queue(queue_store, card_protection):
    visa = card_protection.protect(FakeEmvRead())
    mc = card_protection.protect(FakeEmvRead(pan=TEST_PANS["mastercard"], scheme="mastercard"))
    for amount in (1000, 2000):
        sale(queue_store, card_protection, amount)  # offline, visa
    voided = sale(queue_store, card_protection, 4000)
    queue_store.void(voided.uuid)
    sale(queue_store, card_protection, 300, mode="online")
    sale(queue_store, card_protection, 700, card=FakeEmvRead(pan=TEST_PANS["mastercard"], scheme="mastercard"))
    sale(queue_store, card_protection, 900, currency="USD")
    stats = queue_store.risk_stats(visa.token, "EUR")
    assert stats.unsynced_offline_count == 4  # voided and online ones excluded
    assert stats.unsynced_offline_amount_minor == {"EUR": 3700, "USD": 900}
    assert (stats.card_count_24h, stats.card_amount_24h_minor) == (4, 3300)  # visa sales, EUR amounts, not voided
    assert queue_store.risk_stats(mc.token, "EUR").card_count_24h == 1
    tomorrow = queue_store.risk_stats(visa.token, "EUR", now=datetime.now(UTC) + timedelta(hours=25))
    assert tomorrow.card_count_24h == 0
    queue_store.mark_accepted(range(1, 4))
    assert queue_store.risk_stats(visa.token, "EUR").unsynced_offline_amount_minor == {"EUR": 700, "USD": 900}


def test_velocity_declines_the_fourth_tap_of_the_same_card(queue_store, card_protection):
    queue_store.record_contact()
    card = card_protection.protect(FakeEmvRead())
    params = RiskParameters()
    decisions = []
    for _ in range(4):
        decision = evaluate(params, queue_store.risk_stats(card.token, "EUR"), card.token,
                            RiskPayment("sale", 500, "EUR"), denied=queue_store.is_denied(card.token))  # fmt: skip
        decisions.append(decision.reason)
        if decision.approved:
            queue_store.record(type="sale", amount_minor=500, currency="EUR", card=card, auth={"mode": "offline"})
    assert decisions == [None, None, None, "velocity_count"]


def test_deny_list_from_parameters(queue_store, card_protection):
    card = card_protection.protect(FakeEmvRead())
    assert not queue_store.is_denied(card.token)
    queue_store.save_parameters(4, {"txn_limit_minor": 2000}, [card.token, "cd" * 32])
    stored = queue_store.parameters()
    assert (stored.version, stored.parameters, stored.deny_count) == (4, {"txn_limit_minor": 2000}, 2)
    assert queue_store.is_denied(card.token)
    queue_store.save_parameters(5, {}, [])
    assert not queue_store.is_denied(card.token) and queue_store.parameters().version == 5


def test_offline_refunds_count_towards_the_caps_and_the_cards_activity(queue_store, card_protection):
    """Five offline refunds onto one card with head office down: the count cap and the card's velocity stop them."""
    queue_store.record_contact()
    card = card_protection.protect(FakeEmvRead())
    params = RiskParameters(offline_max_count=2)
    decisions = []
    for _ in range(5):
        decision = evaluate(params, queue_store.risk_stats(card.token, "EUR"), card.token,
                            RiskPayment("refund", 1900, "EUR"))
        decisions.append(decision.reason)
        if decision.approved:
            queue_store.record(type="refund", amount_minor=1900, currency="EUR", card=card, auth={"mode": "offline"})
    assert decisions == [None, None, "over_offline_count", "over_offline_count", "over_offline_count"]
    stats = queue_store.risk_stats(card.token, "EUR")
    assert (stats.unsynced_offline_count, stats.unsynced_offline_amount_minor) == (2, {"EUR": 3800})
    assert (stats.card_count_24h, stats.card_amount_24h_minor) == (2, 3800)
