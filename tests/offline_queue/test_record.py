"""Recording transactions: what one commit assigns, idempotency, voids, and clear typed errors on bad input."""

from __future__ import annotations

import re
import threading

import pytest

from offline_queue.cardprotect import ProtectedCard
from offline_queue.models import Authorization
from protocol.chain import GENESIS, verify_chain
from protocol.envelope import open_sealed
from protocol.errors import ValidationError
from tests.harness.queue import FakeEmvRead, FakeUidRead, sale

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_a_sale_gets_uuid_sequence_batch_time_and_chain_hash(queue_store, card_protection):
    first = sale(queue_store, card_protection, 1250, reference="R-1")
    second = sale(queue_store, card_protection, 300, mode="online")
    assert (first.sequence, second.sequence) == (1, 2)
    assert first.batch == second.batch == 1
    assert re.match(r"^[0-9a-f-]{36}$", first.uuid) and first.uuid != second.uuid
    assert ISO_UTC.match(first.created_at)
    assert first.prev_hash == GENESIS and second.prev_hash == first.hash
    assert (first.masked_pan, first.pan_last4, first.scheme) == ("411111******1111", "1111", "visa")
    assert first.sync_state == "queued" and first.envelope_present
    assert (second.auth_mode, second.auth_code) == ("online", "A1B2C3")
    stored = queue_store.transaction(first.uuid)
    assert stored == first  # what record() returned is exactly what was committed
    verify_chain([first.to_wire(), second.to_wire()], start_sequence=1)
    assert queue_store.verify() == 2


def test_head_office_can_open_the_stored_envelope(queue_store, card_protection, hq_keys):
    txn = sale(queue_store, card_protection)
    opened = open_sealed(hq_keys[0], queue_store.transaction(txn.uuid).envelope)
    assert opened["pan"] == "4111111111111111" and opened["expiry"] == "2812"
    assert opened["cryptogram"]["9F26"] == "1A2B3C4D5E6F7081"
    assert "4111111111111111" not in str(txn) and "4111111111111111" not in str(txn.to_public_dict())


def test_bin8_masking_and_uid_cards(queue_store, hq_keys, token_key):
    from offline_queue.cardprotect import CardProtection

    bin8 = CardProtection(token_key, hq_keys[1], pan_mask="bin8")
    txn = sale(queue_store, bin8, card=FakeEmvRead(pan="5555555555554444", scheme="mastercard"))
    assert txn.masked_pan == "55555555****4444"
    uid = sale(queue_store, bin8, card=FakeUidRead())
    assert (uid.scheme, uid.masked_pan, uid.pan_last4, uid.envelope_present) == ("uid", None, "E5F6", False)
    assert uid.token != txn.token


def test_same_idempotency_key_returns_the_recorded_transaction(queue_store, card_protection):
    first = sale(queue_store, card_protection, idempotency_key="pay-1")
    again = sale(queue_store, card_protection, idempotency_key="pay-1")
    assert again.uuid == first.uuid
    assert queue_store.transaction_by_idempotency_key("pay-1").sequence == 1
    assert queue_store.last_transaction().sequence == 1


def test_lookups(queue_store, card_protection):
    txn = sale(queue_store, card_protection)
    assert queue_store.transaction_by_sequence(1).uuid == txn.uuid
    assert queue_store.transaction("nope") is None
    assert queue_store.transaction_by_sequence(99) is None
    assert [t.uuid for t in queue_store.transactions(batch=1)] == [txn.uuid]
    assert queue_store.transactions(batch=2) == []


def test_void_in_open_batch_copies_the_card_and_nets_to_zero(queue_store, card_protection):
    original = sale(queue_store, card_protection, 700)
    void = queue_store.void(original.uuid, reference="V-1")
    assert (void.type, void.amount_minor, void.currency, void.void_of) == ("void", 700, "EUR", original.uuid)
    assert void.masked_pan == original.masked_pan and not void.envelope_present
    assert queue_store.transaction(original.uuid).voided_by == void.uuid
    totals = queue_store.open_batch().totals["by_currency"][0]
    assert (totals["sale_count"], totals["void_count"], totals["net_amount_minor"]) == (1, 1, 0)


def test_void_errors(queue_store, card_protection):
    original = sale(queue_store, card_protection, 700)
    void = queue_store.void(original.uuid)
    cases = [
        (dict(target_uuid=original.uuid), "already_voided"),
        (dict(target_uuid=void.uuid), "cannot_void_void"),
        (dict(target_uuid="00000000-0000-4000-8000-000000000000"), "unknown_transaction"),
    ]
    for kwargs, code in cases:
        with pytest.raises(ValidationError) as err:
            queue_store.void(**kwargs)
        assert err.value.code == code
    other = sale(queue_store, card_protection, 900)
    queue_store.close_batch()
    with pytest.raises(ValidationError) as err:
        queue_store.void(other.uuid)
    assert err.value.code == "void_not_allowed"
    with pytest.raises(ValidationError) as err:
        queue_store.record(
            type="void",
            amount_minor=1,
            currency="EUR",
            card=None,
            auth={"mode": "offline"},
            void_of=sale(queue_store, card_protection, 50).uuid,
        )
    assert err.value.code == "invalid_amount"
    assert queue_store.verify() == 4  # failed voids wrote nothing


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"amount_minor": 0}, "invalid_amount"),
        ({"amount_minor": -5}, "invalid_amount"),
        ({"amount_minor": 12.5}, "invalid_amount"),
        ({"amount_minor": "1250"}, "invalid_amount"),
        ({"amount_minor": True}, "invalid_amount"),
        ({"amount_minor": 10**12}, "invalid_amount"),
        ({"currency": "eur"}, "invalid_currency"),
        ({"currency": "EURO"}, "invalid_currency"),
        ({"currency": "XXX"}, "invalid_currency"),
        ({"currency": None}, "invalid_currency"),
        ({"type": "payment"}, "invalid_type"),
        ({"auth": {"mode": "maybe"}}, "invalid_auth"),
        ({"auth": {"mode": "online", "extra": 1}}, "invalid_auth"),
        ({"auth": "approved"}, "invalid_auth"),
        ({"card": None}, "invalid_card"),
        ({"card": FakeEmvRead()}, "invalid_card"),  # a raw card read is never accepted
        ({"reference": "4111111111111111"}, "card_data_in_payload"),
        ({"reference": "x" * 65}, "invalid_reference"),
        ({"reference": "bad\nline"}, "invalid_reference"),
        ({"void_of": "abc"}, "invalid_type"),
        ({"payment_id": "no-such-payment"}, "unknown_payment"),
    ],
)
def test_malformed_inputs_are_typed_errors_and_write_nothing(queue_store, card_protection, kwargs, code):
    args = {
        "type": "sale",
        "amount_minor": 1250,
        "currency": "EUR",
        "card": card_protection.protect(FakeEmvRead()),
        "auth": Authorization(mode="offline"),
        **kwargs,
    }
    with pytest.raises(ValidationError) as err:
        queue_store.record(**args)
    assert err.value.code == code
    assert "4111111111111111" not in str(err.value)
    assert queue_store.last_transaction() is None


def test_a_hand_made_card_with_a_clear_pan_is_refused(queue_store, card_protection):
    good = card_protection.protect(FakeEmvRead())
    forged = ProtectedCard(**{**good.__dict__, "masked_pan": "4111111111111111"})
    with pytest.raises(ValidationError):
        queue_store.record(type="sale", amount_minor=1, currency="EUR", card=forged, auth={"mode": "offline"})


def test_concurrent_writers_get_distinct_gapless_sequences(queue_store, card_protection):
    card = card_protection.protect(FakeEmvRead())
    errors: list[BaseException] = []

    def work():
        try:
            for _ in range(15):
                queue_store.record(type="sale", amount_minor=100, currency="EUR", card=card, auth={"mode": "online"})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert queue_store.verify() == 60


def test_atc_and_tvr_of_the_card_reach_the_record_and_the_receipt(queue_store, card_protection):
    from drivers.emv import TerminalData, read_card
    from drivers.simulators.emv_card import InProcessCard, VirtualEmvCard, load_profile
    from terminal.receipt import receipt_for_transaction, render_text

    read = read_card(InProcessCard(VirtualEmvCard(load_profile("visa"))),
                     TerminalData(amount_minor=1250, currency="EUR"), reader="test")
    assert read.atc is not None
    txn = queue_store.record(type="sale", amount_minor=1250, currency="EUR", card=card_protection.protect(read),
                             auth={"mode": "offline"})
    stored = queue_store.transaction(txn.uuid)
    assert stored.atc == read.atc == txn.atc
    assert stored.tvr == read.cryptogram["95"].upper()
    text = render_text(receipt_for_transaction(stored, merchant={"name": "Shop"}, terminal_id="T-1",
                                               copy="customer"))
    assert "ATC" in text and str(read.atc) in text
    assert "TVR" in text and stored.tvr in text
    void = queue_store.void(txn.uuid)
    assert void.atc is None and void.tvr is None


def test_timestamps_from_the_clock_reading_match_datetime_formatting():
    from datetime import UTC, datetime

    from offline_queue.store import iso_from_ns

    for ns in (0, 1_700_000_000_123_456_789, 1_796_175_596_999_999_999, 4_102_444_799_000_001_000):
        expected = datetime.fromtimestamp(ns // 1000 / 1e6, UTC).replace(tzinfo=None)
        micros = (ns // 1000) % 1_000_000
        assert iso_from_ns(ns) == expected.replace(microsecond=micros).isoformat(timespec="microseconds") + "Z"
    assert ISO_UTC.match(iso_from_ns(1_700_000_000_000_000_000))


def test_transaction_of_is_the_dataclass_and_refuses_a_partial_dict(queue_store, card_protection):
    import dataclasses

    import pytest

    from offline_queue.models import Transaction

    txn = sale(queue_store, card_protection)
    values = dataclasses.asdict(txn)
    assert Transaction.of(dict(values)) == Transaction(**values) == txn
    with pytest.raises(dataclasses.FrozenInstanceError):
        Transaction.of(dict(values)).amount_minor = 1  # type: ignore[misc]
    del values["tvr"]
    with pytest.raises(TypeError, match="tvr"):
        Transaction.of(values)


def test_transaction_ids_are_uuid7_in_sequence_order(queue_store, card_protection):
    import uuid

    made = [sale(queue_store, card_protection) for _ in range(5)]
    assert all(uuid.UUID(t.uuid).version == 7 for t in made)
    assert [t.uuid[:13] for t in made] == sorted(t.uuid[:13] for t in made)  # the millisecond part
