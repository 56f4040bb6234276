"""No full PAN or track data in the database file, its WAL, or any log line; accepted envelopes are wiped so
their bytes do not linger in the file either."""

from __future__ import annotations

import logging

import pytest

from offline_queue.errors import StoreError
from protocol.errors import ValidationError
from tests.harness.queue import TEST_PANS, FakeEmvRead

CARDS = [
    FakeEmvRead(),
    FakeEmvRead(pan=TEST_PANS["mastercard"], scheme="mastercard", track2="5555555555554444D29122010000000000000F"),
    FakeEmvRead(pan=TEST_PANS["amex"], scheme="amex", track2="378282246310005D2701201000000000F", wallet=True),
]


def _secrets() -> list[bytes]:
    out = []
    for card in CARDS:
        out += [card.pan.encode(), card.track2.encode(), bytes.fromhex(card.pan + "0" * (len(card.pan) % 2))]
        out.append(card.track2.split("D")[1].encode())  # expiry + service code + discretionary data
    return out


def _files(path):
    return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name)}


def test_pan_and_track_data_are_nowhere_in_db_wal_or_logs(queue_path, card_protection, caplog):
    from offline_queue.store import QueueStore

    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")  # even statement logging must not show them
    with QueueStore.open(queue_path, terminal_id="T-0001") as store:
        uuids = []
        for i in range(30):
            card = CARDS[i % 3]
            pay = store.create_payment(f"k-{i}", type="sale", amount_minor=100 + i, currency="EUR")
            protected = card_protection.protect(card)
            store.set_payment_state(pay.id, "authorizing", card=protected.to_public_dict())
            txn = store.record(
                type="sale",
                amount_minor=100 + i,
                currency="EUR",
                card=protected,
                auth={"mode": "offline"},
                payment_id=pay.id,
                idempotency_key=f"k-{i}",
            )
            store.add_print_job("sale", txn.uuid, f"print-{i}", {"last4": txn.pan_last4, "lines": ["VISA ****1111"]})
            uuids.append(txn.uuid)
        store.void(uuids[0])
        # Attempts to smuggle card data in are refused, and the refusal does not echo it.
        for attempt in (
            lambda: store.add_print_job("sale", None, "x", {"pan": CARDS[0].pan}),
            lambda: store.record(
                type="sale",
                amount_minor=1,
                currency="EUR",
                card=protected,
                auth={"mode": "offline"},
                reference=CARDS[1].pan,
            ),
        ):
            with pytest.raises(ValidationError) as err:
                attempt()
            assert CARDS[0].pan not in str(err.value) and CARDS[1].pan not in str(err.value)
        live = _files(queue_path)  # while open: main file + WAL + shm
        assert any(name.endswith("-wal") for name in live)
    closed = _files(queue_path)
    logs = caplog.text.encode()
    for secret in _secrets():
        for name, data in {**live, **closed, "logs": logs}.items():
            assert secret not in data, f"card data found in {name}"


def test_accepted_envelopes_are_wiped_from_file_and_wal(queue_path, card_protection):
    from offline_queue.store import QueueStore

    with QueueStore.open(queue_path, terminal_id="T-0001") as store:
        txns = [
            store.record(
                type="sale",
                amount_minor=100,
                currency="EUR",
                card=card_protection.protect(CARDS[i % 3]),
                auth={"mode": "offline"},
            )
            for i in range(40)
        ]
        envelopes = [t.envelope.encode() for t in txns]
        store.compact()
        on_disk = b"".join(_files(queue_path).values())
        assert all(env in on_disk for env in envelopes)  # the check below can see them when they are there
        store.mark_accepted(range(1, 31))
        store.compact()
        on_disk = b"".join(_files(queue_path).values())
        gone = [env for env in envelopes[:30] if env[10:60] in on_disk]
        assert gone == []
        assert all(env in on_disk for env in envelopes[30:])  # not yet accepted: kept
        assert store.transaction_by_sequence(1).envelope_present is False
        assert store.verify() == 40  # the chain still verifies without the envelopes


def test_store_errors_do_not_carry_card_data(queue_path, card_protection):
    from offline_queue.store import QueueStore

    with QueueStore.open(queue_path, terminal_id="T-0001") as store:
        store.close()
        with pytest.raises(StoreError) as err:
            store.record(
                type="sale",
                amount_minor=1,
                currency="EUR",
                card=card_protection.protect(CARDS[0]),
                auth={"mode": "offline"},
            )
        assert err.value.code == "store_closed" and CARDS[0].pan not in str(err.value)
