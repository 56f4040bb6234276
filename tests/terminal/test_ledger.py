"""The payment flow over the real queue (SQLite store, card protection, risk rules), with the EMV read run
in-process against the simulated card. Only the reader is scripted; the stacks are covered in tests/e2e."""

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from config.provisioning import Enrollment
from config.settings import Settings
from drivers.emv import TerminalData, read_card
from drivers.simulators.emv_card import InProcessCard, VirtualEmvCard, load_profile
from terminal.flow import FlowError, FlowSettings, PaymentFlow
from terminal.ledger import QueueLedger
from tests.terminal.flowfakes import ReceiptLog, ScriptedReader

VISA_TEST_PAN = "4761739001010010"


def tap(profile="visa", amount=1250):
    card = VirtualEmvCard(load_profile(profile))
    return read_card(InProcessCard(card), TerminalData(amount_minor=amount, currency="EUR"), reader="test")


def make_ledger(tmp_path, deny_list=()):
    settings = Settings.model_validate({"terminal": {"id": "T-1", "state_dir": str(tmp_path)},
                                        "risk": {"txn_limit_minor": 5000}})
    hq_private = X25519PrivateKey.generate()
    enrollment = Enrollment(terminal_id="T-1", merchant={"name": "Shop"}, hq_url="", parameters={},
                            parameters_version=1,
                            enrolled_at=datetime.now(UTC).isoformat(), terminal_key=Ed25519PrivateKey.generate(),
                            hq_public_key=hq_private.public_key(), token_key=b"k" * 32, deny_list=tuple(deny_list))
    return QueueLedger.open(settings, enrollment)


@pytest.fixture
def ledger(tmp_path: Path):
    led = make_ledger(tmp_path)
    yield led
    led.close()


@pytest.fixture
def flow(ledger):
    reader = ScriptedReader()
    f = PaymentFlow(ledger, reader, online=None, receipts=ReceiptLog(), publish=lambda *_: None,
                    settings=FlowSettings(default_mode="force-offline", card_timeout_s=5))
    f.start()
    f.reader = reader
    yield f
    f.shutdown(2)


def wait_final(ledger, pid, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = ledger.payment_view(pid)
        if view["state"] not in ("waiting_for_card", "reading", "authorizing"):
            return view
        time.sleep(0.005)
    raise AssertionError(ledger.payment_view(pid))


def at_once(fn, n):
    """``fn(0)`` ... ``fn(n - 1)``, each in its own thread, all started before any is joined."""
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)


def test_offline_sale_is_recorded_with_sequence_batch_and_masked_card(flow, ledger, tmp_path):
    payment, _ = flow.create("k1", {"amount_minor": 1250, "currency": "EUR"})
    flow.reader.taps.put(tap())
    view = wait_final(ledger, payment["id"])
    assert view["state"] == "approved"
    assert (view["sequence"], view["batch"], view["sync_state"]) == (1, 1, "queued")
    assert view["card"]["masked_pan"] == "476173******0010"
    assert view["authorization"]["method"] == "offline"
    assert ledger.is_recorded(payment["id"])
    ledger.store.compact()
    for path in tmp_path.glob("queue.sqlite*"):
        assert VISA_TEST_PAN.encode() not in path.read_bytes()


def test_offline_rules_decline_with_the_reason_and_record_nothing(flow, ledger):
    payment, _ = flow.create("k1", {"amount_minor": 9000, "currency": "EUR"})
    flow.reader.taps.put(tap(amount=9000))
    view = wait_final(ledger, payment["id"])
    assert view["state"] == "declined"
    assert view["authorization"]["reason"] == "over_txn_limit"
    assert view["sequence"] is None
    assert ledger.queue_status()["unsynced_count"] == 0


def test_void_in_open_batch_once(flow, ledger):
    payment, _ = flow.create("k1", {"amount_minor": 1000, "currency": "EUR"})
    flow.reader.taps.put(tap(amount=1000))
    wait_final(ledger, payment["id"])
    kept, _ = flow.create("k2", {"amount_minor": 700, "currency": "EUR"})
    flow.reader.taps.put(tap(amount=700))
    wait_final(ledger, kept["id"])
    void, created = flow.void(payment["id"])
    void = ledger.payment_view(void["id"])
    assert created and void["state"] == "approved" and void["type"] == "void" and void["sequence"] == 3
    again, created_again = flow.void(payment["id"])
    assert not created_again and again["id"] == void["id"]
    assert ledger.payment_view(payment["id"])["voided_by"] == void["transaction_id"]
    batch = ledger.close_batch()
    eur = next(t for t in batch["totals"]["by_currency"] if t["currency"] == "EUR")
    assert eur["net_amount_minor"] == 700
    with pytest.raises(FlowError) as info:
        flow.void(kept["id"])  # its batch is closed now
    assert (info.value.status, info.value.code) == (409, "void_not_allowed")
    with pytest.raises(FlowError) as retried:  # the same request again: the same answer, not "already failed"
        flow.void(kept["id"])
    assert (retried.value.status, retried.value.code) == (409, "void_not_allowed")


def test_concurrent_voids_of_one_payment_make_one_void(flow, ledger):
    """Two front ends void the same sale at once, each with its own Idempotency-Key: one void is recorded and both
    are answered with it; no stray failed void is left behind."""
    payment, _ = flow.create("k1", {"amount_minor": 1000, "currency": "EUR"})
    flow.reader.taps.put(tap(amount=1000))
    wait_final(ledger, payment["id"])
    start = threading.Barrier(8)
    answers, errors = [], []

    def void(n):
        start.wait()
        try:
            answers.append(flow.void(payment["id"], f"void-{n}"))
        except FlowError as exc:
            errors.append(exc.code)

    at_once(void, 8)
    assert errors == []
    assert len({v["id"] for v, _ in answers}) == 1 and sum(created for _, created in answers) == 1
    every_state = ("waiting_for_card", "reading", "authorizing", "approved", "declined", "failed", "cancelled",
                   "timed_out")
    voids = [p for p in ledger.store.payments_in_states(every_state) if p.type == "void"]
    assert [(p.state, p.id) for p in voids] == [("approved", answers[0][0]["id"])]
    assert ledger.queue_status()["unsynced_count"] == 2  # the sale and its one void


def test_restart_resolves_recorded_and_unrecorded(ledger):
    waiting = ledger.create_payment(idempotency_key="a", request={"type": "sale", "amount_minor": 100,
                                                                  "currency": "EUR", "reference": None,
                                                                  "mode": "force-offline"})
    flow = PaymentFlow(ledger, ScriptedReader(), online=None, receipts=None, publish=lambda *_: None,
                       settings=FlowSettings())
    flow.recover()
    view = ledger.payment_view(waiting["id"])
    assert view["state"] == "failed" and view["error"]["code"] == "interrupted"


def test_concurrent_creates_let_one_payment_wait(flow, ledger):
    results = []

    def create(i):
        try:
            results.append(flow.create(f"c{i}", {"amount_minor": 100, "currency": "EUR"})[0]["id"])
        except FlowError as exc:
            results.append(exc.status)

    at_once(create, 6)
    assert results.count(409) == 5


def test_deny_list_from_enrollment_applies_before_the_first_sync(tmp_path):
    from protocol.tokens import card_token

    led = make_ledger(tmp_path, deny_list=[card_token(b"k" * 32, VISA_TEST_PAN)])
    try:
        payment = led.create_payment(idempotency_key="d", request={"type": "sale", "amount_minor": 100,
                                                                   "currency": "EUR", "reference": None,
                                                                   "mode": "force-offline"})
        decision = led.offline_decision(payment, tap(amount=100))
        assert not decision.approved and decision.reason == "denied_card"
        assert led.offline_decision(payment, tap("mastercard", amount=100)).approved
    finally:
        led.close()



def test_the_ledger_seals_in_the_newest_format_head_office_has_announced(tmp_path):
    # Enrolled where head office named no formats (a 0.1 head office): v1, which any head office opens.
    first = make_ledger(tmp_path)
    try:
        assert first.protection.envelope_version == 1
        first.store.save_hq_envelope_versions([1, 2])  # what the sync engine keeps from an upload answer
        first.use_envelope_versions((1, 2))  # ...and tells the running daemon
        assert first.protection.envelope_version == 2
    finally:
        first.close()
    again = make_ledger(tmp_path)  # the next start reads it back from the queue
    try:
        assert again.protection.envelope_version == 2
    finally:
        again.close()


def test_an_offline_fallback_approval_says_why_it_was_offline(ledger):
    """prefer-online with head office down: the stored payment tells the front end it was a fallback."""
    from terminal.authorization import OnlineUnavailable

    def down(request):
        raise OnlineUnavailable("timeout", "head office did not answer in time")

    reader = ScriptedReader()
    flow = PaymentFlow(ledger, reader, online=down, receipts=ReceiptLog(), publish=lambda *_: None,
                       settings=FlowSettings(default_mode="prefer-online", card_timeout_s=5))
    flow.start()
    try:
        payment, _ = flow.create("fb-1", {"amount_minor": 1250, "currency": "EUR"})
        reader.taps.put(tap())
        view = wait_final(ledger, payment["id"])
    finally:
        flow.shutdown(2)
    assert view["state"] == "approved"
    assert (view["authorization"]["method"], view["authorization"]["fallback"]) == ("offline", "timeout")
    # Not part of the chained transaction: the chain still verifies as before.
    assert ledger.store.verify() == 1


def test_queue_status_names_the_dead_letters(flow, ledger):
    for n, amount in enumerate((1000, 700)):
        payment, _ = flow.create(f"k{n}", {"amount_minor": amount, "currency": "EUR"})
        flow.reader.taps.put(tap(amount=amount))
        wait_final(ledger, payment["id"])
    assert ledger.queue_status()["rejected"] == []
    ledger.store.mark_rejected(1, "envelope_unreadable", "head office could not open the sealed card data")
    status = ledger.queue_status()
    assert status["rejected_count"] == 1 and status["unsynced_count"] == 1
    assert status["rejected"] == [{"sequence": 1, "code": "envelope_unreadable",
                                   "reason": "head office could not open the sealed card data"}]


def test_an_expired_card_is_declined_offline(flow, ledger, tmp_path):
    from drivers.simulators.emv_card import PROFILES_DIR

    expired = tmp_path / "expired.toml"
    expired.write_text((PROFILES_DIR / "visa.toml").read_text().replace('expiry = "2812"', 'expiry = "2001"'))
    card = VirtualEmvCard(load_profile(expired))
    payment, _ = flow.create("k1", {"amount_minor": 1000, "currency": "EUR"})
    flow.reader.taps.put(read_card(InProcessCard(card), TerminalData(amount_minor=1000, currency="EUR"),
                                   reader="test"))
    view = wait_final(ledger, payment["id"])
    assert view["state"] == "declined" and view["authorization"]["reason"] == "card_expired"
    assert view["sequence"] is None
