"""The per-row work of an upload before the terminal's lock (pure logic over a real keystore)."""

from __future__ import annotations

import pytest

from headoffice import ingest
from headoffice.keystore import FileKeystore
from protocol.chain import GENESIS, chain_hash
from tests.harness.queue import FakeEmvRead


@pytest.fixture
def keystore(tmp_path):
    return FileKeystore(tmp_path / "keystore")


def _page(keystore, n: int) -> dict:
    from offline_queue.cardprotect import CardProtection

    protection = CardProtection(keystore.token_key(), keystore.envelope_public_key())
    rows, prev = [], GENESIS
    for seq in range(1, n + 1):
        card = protection.protect(FakeEmvRead(atc=seq))
        row = {
            "uuid": f"01a23468-8b27-70e5-880c-{seq:012d}", "terminal_id": "T-1", "sequence": seq, "batch": 1,
            "type": "sale", "created_at": "2026-11-23T12:00:00.000000Z", "amount_minor": 100 * seq,
            "currency": "EUR", "scheme": card.scheme, "masked_pan": card.masked_pan, "pan_last4": card.pan_last4,
            "token": card.token, "aid": card.aid, "label": card.label, "entry_mode": card.entry_mode,
            "wallet": card.wallet, "auth_mode": "offline", "auth_code": None, "auth_reason": None, "auth_id": None,
            "reference": f"R-{seq}", "void_of": None, "envelope_sha256": card.envelope_sha256,
        }  # fmt: skip
        row["prev_hash"] = prev
        row["hash"] = prev = chain_hash(prev, row)
        row["envelope"] = card.envelope
        rows.append(row)
    protection.close()
    return {"transactions": rows}


class CountingKeystore:
    def __init__(self, inner):
        self.inner = inner
        self.opened = 0

    def open_envelope(self, sealed):
        self.opened += 1
        return self.inner.open_envelope(sealed)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_rows_at_or_below_the_known_head_are_not_opened_again(keystore):
    page = _page(keystore, 6)
    counting = CountingKeystore(keystore)
    prepared = ingest.prepare_page(page, "T-1", counting, known_head=4)
    assert counting.opened == 2  # rows 5 and 6 only
    assert [p.status for p in prepared] == ["rejected"] * 4 + ["accepted"] * 2  # apply_page answers 1-4 from storage
    assert all(p.row is None and p.chain_error is None for p in prepared[:4])
    assert [p.hash for p in prepared] == [r["hash"] for r in page["transactions"]]
    fresh = ingest.prepare_page(page, "T-1", keystore)
    assert [p.status for p in fresh] == ["accepted"] * 6
    assert all(p.row["card_data"] for p in fresh)


def test_a_replayed_row_still_has_its_own_hash_checked(keystore):
    page = _page(keystore, 3)
    page["transactions"][1]["amount_minor"] = 1  # changed after hashing
    prepared = ingest.prepare_page(page, "T-1", keystore, known_head=3)
    assert [p.chain_error for p in prepared] == [None, "bad_hash", None]


def test_a_token_that_is_not_the_envelopes_card_is_refused_with_its_reason(keystore):
    page = _page(keystore, 2)
    row = page["transactions"][1]
    row["token"] = "ab" * 32  # another card's token, rehashed so that the chain itself is intact
    row["hash"] = chain_hash(row["prev_hash"], row)
    prepared = ingest.prepare_page(page, "T-1", keystore)
    assert (prepared[0].status, prepared[1].status, prepared[1].reason) == ("accepted", "rejected", "envelope_mismatch")
    assert prepared[1].row["card_data"] is None and prepared[1].row["token"] is None  # nothing of it is kept


def test_a_page_prepared_against_a_head_that_then_moved_back_is_refused_whole_for_a_retry(keystore, tmp_path):
    # Heads only grow unless someone removes rows by hand; if that happens between authentication and the locked
    # apply, rows prepared as replays would be neither checked nor stored: the page is answered 503 instead.
    from datetime import timedelta

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from headoffice import enrollment
    from headoffice.db import make_engine, session_factory, upgrade
    from headoffice.errors import HQError
    from headoffice.models import Terminal, Transaction
    from protocol.signing import public_key_to_text

    engine = make_engine(f"sqlite:///{tmp_path / 'hq.sqlite'}")
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions() as s, s.begin():
        enrollment.upsert_merchant(s, "M-1", name="Shop")
        code = enrollment.create_code(s, "M-1", "T-1", timedelta(hours=1))
    with sessions() as s, s.begin():
        enrollment.enroll(s, code.code, public_key_to_text(Ed25519PrivateKey.generate().public_key()))
    page = _page(keystore, 4)
    with sessions() as s, s.begin():
        result = ingest.apply_page(s, s.get(Terminal, "T-1"), ingest.prepare_page(page, "T-1", keystore))
        assert result["accepted"] == 4
    prepared = ingest.prepare_page(page, "T-1", keystore, known_head=4)  # all four are replays now
    with sessions() as s, s.begin():  # ...and then rows 3 and 4 are removed by hand
        s.query(Transaction).filter(Transaction.sequence > 2).delete()
        terminal = s.get(Terminal, "T-1")
        terminal.head_sequence, terminal.head_hash = 2, page["transactions"][1]["hash"]
    with sessions() as s:
        with pytest.raises(HQError) as err, s.begin():
            ingest.apply_page(s, s.get(Terminal, "T-1"), prepared)
        assert err.value.status == 503
        assert s.query(Transaction).count() == 2
        retried = ingest.apply_page(s, s.get(Terminal, "T-1"), ingest.prepare_page(page, "T-1", keystore,
                                                                                    known_head=2))
        assert [r["duplicate"] for r in retried["results"]] == [True, True, False, False]
    engine.dispose()


def test_a_staff_read_on_sqlite_leaves_the_write_lock_to_terminal_uploads(tmp_path):
    """Staff reads (batch lists, exports) run in a transaction that takes no write lock: on SQLite in WAL mode a
    terminal's upload commits meanwhile. They used to BEGIN IMMEDIATE like a write, holding every upload waiting
    for as long as a large export took (and failing them after the 30 s busy timeout)."""
    import sqlite3
    import threading

    from sqlalchemy import text

    from headoffice.app import HeadOffice
    from headoffice.db import upgrade
    from headoffice.settings import HQSettings

    path = tmp_path / "hq.sqlite3"
    hq = HeadOffice(HQSettings.resolve(home=tmp_path, database_url=f"sqlite:///{path}"))
    upgrade(hq.engine)

    def upload_can_commit() -> bool:
        raw = sqlite3.connect(path, timeout=0.3, isolation_level=None)
        try:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
            return False
        finally:
            raw.close()

    def holding(read_only: bool) -> bool:
        seen: list[bool] = []

        def work(session):
            session.execute(text("SELECT count(*) FROM batches")).scalar()
            seen.append(upload_can_commit())  # a terminal's upload while this transaction is open

        worker = threading.Thread(target=hq.run, args=(work,), kwargs={"read_only": read_only})
        worker.start()
        worker.join(10)
        return seen[0]

    try:
        assert holding(read_only=True) is True
        assert holding(read_only=False) is False  # a writer's transaction does hold it, as it must
    finally:
        hq.engine.dispose()
