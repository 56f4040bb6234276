"""The side of the store the sync engine drives: pages in sequence order, accept/reject by sequence, dead letters
that do not block, checkpoint, statistics and last contact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from protocol.chain import WIRE_FIELDS, verify_chain
from protocol.errors import ValidationError
from tests.harness.queue import FakeEmvRead, sale


def test_pages_come_in_sequence_order_and_chain_across_pages(queue_store, card_protection):
    for i in range(25):
        sale(queue_store, card_protection, 100 + i)
    first = queue_store.pending_page(10)
    second = queue_store.pending_page(10, after_sequence=first[-1]["sequence"])
    assert [r["sequence"] for r in first + second] == list(range(1, 21))
    assert set(first[0]) == set(WIRE_FIELDS) and first[0]["envelope"].startswith("v2.")
    last_hash = verify_chain(first, start_sequence=1)
    verify_chain(second, last_hash, start_sequence=11)
    assert queue_store.mark_uploaded(range(1, 11)) == 10
    # Uploaded but unanswered rows are offered again (head office is idempotent on terminal + sequence).
    assert queue_store.pending_page(5)[0]["sequence"] == 1
    assert queue_store.transaction_by_sequence(1).sync_state == "uploaded"


def test_accept_reject_dead_letter_and_checkpoint(queue_store, card_protection):
    for i in range(10):
        sale(queue_store, card_protection, 100 + i)
    assert queue_store.checkpoint() == 0
    assert queue_store.mark_accepted([1, 2, 3, 5, 6]) == 5
    assert queue_store.checkpoint() == 3  # 4 still pending
    queue_store.mark_rejected(4, "bad_amount", "amount over the acquirer limit")
    assert queue_store.checkpoint() == 6  # a dead letter does not hold the checkpoint back
    page = queue_store.pending_page(100)
    assert [r["sequence"] for r in page] == [7, 8, 9, 10]  # ... nor the rows behind it
    dead = queue_store.rejected()
    assert [(t.sequence, t.sync_code, t.sync_reason) for t in dead] == [
        (4, "bad_amount", "amount over the acquirer limit")
    ]
    assert queue_store.mark_accepted([1]) == 0  # already accepted: no change
    queue_store.requeue(4)
    assert queue_store.pending_page(1)[0]["sequence"] == 4
    with pytest.raises(ValidationError):
        queue_store.requeue(5)
    with pytest.raises(ValidationError):
        queue_store.mark_rejected(99, "x", "y")
    with pytest.raises(ValidationError):
        queue_store.pending_page(0)
    with pytest.raises(ValidationError):
        queue_store.mark_accepted(["1"])


def test_stats_unsynced_amounts_oldest_age_and_contact(queue_store, card_protection):
    first = sale(queue_store, card_protection, 1000)
    sale(queue_store, card_protection, 500, currency="USD")
    queue_store.record(
        type="refund",
        amount_minor=200,
        currency="EUR",
        card=card_protection.protect(FakeEmvRead()),
        auth={"mode": "online"},
    )
    queue_store.void(first.uuid)
    stats = queue_store.stats(now=datetime.now(UTC) + timedelta(seconds=90))
    assert stats.unsynced_count == 4
    assert stats.unsynced_amount_minor == {"EUR": -200, "USD": 500}  # 1000 sale voided, 200 refunded
    assert 89 <= stats.oldest_unsynced_age_s < 120
    assert (stats.last_sequence, stats.checkpoint, stats.open_batch, stats.rejected_count) == (4, 0, 1, 0)
    assert stats.last_contact_at is None
    when = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    queue_store.record_contact(when)
    assert queue_store.last_contact() == when
    queue_store.mark_accepted(range(1, 5))
    after = queue_store.stats()
    assert (after.unsynced_count, after.unsynced_amount_minor, after.oldest_unsynced_age_s) == (0, {}, None)
    assert after.checkpoint == 4
    assert after.to_dict()["last_contact_at"].startswith("2026-11-23T10:00")


def test_drain_a_backlog_marks_everything_accepted(queue_store, card_protection):
    card = card_protection.protect(FakeEmvRead())
    for i in range(120):
        queue_store.record(type="sale", amount_minor=10 + i, currency="EUR", card=card, auth={"mode": "offline"})
    seen = []
    while page := queue_store.pending_page(50):
        seen += [r["sequence"] for r in page]
        queue_store.mark_accepted(range(page[0]["sequence"], page[-1]["sequence"] + 1))
    assert seen == list(range(1, 121))
    assert queue_store.checkpoint() == 120 and queue_store.stats().unsynced_count == 0


def test_sync_floor_agrees_with_a_full_scan_through_any_order_of_answers(queue_store, card_protection):
    """Pages, checkpoint and statistics start from a stored floor instead of scanning every row: after any mix of
    out-of-order accepts, dead letters and requeues they must say exactly what a scan of all rows says."""
    import random

    rng = random.Random(7)
    for i in range(60):
        sale(queue_store, card_protection, 100 + i)
    for step in range(80):
        last = queue_store.last_transaction().sequence
        op = rng.random()
        if op < 0.2:  # head office answering in order, as it mostly does
            first = queue_store.checkpoint() + 1
            queue_store.mark_accepted(range(first, min(last, first + rng.randint(0, 6)) + 1))
        elif op < 0.35:
            first = rng.randint(1, last)
            queue_store.mark_accepted(range(first, min(last, first + rng.randint(0, 6)) + 1))
        elif op < 0.5:
            queue_store.mark_accepted(rng.sample(range(1, last + 1), 3))
        elif op < 0.65:
            seq = rng.randint(1, last)
            if queue_store.transaction_by_sequence(seq).sync_state != "rejected":
                queue_store.mark_rejected(seq, "bad", "refused")
        elif op < 0.8:
            dead = queue_store.rejected()
            if dead:
                queue_store.requeue(rng.choice(dead).sequence)
        elif op < 0.9:
            queue_store.mark_uploaded(range(rng.randint(1, last), last + 1))
        else:
            sale(queue_store, card_protection, 7)
        rows = queue_store.transactions(limit=10_000)
        unsynced = [t.sequence for t in rows if t.sync_state in ("queued", "uploaded")]
        assert [r["sequence"] for r in queue_store.pending_page(10_000)] == unsynced, step
        assert queue_store.checkpoint() == (unsynced[0] - 1 if unsynced else rows[-1].sequence), step
        assert queue_store.stats().unsynced_count == len(unsynced), step
        if unsynced:
            middle = unsynced[len(unsynced) // 2]
            after = [s for s in unsynced if s > middle][:5]
            assert [r["sequence"] for r in queue_store.pending_page(5, after_sequence=middle)] == after
