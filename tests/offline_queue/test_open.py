"""Opening the store: migrations on open, old databases upgraded in place, newer and damaged files refused
with a clear message, and never an empty queue created over an existing file."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat

import pytest
from sqlalchemy import create_engine

from offline_queue.errors import SchemaTooNewError, StoreCorruptError, TerminalMismatchError
from offline_queue.store import QueueStore, _create, head_revision
from offline_queue.tables import metadata
from protocol.chain import GENESIS, chain_hash
from tests.harness.queue import sale


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _filled(path, protection, n=200):
    with QueueStore.open(path, terminal_id="T-0001") as s:
        for i in range(n):
            sale(s, protection, 100 + i, reference=f"R-{i}")
    assert not path.with_name(path.name + "-wal").exists()  # clean close folds the WAL in


def test_new_store_is_created_private_and_at_the_head_revision(queue_path):
    with QueueStore.open(queue_path, terminal_id="T-0001") as s:
        assert s.open_batch().number == 1
    assert stat.S_IMODE(queue_path.stat().st_mode) == 0o600
    with sqlite3.connect(queue_path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert list(queue_path.parent.glob(".*creating*")) == []


def test_migrations_produce_exactly_the_declared_schema(queue_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    QueueStore.open(queue_path, terminal_id="T-0001").close()
    engine = create_engine(f"sqlite:///{queue_path}")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def test_an_old_database_is_upgraded_in_place_keeping_its_transactions(queue_path):
    _create(queue_path, busy_timeout_s=5, target="0001_transactions")  # what the first release wrote
    row = {
        "uuid": "11111111-1111-4111-8111-111111111111",
        "terminal_id": "T-0001",
        "sequence": 1,
        "batch": 1,
        "type": "sale",
        "created_at": "2026-01-02T03:04:05.000000Z",
        "amount_minor": 990,
        "currency": "EUR",
        "scheme": "visa",
        "masked_pan": "411111******1111",
        "pan_last4": "1111",
        "token": "cd" * 32,
        "aid": "A0000000031010",
        "label": "VISA",
        "entry_mode": "contactless",
        "wallet": False,
        "auth_mode": "offline",
        "auth_code": None,
        "auth_reason": None,
        "auth_id": None,
        "reference": "OLD-1",
        "void_of": None,
        "envelope_sha256": None,
    }
    digest = chain_hash(GENESIS, row)
    with sqlite3.connect(queue_path) as db:
        db.execute(
            "INSERT INTO batches (number, status, opened_at, first_sequence) "
            "VALUES (1, 'open', '2026-01-02T00:00:00.000000Z', 1)"
        )
        cols = [*row, "net_sign", "prev_hash", "hash", "sync_state"]
        db.execute(
            f"INSERT INTO transactions ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [*row.values(), 1, GENESIS, digest, "queued"],
        )
    db.close()
    with QueueStore.open(queue_path, terminal_id="T-0001") as s:
        old = s.transaction(row["uuid"])
        assert (old.reference, old.amount_minor, old.hash, old.payment_id) == ("OLD-1", 990, digest, None)
        pay = s.create_payment("k", type="sale", amount_minor=5, currency="EUR")  # table added by 0002
        assert pay.state == "waiting_for_card"
        assert s.verify() == 1
    with sqlite3.connect(queue_path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone()[0] == head_revision()


def test_a_database_from_a_newer_version_is_refused_untouched(queue_path):
    QueueStore.open(queue_path, terminal_id="T-0001").close()
    with sqlite3.connect(queue_path) as db:
        db.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    db.close()
    before = _digest(queue_path)
    with pytest.raises(SchemaTooNewError) as err:
        QueueStore.open(queue_path, terminal_id="T-0001")
    assert err.value.code == "schema_too_new"
    assert "0099_from_the_future" in err.value.message and "newer" in err.value.message
    assert _digest(queue_path) == before


def _truncate(path):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _bad_header(path):
    with open(path, "r+b") as f:
        f.write(b"NOT AN SQLITE DB")


def _zero(path):
    path.write_bytes(b"")


def _garbage(path):
    path.write_bytes(os.urandom(50000))


def _smash_pages(path):
    # Overwrite the middle of the file (b-tree pages) but keep the header: only the integrity check can tell.
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(4096 * 2)
        f.write(b"\xff" * min(4096 * 4, size - 4096 * 3))


@pytest.mark.parametrize("damage", [_truncate, _bad_header, _zero, _garbage, _smash_pages])
def test_a_damaged_database_is_refused_with_a_recovery_pointer_and_left_alone(queue_path, card_protection, damage):
    _filled(queue_path, card_protection)
    damage(queue_path)
    before = _digest(queue_path)
    with pytest.raises(StoreCorruptError) as err:
        QueueStore.open(queue_path, terminal_id="T-0001")
    assert err.value.code == "store_corrupt"
    assert str(queue_path) in err.value.message and "Recovery" in err.value.message
    assert _digest(queue_path) == before  # never repaired, emptied or replaced behind the operator's back
    assert not queue_path.with_name(queue_path.name + "-wal").exists() or damage is _smash_pages


def test_a_foreign_sqlite_file_is_not_taken_over(queue_path):
    queue_path.parent.mkdir(parents=True)
    with sqlite3.connect(queue_path) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    db.close()
    before = _digest(queue_path)
    with pytest.raises(StoreCorruptError) as err:
        QueueStore.open(queue_path, terminal_id="T-0001")
    assert err.value.code == "not_a_queue"
    assert _digest(queue_path) == before


def test_another_terminals_queue_is_refused(queue_path, card_protection):
    with QueueStore.open(queue_path, terminal_id="T-0001") as s:
        sale(s, card_protection)
    with pytest.raises(TerminalMismatchError) as err:
        QueueStore.open(queue_path, terminal_id="T-0002")
    assert "T-0001" in err.value.message


def test_an_empty_queue_follows_a_re_enrollment(queue_path):
    QueueStore.open(queue_path, terminal_id="T-0001").close()
    with QueueStore.open(queue_path, terminal_id="T-0002") as s:
        assert s.terminal_id == "T-0002"


def test_stale_creation_leftovers_are_cleaned(queue_path):
    queue_path.parent.mkdir(parents=True)
    stale = queue_path.with_name(f".{queue_path.name}.999999999.creating")
    stale.write_bytes(b"half made")
    QueueStore.open(queue_path, terminal_id="T-0001").close()
    assert not stale.exists()


def test_upgrading_a_queue_with_answered_rows_keeps_its_sync_position(queue_path, card_protection):
    """Revision 0003 replaces the unsynced-rows index by a stored floor: it must start where the old queue was."""
    from alembic import command

    from offline_queue.store import _alembic_config, _make_engine

    with QueueStore.open(queue_path, terminal_id="T-0001") as s:
        for i in range(8):
            sale(s, card_protection, 100 + i)
        s.mark_accepted([1, 2, 3, 5])
        s.mark_rejected(4, "bad", "refused")
    engine = _make_engine(queue_path, max_db_bytes=None, busy_timeout_s=5)
    with engine.begin() as conn:  # back to what 0002 wrote: the index, and no floor
        cfg = _alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002_payments_printjobs")
    engine.dispose()
    with sqlite3.connect(queue_path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'sync_floor'").fetchone() is None
        assert db.execute("SELECT 1 FROM sqlite_master WHERE name = 'ix_transactions_unsynced'").fetchone()
    db.close()
    with QueueStore.open(queue_path, terminal_id="T-0001") as s:
        assert [r["sequence"] for r in s.pending_page(100)] == [6, 7, 8]
        assert s.checkpoint() == 5
        assert s.verify() == 8
    with sqlite3.connect(queue_path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'sync_floor'").fetchone() == ("6",)
        assert db.execute("SELECT 1 FROM sqlite_master WHERE name = 'ix_transactions_unsynced'").fetchone() is None
    db.close()
