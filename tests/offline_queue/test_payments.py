"""The daemon's payments live in the same database: "approved" and the recorded transaction are one commit."""

from __future__ import annotations

import pytest

from protocol.errors import ValidationError
from tests.harness.queue import FakeEmvRead


def test_payment_is_idempotent_on_key_and_walks_its_states(queue_store):
    pay = queue_store.create_payment("key-1", type="sale", amount_minor=1250, currency="EUR", reference="R-1")
    assert pay.state == "waiting_for_card" and pay.mode == "prefer-online"
    assert queue_store.create_payment("key-1", type="sale", amount_minor=999, currency="EUR").id == pay.id
    queue_store.set_payment_state(pay.id, "reading")
    updated = queue_store.set_payment_state(
        pay.id, "authorizing", card={"scheme": "visa", "masked_pan": "411111******1111"}
    )
    assert updated.card["masked_pan"] == "411111******1111"
    assert queue_store.get_payment_by_key("key-1").state == "authorizing"
    assert [p.id for p in queue_store.payments_in_states(["authorizing", "reading"])] == [pay.id]
    assert queue_store.latest_payment().id == pay.id


def test_record_with_payment_id_approves_in_the_same_commit(queue_store, card_protection):
    pay = queue_store.create_payment("key-2", type="sale", amount_minor=500, currency="EUR")
    txn = queue_store.record(
        type="sale",
        amount_minor=500,
        currency="EUR",
        card=card_protection.protect(FakeEmvRead()),
        auth={"mode": "online", "code": "123456"},
        payment_id=pay.id,
        idempotency_key="key-2",
    )
    approved = queue_store.get_payment(pay.id)
    assert (approved.state, approved.txn_uuid) == ("approved", txn.uuid)
    assert approved.authorization == {"mode": "online", "code": "123456", "reason": None, "auth_id": None,
                                      "fallback": None}
    assert queue_store.transaction_for_payment(pay.id).uuid == txn.uuid
    # Recording again for the same payment returns the same transaction (retry after a crash).
    again = queue_store.record(
        type="sale",
        amount_minor=500,
        currency="EUR",
        card=card_protection.protect(FakeEmvRead()),
        auth={"mode": "online"},
        payment_id=pay.id,
    )
    assert again.uuid == txn.uuid and queue_store.last_transaction().sequence == 1


def test_final_states_stick_and_approved_needs_a_record(queue_store):
    pay = queue_store.create_payment("key-3", type="sale", amount_minor=500, currency="EUR")
    with pytest.raises(ValidationError) as err:
        queue_store.set_payment_state(pay.id, "approved")
    assert err.value.code == "invalid_state"
    queue_store.set_payment_state(pay.id, "declined", authorization={"mode": "offline", "reason": "over_txn_limit"})
    with pytest.raises(ValidationError):
        queue_store.set_payment_state(pay.id, "reading")
    assert queue_store.get_payment(pay.id).authorization["reason"] == "over_txn_limit"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"type": "payout"}, "invalid_type"),
        ({"amount_minor": 0}, "invalid_amount"),
        ({"currency": "ABC"}, "invalid_currency"),
        ({"mode": "sometimes"}, "invalid_mode"),
        ({"reference": "5555 5555 5555 4444"}, "card_data_in_payload"),
    ],
)
def test_bad_payments(queue_store, kwargs, code):
    with pytest.raises(ValidationError) as err:
        queue_store.create_payment("k", **{"type": "sale", "amount_minor": 100, "currency": "EUR", **kwargs})
    assert err.value.code == code


def test_card_data_never_goes_into_a_payment(queue_store):
    pay = queue_store.create_payment("key-4", type="sale", amount_minor=500, currency="EUR")
    for card in ({"pan": "4111111111111111"}, {"masked_pan": "4111111111111111"}, {"track2": "x"}):
        with pytest.raises(ValidationError) as err:
            queue_store.set_payment_state(pay.id, "authorizing", card=card)
        assert err.value.code == "card_data_in_payload"
    with pytest.raises(ValidationError) as err:
        queue_store.set_payment_state("missing", "reading")
    assert err.value.code == "unknown_payment"


def test_a_cancelled_payment_is_not_approved_by_a_late_record(queue_store, card_protection):
    pay = queue_store.create_payment("key-5", type="sale", amount_minor=500, currency="EUR")
    queue_store.set_payment_state(pay.id, "cancelled")
    with pytest.raises(ValidationError) as err:
        queue_store.record(
            type="sale",
            amount_minor=500,
            currency="EUR",
            card=card_protection.protect(FakeEmvRead()),
            auth={"mode": "online"},
            payment_id=pay.id,
        )
    assert err.value.code == "invalid_state"
    assert queue_store.get_payment(pay.id).state == "cancelled"
    assert queue_store.last_transaction() is None
