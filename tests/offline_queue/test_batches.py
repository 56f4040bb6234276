"""Batches: one open batch, close computes totals per scheme and currency and opens the next atomically."""

from __future__ import annotations

import pytest

from offline_queue.totals import compute_totals
from protocol.errors import ValidationError
from tests.harness.queue import TEST_PANS, FakeEmvRead, sale

MC = FakeEmvRead(pan=TEST_PANS["mastercard"], scheme="mastercard")


def test_close_batch_totals_per_scheme_and_currency(queue_store, card_protection):
    a = sale(queue_store, card_protection, 1000)
    sale(queue_store, card_protection, 250)
    sale(queue_store, card_protection, 700, card=MC)
    sale(queue_store, card_protection, 300, currency="USD", card=MC)
    queue_store.record(
        type="refund", amount_minor=100, currency="EUR", card=card_protection.protect(MC), auth={"mode": "online"}
    )
    queue_store.void(a.uuid)
    closed = queue_store.close_batch()
    assert (closed.number, closed.status, closed.hq_status) == (1, "closed", "pending")
    by_scheme = {(r["scheme"], r["currency"]): r for r in closed.totals["by_scheme"]}
    assert by_scheme[("visa", "EUR")] == {
        "scheme": "visa",
        "currency": "EUR",
        "sale_count": 2,
        "sale_amount_minor": 1250,
        "refund_count": 0,
        "refund_amount_minor": 0,
        "void_count": 1,
        "void_amount_minor": 1000,
        "net_amount_minor": 250,
    }
    assert by_scheme[("mastercard", "EUR")]["net_amount_minor"] == 600
    assert by_scheme[("mastercard", "USD")]["sale_amount_minor"] == 300
    eur = next(r for r in closed.totals["by_currency"] if r["currency"] == "EUR")
    assert (eur["sale_count"], eur["refund_count"], eur["void_count"], eur["net_amount_minor"]) == (3, 1, 1, 850)
    assert closed.totals["count"] == 6
    nxt = queue_store.open_batch()
    assert (nxt.number, nxt.status, nxt.totals["count"]) == (2, "open", 0)
    later = sale(queue_store, card_protection)
    assert later.batch == 2
    assert [t.sequence for t in queue_store.transactions(batch=1)] == [1, 2, 3, 4, 5, 6]
    assert [t.uuid for t in queue_store.transactions(batch=2)] == [later.uuid]
    assert queue_store.transactions(batch=7) == []
    assert queue_store.batch(1).totals == closed.totals  # stored, not recomputed
    assert [b.number for b in queue_store.batches_to_report()] == [1]
    queue_store.mark_batch_reported(1, "balanced", {"differences": []})
    assert queue_store.batches_to_report() == []
    assert queue_store.batch(1).hq_status == "balanced"
    assert [b.number for b in queue_store.batches()] == [2, 1]
    with pytest.raises(ValidationError):
        queue_store.mark_batch_reported(2, "balanced")  # still open
    with pytest.raises(ValidationError):
        queue_store.mark_batch_reported(1, "fine")


def test_empty_batch_closes_with_zero_totals(queue_store):
    closed = queue_store.close_batch()
    assert closed.totals == {"count": 0, "by_scheme": [], "by_currency": []}
    assert queue_store.open_batch().number == 2


def test_head_office_gets_the_same_totals_from_the_uploaded_rows(queue_store, card_protection):
    a = sale(queue_store, card_protection, 400)
    queue_store.record(
        type="refund", amount_minor=50, currency="EUR", card=card_protection.protect(MC), auth={"mode": "online"}
    )
    r = queue_store.last_transaction()
    queue_store.void(r.uuid)  # voiding a refund adds it back
    sale(queue_store, card_protection, 10)
    wire = queue_store.pending_page(100)
    closed = queue_store.close_batch()
    assert compute_totals(wire) == closed.totals
    assert closed.totals["by_currency"][0]["net_amount_minor"] == 410
    assert a.batch == 1
