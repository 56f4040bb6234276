"""The chain head the store remembers between its own recordings: never stale when anything else has written."""

from __future__ import annotations

import itertools
import sqlite3

from offline_queue.store import QueueStore
from tests.harness.queue import sale


def test_two_stores_on_one_file_keep_one_gapless_chain(queue_store, queue_path, card_protection):
    # E.g. `smartpos sync` or a second process beside the daemon: each commit of the other one must be seen.
    other = QueueStore.open(queue_path, terminal_id="T-0001")
    try:
        made = []
        for i in range(12):
            store = queue_store if i % 3 else other
            made.append(sale(store, card_protection, 100 + i))
        assert [t.sequence for t in made] == list(range(1, 13))
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(made))
        assert queue_store.verify() == 12 and other.verify() == 12
    finally:
        other.close()


def test_a_batch_closed_elsewhere_moves_the_next_sale_to_the_new_batch(queue_store, queue_path, card_protection):
    first = sale(queue_store, card_protection)  # the store now remembers batch 1 as open
    other = QueueStore.open(queue_path, terminal_id="T-0001")
    try:
        other.close_batch()
    finally:
        other.close()
    second = sale(queue_store, card_protection)
    assert (first.batch, second.batch) == (1, 2)
    assert queue_store.open_batch().number == 2


def test_the_stores_own_other_writes_are_seen_too(queue_store, card_protection):
    first = sale(queue_store, card_protection)
    queue_store.close_batch()
    second = sale(queue_store, card_protection)
    assert (first.batch, second.batch, second.sequence) == (1, 2, 2)


def test_a_failed_commit_forgets_the_remembered_head(queue_store, card_protection, monkeypatch):
    import pytest

    from offline_queue.errors import StoreError

    sale(queue_store, card_protection)
    real = queue_store._wcur

    class FailingCommit:
        def execute(self, sql, *args):
            if sql == "COMMIT":
                raise sqlite3.OperationalError("disk I/O error")
            return real.execute(sql, *args)

    monkeypatch.setattr(queue_store, "_wcur", FailingCommit())
    with pytest.raises(StoreError):
        sale(queue_store, card_protection)
    assert queue_store._head is None
    monkeypatch.setattr(queue_store, "_wcur", real)
    after = sale(queue_store, card_protection)
    assert after.sequence == 2 and queue_store.verify() == 2


def test_a_new_queue_continues_a_given_chain_and_refuses_once_it_has_its_own(queue_store, queue_path,
                                                                              card_protection):
    import pytest

    from protocol.chain import ChainError
    from protocol.errors import ValidationError

    head = "ab" * 32
    with pytest.raises(ValidationError, match="64 lower-case hex"):
        queue_store.continue_chain(41, "not a hash", 6)
    queue_store.continue_chain(41, head, 6)
    first = sale(queue_store, card_protection)
    assert (first.sequence, first.prev_hash, first.batch) == (42, head, 7)
    assert queue_store.verify() == 42
    # Another store on the file (e.g. `smartpos sync` beside the daemon) sees the same start.
    other = QueueStore.open(queue_path, terminal_id="T-0001")
    try:
        assert sale(other, card_protection).sequence == 43 and other.verify() == 43
    finally:
        other.close()
    with pytest.raises(ValidationError) as refused:
        queue_store.continue_chain(100, head, 9)
    assert refused.value.code == "queue_not_empty"
    # A changed base is caught by verify: the first row no longer chains to it.
    queue_store._writer.execute("UPDATE meta SET value = ? WHERE key = 'chain_base_hash'", ("cd" * 32,))
    with pytest.raises(ChainError):
        queue_store.verify()
