"""The sync engine against a real head office over HTTP (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime

import pytest

from offline_queue.hqclient import HeadOfficeRejected, HeadOfficeUnreachable
from offline_queue.sync import SyncEngine
from tests.harness.headoffice import HQ, TEST_PANS, TerminalEnv, free_port


def test_drains_queue_in_pages_and_head_office_holds_the_same_totals(terminal_env: TerminalEnv):
    total = terminal_env.record(1234)
    progress = []
    with terminal_env.store() as store, terminal_env.client() as client:
        result = SyncEngine(store, client, page_size=100, on_progress=progress.append).run_once()
        assert result.ok and result.accepted == 1234 and result.rejected == 0 and result.pages == 13
        stats = store.stats()
        assert stats.unsynced_count == 0 and stats.checkpoint == 1234
        assert store.last_contact() is not None
        # Accepted rows lose their sealed envelope; the chain still verifies locally.
        assert all(not t.envelope_present for t in store.transactions(limit=2000))
        assert store.verify() == 1234
    assert terminal_env.hq_rows() == (1234, 1234, total)
    assert progress[-1].done == 1234 and progress[-1].total == 1234


def test_second_pass_after_lost_acknowledgement_stores_nothing_twice(terminal_env: TerminalEnv):
    total = terminal_env.record(50)
    with terminal_env.store() as store, terminal_env.client() as client:
        page = store.pending_page(50)
        client.upload(page)  # head office stores it; the terminal "never hears back"
        result = SyncEngine(store, client).run_once()
        assert result.accepted == 50 and result.duplicates == 50
    assert terminal_env.hq_rows() == (50, 50, total)


def test_head_office_rejects_an_unreadable_envelope_alone(terminal_env: TerminalEnv):
    from protocol.chain import chain_hash, envelope_digest
    from protocol.envelope import generate_keypair, seal

    terminal_env.record(3)
    _private, other_public = generate_keypair()
    bogus = seal(other_public, {"pan": TEST_PANS[0]})
    with terminal_env.store() as store, terminal_env.client() as client:
        page = store.pending_page(10)
        # A consistent chain around an envelope sealed to the wrong key, as a terminal with a broken key would send.
        page[1]["envelope"] = bogus
        page[1]["envelope_sha256"] = envelope_digest(bogus)
        page[1]["hash"] = chain_hash(page[1]["prev_hash"], page[1])
        page[2]["prev_hash"] = page[1]["hash"]
        page[2]["hash"] = chain_hash(page[2]["prev_hash"], page[2])
        answer = client.upload(page)
        assert [r.status for r in answer.results] == ["accepted", "rejected", "accepted"]
        assert answer.results[1].reason == "envelope_unreadable"


def test_gap_answers_never_dead_letter_and_a_requeued_dead_letter_heals_the_chain(hq: HQ, terminal_env: TerminalEnv):
    """Head office lacks #3, which this terminal dead-lettered: the rows after it are fine and stay queued (a gap
    is no verdict on them), the pass stops with headoffice_behind, and requeueing #3 drains everything."""
    terminal_env.record(5)
    with terminal_env.store() as store, terminal_env.client() as client:
        client.upload(store.pending_page(2))
        store.mark_accepted([1, 2])
        store.mark_rejected(3, "lost", "lost in a test")
        result = SyncEngine(store, client).run_once(wait=True)  # no retry loop either: it stops
        assert not result.ok and result.error_code == "headoffice_behind"
        assert {t.sequence for t in store.rejected()} == {3}
        assert store.stats().unsynced_count == 2 and result.rejected == 0
        store.requeue(3)
        result = SyncEngine(store, client).run_once()
        assert result.ok and result.accepted == 3 and store.stats().unsynced_count == 0
    assert terminal_env.hq_rows()[0] == 5


def test_transient_4xx_are_retried_not_dead_lettered(hq: HQ, terminal_env: TerminalEnv):
    """A rate-limiting proxy (429) or a proxy timeout (408) in front of head office is weather, not a verdict."""
    import httpx

    answers = iter([429, 408, 429])

    class Flaky(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/transactions"):
                status = next(answers, None)
                if status is not None:
                    return httpx.Response(status, json={"error": {"code": "rate_limited", "message": "slow down"}})
            return super().handle_request(request)

    terminal_env.record(6)
    with terminal_env.store() as store, terminal_env.client(transport=Flaky()) as client:
        engine = SyncEngine(store, client, page_size=2, backoff_base_s=0.01, backoff_max_s=0.02)
        result = engine.run_once(wait=True)
        assert result.ok and result.accepted == 6 and result.rejected == 0 and result.retries >= 1
        assert store.rejected() == [] and store.stats().unsynced_count == 0
        assert next(answers, None) is None  # all three refusals were met (and retried)
    assert terminal_env.hq_rows()[0] == 6


def test_parameters_change_reaches_the_terminal_on_next_sync(hq: HQ, terminal_env: TerminalEnv):
    with terminal_env.store() as store, terminal_env.client() as client:
        engine = SyncEngine(store, client)
        first = engine.run_once()
        assert first.ok and store.parameters() is not None
        version = store.parameters().version
        hq.cli("parameters", "set", "offline_max_count=7")
        hq.cli("deny", "add", "ef" * 32)
        second = engine.run_once()
        assert second.parameters_updated
        stored = store.parameters()
        assert stored.version > version and stored.parameters["offline_max_count"] == 7
        assert store.is_denied("ef" * 32)
        third = engine.run_once()
        assert not third.parameters_updated
        hq.cli("deny", "remove", "ef" * 32)


def test_closed_batch_with_refund_and_void_is_reported_and_balanced(terminal_env: TerminalEnv):
    from offline_queue.cardprotect import CardProtection
    from tests.harness.headoffice import emv_card

    terminal_env.record(20, amount=500)
    terminal_env.record(3, amount=700, pan=TEST_PANS[1], scheme="mastercard")
    card = CardProtection.from_state_dir(terminal_env.state_dir).protect(emv_card())
    with terminal_env.store() as store, terminal_env.client() as client:
        store.record(type="refund", amount_minor=250, currency="EUR", card=card, auth={"mode": "offline"})
        sale = store.record(type="sale", amount_minor=999, currency="EUR", card=card, auth={"mode": "offline"})
        store.void(sale.uuid, auth={"mode": "offline"})
        closed = store.close_batch()
        result = SyncEngine(store, client).run_once()
        assert result.ok and result.batches_reported == 1
        reported = store.batch(closed.number)
        assert reported.hq_status == "balanced", reported.hq_detail
    hq = terminal_env.hq
    batch_id, status = hq.sql("SELECT id, status FROM batches WHERE terminal_id = :t AND batch_no = :b",
                              t=terminal_env.terminal_id, b=closed.number)[0]
    assert status == "balanced"
    import csv
    import io

    lines = list(csv.reader(io.StringIO(hq.cli("batches", "pull", str(batch_id), "--format", "csv"))))
    col = {name: i for i, name in enumerate(lines[0])}
    trailer = {line[col["type"]]: (int(line[col["amount_minor"]]), int(line[col["count"]]),
                                   int(line[col["net_minor"]])) for line in lines if line[0] == "trailer"}
    sales = sum(500 + (i % 7) for i in range(20)) + sum(700 + (i % 7) for i in range(3)) + 999
    assert trailer["sale"] == (sales, 24, sales)
    assert trailer["refund"] == (250, 1, -250) and trailer["void"] == (999, 1, -999)  # the void of a sale
    assert trailer["net"] == (sales - 250 - 999, 26, sales - 250 - 999)


def test_unreachable_head_office_is_typed_and_nothing_is_lost(terminal_env: TerminalEnv):
    terminal_env.record(10)
    dead = f"http://127.0.0.1:{free_port()}"
    with terminal_env.store() as store, terminal_env.client(dead, timeout=1.0) as client:
        with pytest.raises(HeadOfficeUnreachable):
            client.ping()
        contacts = []
        engine = SyncEngine(store, client, on_contact=contacts.append)
        result = engine.run_once()
        assert not result.ok and result.error_code == "unreachable"
        assert contacts == [False] and engine.status()["online"] is False
        assert store.stats().unsynced_count == 10


def test_wait_mode_retries_with_backoff_until_head_office_answers(hq: HQ, terminal_env: TerminalEnv):
    from tests.harness.faultproxy import FaultProxy

    terminal_env.record(30)
    host, port = "127.0.0.1", int(hq.url.rsplit(":", 1)[1])
    # Every connection reset for the first ones, then the proxy lets traffic through.
    proxy = FaultProxy((host, port), reset_rate=1.0, delay_rate=0, cut_rate=0).start()
    try:
        with terminal_env.store() as store, terminal_env.client(proxy.url, timeout=2.0) as client:
            engine = SyncEngine(store, client, backoff_base_s=0.05, backoff_max_s=0.2, rng=random.Random(3))
            done = threading.Event()
            box = {}

            def run():
                box["result"] = engine.run_once(wait=True)
                done.set()

            worker = threading.Thread(target=run)
            worker.start()
            assert not done.wait(0.5)  # still retrying
            proxy.reset_rate = 0.0
            assert done.wait(20)
            worker.join()
            result = box["result"]
            assert result.ok and result.accepted == 30 and result.retries >= 2
    finally:
        proxy.stop()
    assert terminal_env.hq_rows()[0] == 30


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    engine = SyncEngine(store=None, client=None, backoff_base_s=1.0, backoff_max_s=30.0,  # type: ignore[arg-type]
                        rng=random.Random(7))
    delays = [engine.backoff_delay(n) for n in range(8)]
    for n, delay in enumerate(delays):
        ceiling = min(30.0, 2.0**n)
        assert ceiling / 2 <= delay <= ceiling
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not a fixed schedule


def test_refused_terminal_stops_without_touching_rows(hq: HQ, terminal_env: TerminalEnv, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from offline_queue.hqclient import HeadOfficeClient

    terminal_env.record(4)
    with terminal_env.store() as store, HeadOfficeClient(hq.url, terminal_env.terminal_id,
                                                         Ed25519PrivateKey.generate()) as client:
        with pytest.raises(HeadOfficeRejected) as err:
            client.ping()
        assert err.value.is_auth
        store.record_contact(datetime(2026, 1, 1, tzinfo=UTC))
        engine = SyncEngine(store, client)
        result = engine.run_once()
        assert not result.ok and result.error_code == "bad_signature"
        assert store.stats().unsynced_count == 4 and store.rejected() == []
        # A head office that refuses the terminal is no successful contact: the offline age rule keeps counting.
        assert store.last_contact() == datetime(2026, 1, 1, tzinfo=UTC)
        assert engine.status()["online"] is False


def test_run_forever_syncs_on_wake_and_stops_promptly(terminal_env: TerminalEnv):
    import time

    with terminal_env.store() as store, terminal_env.client() as client:
        contacts = []
        engine = SyncEngine(store, client, on_contact=contacts.append)
        stop = threading.Event()
        loop = threading.Thread(target=engine.run_forever, args=(stop,), kwargs={"interval_s": 60.0})
        loop.start()
        try:
            deadline = time.monotonic() + 10
            while engine.status()["last_result"] is None and time.monotonic() < deadline:
                time.sleep(0.02)
            total = terminal_env.record(7)
            engine.wake()  # e.g. right after an offline approval: no waiting for the 60 s interval
            deadline = time.monotonic() + 10
            while terminal_env.hq_rows()[0] < 7 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert terminal_env.hq_rows() == (7, 7, total)
            status = engine.status()
            assert status["online"] is True and status["last_contact"] is not None and True in contacts
        finally:
            stop.set()
            loop.join(5)
        assert not loop.is_alive()


def test_compressed_uploads_arrive_the_same(terminal_env: TerminalEnv):
    total = terminal_env.record(300)
    with terminal_env.store() as store, terminal_env.client(compress=True) as client:
        result = SyncEngine(store, client, page_size=120).run_once()
        assert result.ok and result.accepted == 300
    assert terminal_env.hq_rows() == (300, 300, total)


def test_batch_missing_at_head_office_is_reported_out_of_balance_with_the_missing_sequences(
        terminal_env: TerminalEnv):
    terminal_env.record(5, amount=100)
    with terminal_env.store() as store, terminal_env.client() as client:
        closed = store.close_batch()
        client.upload(store.pending_page(2))
        store.mark_accepted([1, 2])
        store.mark_rejected(3, "lost", "lost in a test")  # never reaches head office: 4 and 5 wait behind it
        result = SyncEngine(store, client).run_once()
        assert result.error_code == "headoffice_behind" and result.batches_reported == 1
        reported = store.batch(closed.number)
        assert reported.hq_status == "out_of_balance"
        assert reported.hq_detail["missing_sequences"] == [3, 4, 5]
        (diff,) = reported.hq_detail["differences"]
        assert (diff["terminal_count"], diff["hq_count"]) == (5, 2)


def test_a_terminal_enrolled_at_a_head_office_without_v2_seals_v1_until_told_otherwise(terminal_env: TerminalEnv):
    # Enrolled at a 0.1 head office (its answer named no envelope formats): v1 envelopes, which any head office
    # opens. The first sync answer of a 0.2 head office announces v2; the terminal keeps that and switches.
    import json

    from offline_queue.cardprotect import CardProtection
    from tests.harness.headoffice import emv_card

    enrollment = terminal_env.state_dir / "enrollment.json"
    doc = json.loads(enrollment.read_text())
    assert doc["envelope_versions"] == [1, 2]  # what this head office announced at enrollment
    del doc["envelope_versions"]
    enrollment.write_text(json.dumps(doc))
    old = CardProtection.from_state_dir(terminal_env.state_dir)
    assert old.envelope_version == 1
    seen = []
    with terminal_env.store() as store, terminal_env.client() as client:
        assert store.hq_envelope_versions() is None
        first = store.record(type="sale", amount_minor=100, currency="EUR", card=old.protect(emv_card()),
                             auth={"mode": "offline"})
        assert first.envelope.startswith("v1.")
        result = SyncEngine(store, client, on_envelope_versions=seen.append).run_once()
        assert result.ok and result.accepted == 1  # head office opened the v1 envelope
        assert seen == [(1, 2)] and store.hq_envelope_versions() == (1, 2)
        # What the daemon does with it: the live protection switches, and the next start reads it back.
        old.set_envelope_version(2)
        again = CardProtection.from_state_dir(terminal_env.state_dir, hq_envelope_versions=store.hq_envelope_versions())
        for protection in (old, again):
            txn = store.record(type="sale", amount_minor=200, currency="EUR", card=protection.protect(emv_card()),
                               auth={"mode": "offline"})
            assert txn.envelope.startswith("v2.")
        assert SyncEngine(store, client).run_once().accepted == 2
        old.close()
        again.close()
    assert terminal_env.hq_rows()[:2] == (3, 3)


def test_the_daemon_hears_the_announced_formats_even_when_a_technicians_sync_stored_them_first(
        terminal_env: TerminalEnv):
    terminal_env.record(2)
    heard = []
    with terminal_env.store() as store, terminal_env.client() as client:
        store.save_hq_envelope_versions([1, 2])  # e.g. `smartpos sync` in another process, moments before
        engine = SyncEngine(store, client, on_envelope_versions=heard.append)
        engine.run_once()
        terminal_env.record(1)
        engine.run_once()
    assert heard == [(1, 2)]  # once per engine, not once per answer


def _move_queue_aside(db_path, to):
    to.mkdir()
    for suffix in ("", "-wal", "-shm"):
        source = db_path.with_name(db_path.name + suffix)
        if source.exists():
            source.rename(to / source.name)


def test_a_replaced_queue_continues_head_offices_chain_and_its_sales_are_accepted(terminal_env: TerminalEnv,
                                                                                   tmp_path):
    """The documented recovery: a damaged queue is moved aside and smartpos starts again. The new queue takes head
    office's last sequence, hash and batch number, so its sales are accepted, not refused as conflicts with the
    old sequence 1, 2, ... and its batch closes balanced."""
    from config.loading import load_settings
    from config.provisioning import load_enrollment
    from terminal.ledger import open_queue

    first = terminal_env.record(6)
    with terminal_env.store() as store:
        store.close_batch()
    first += terminal_env.record(2)  # batch 2, still open when the queue is lost
    with terminal_env.store() as store, terminal_env.client() as client:
        assert SyncEngine(store, client).run_once().accepted == 8
    _move_queue_aside(terminal_env.db_path, tmp_path / "OLD")

    settings, _ = load_settings(terminal_env.config)
    store = open_queue(settings, load_enrollment(terminal_env.state_dir))
    try:
        stats = store.stats()
        assert (stats.last_sequence, stats.checkpoint, stats.open_batch, stats.unsynced_count) == (8, 8, 3, 0)
        assert store.verify() == 8  # nothing to verify yet: the chain starts after head office's head
    finally:
        store.close()
    later = terminal_env.record(3)
    with terminal_env.store() as store, terminal_env.client() as client:
        assert sorted(t.sequence for t in store.transactions(limit=10)) == [9, 10, 11]
        assert {t.batch for t in store.transactions(limit=10)} == {3}
        result = SyncEngine(store, client).run_once()
        assert result.ok and (result.accepted, result.rejected) == (3, 0)
        assert store.verify() == 11 and store.stats().rejected_count == 0
        store.close_batch()
        assert SyncEngine(store, client).run_once().ok
        assert store.batch(3).hq_status == "balanced"
    assert terminal_env.hq_rows() == (11, 11, first + later)


def test_a_missing_queue_is_not_created_while_head_office_does_not_answer(terminal_env: TerminalEnv, tmp_path):
    from config.loading import load_settings
    from config.provisioning import load_enrollment
    from terminal.ledger import LedgerError, open_queue

    terminal_env.record(2)
    with terminal_env.store() as store, terminal_env.client() as client:
        SyncEngine(store, client).run_once()
    _move_queue_aside(terminal_env.db_path, tmp_path / "OLD")
    settings, _ = load_settings(terminal_env.config)
    away = settings.model_copy(update={"headoffice": settings.headoffice.model_copy(
        update={"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 1.0})})
    with pytest.raises(LedgerError, match=r"missing.*did not answer"):
        open_queue(away, load_enrollment(terminal_env.state_dir))
    assert not terminal_env.db_path.exists()


def test_a_queue_created_but_killed_before_its_chain_was_set_still_continues_head_offices(terminal_env: TerminalEnv,
                                                                                         tmp_path):
    from config.loading import load_settings
    from config.provisioning import load_enrollment
    from offline_queue.store import QueueStore
    from terminal.ledger import open_queue

    terminal_env.record(4)
    with terminal_env.store() as store, terminal_env.client() as client:
        assert SyncEngine(store, client).run_once().accepted == 4
    _move_queue_aside(terminal_env.db_path, tmp_path / "OLD")
    QueueStore.open(terminal_env.db_path, terminal_id=terminal_env.terminal_id).close()  # the file, nothing else
    settings, _ = load_settings(terminal_env.config)
    with open_queue(settings, load_enrollment(terminal_env.state_dir)) as store:
        assert store.chain_decided() and store.stats().last_sequence == 4
    terminal_env.record(1)
    with terminal_env.store() as store, terminal_env.client() as client:
        result = SyncEngine(store, client).run_once()
        assert (result.accepted, result.rejected) == (1, 0)
    assert terminal_env.hq_rows()[0] == 5
