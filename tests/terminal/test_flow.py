import logging
import threading
import time

import pytest

from drivers.errors import CardRemovedError, ReaderUnavailableError
from protocol.errors import ValidationError
from terminal.authorization import OfflineDecision, OnlineUnavailable
from terminal.flow import FlowError, FlowSettings, PaymentFlow
from terminal.payment import State
from tests.terminal.flowfakes import MemoryLedger, ReceiptLog, ScriptedReader, SlowRead, emv_read, uid_read

SALE = {"type": "sale", "amount_minor": 1250, "currency": "EUR", "reference": "R-1"}


class Published:
    def __init__(self):
        self.events = []
        self.errors = []  # error codes shown with the published states

    def __call__(self, pid, payment):
        self.events.append((pid, payment["state"]))
        if payment.get("error"):
            self.errors.append(payment["error"]["code"])


def make_flow(ledger=None, online=None, card_timeout_s=5.0, mode="force-offline"):
    ledger = ledger or MemoryLedger()
    reader = ScriptedReader()
    receipts = ReceiptLog()
    published = Published()
    flow = PaymentFlow(ledger, reader, online=online, receipts=receipts, publish=published,
                       settings=FlowSettings(default_mode=mode, card_timeout_s=card_timeout_s, reader_retry_s=0.01))
    return flow, ledger, reader, receipts, published


@pytest.fixture
def running():
    flows = []

    def start(**kwargs):
        parts = make_flow(**kwargs)
        parts[0].start()
        flows.append(parts[0])
        return parts

    yield start
    for flow in flows:
        flow.shutdown(2)


def wait_state(ledger, pid, *states, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = ledger.payment(pid)
        if p["state"] in states:
            return p
        time.sleep(0.005)
    raise AssertionError(f"payment stayed {ledger.payment(pid)['state']}, wanted {states}")


def test_offline_sale_is_recorded_before_it_is_published_and_before_the_receipt(running):
    flow, ledger, reader, receipts, published = running()
    payment, created = flow.create("k1", SALE)
    assert created and payment["state"] == "waiting_for_card"
    reader.taps.put(emv_read())
    done = wait_state(ledger, payment["id"], "approved")
    assert done["authorization"]["mode"] == "offline"
    history = [s for pid, s in ledger.history if pid == payment["id"]]
    # offline: no side effect outside the process before the decision, so the next commit is the approval itself
    assert history == ["waiting_for_card", "approved"]
    assert payment["id"] in ledger.recorded
    states_published = [s for pid, s in published.events if pid == payment["id"]]
    assert states_published == ["waiting_for_card", "reading", "authorizing", "approved"]
    deadline = time.monotonic() + 2
    while not receipts.jobs and time.monotonic() < deadline:
        time.sleep(0.005)
    assert receipts.jobs == [(payment["id"], "approved", f"{payment['id']}:receipt")]


def test_nothing_is_published_as_approved_before_the_commit(running):
    ledger = MemoryLedger()
    ledger.record_gate = threading.Event()
    flow, ledger, reader, receipts, published = running(ledger=ledger)
    payment, _ = flow.create("k1", SALE)
    reader.taps.put(emv_read())
    deadline = time.monotonic() + 3
    while (flow.live(payment["id"]) or {}).get("state") != "authorizing":
        assert time.monotonic() < deadline, "never reached authorizing"
        time.sleep(0.005)
    time.sleep(0.05)
    assert "approved" not in [s for _, s in published.events]
    assert receipts.jobs == []
    ledger.record_gate.set()
    wait_state(ledger, payment["id"], "approved")


def test_same_idempotency_key_returns_the_same_payment(running):
    flow, ledger, *_ = running()
    first, created1 = flow.create("same", SALE)
    again, created2 = flow.create("same", SALE)
    assert (created1, created2) == (True, False)
    assert again["id"] == first["id"]
    assert len(ledger.payments) == 1


def test_same_key_with_a_different_body_is_refused(running):
    flow, *_ = running()
    flow.create("same", SALE)
    with pytest.raises(FlowError) as info:
        flow.create("same", {**SALE, "amount_minor": 999})
    assert (info.value.status, info.value.code) == (422, "idempotency_key_reused")


def test_second_payment_while_one_waits_is_409(running):
    flow, *_ = running()
    flow.create("a", SALE)
    with pytest.raises(FlowError) as info:
        flow.create("b", SALE)
    assert info.value.status == 409


def test_next_payment_is_accepted_once_the_first_is_final(running):
    flow, ledger, reader, *_ = running()
    first, _ = flow.create("a", SALE)
    reader.taps.put(emv_read())
    wait_state(ledger, first["id"], "approved")
    second, created = flow.create("b", SALE)
    assert created and second["id"] != first["id"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({**SALE, "amount_minor": 0}, "invalid_amount"),
        ({**SALE, "amount_minor": -5}, "invalid_amount"),
        ({**SALE, "amount_minor": 12.5}, "invalid_amount"),
        ({**SALE, "amount_minor": 10**15}, "invalid_amount"),
        ({**SALE, "currency": "XXX"}, "invalid_currency"),
        ({**SALE, "type": "void"}, "invalid_type"),
        ({**SALE, "mode": "online-please"}, "invalid_mode"),
        ({**SALE, "reference": "x" * 65}, "invalid_reference"),
    ],
)
def test_bad_requests_are_typed_errors_and_create_nothing(running, body, code):
    flow, ledger, *_ = running()
    with pytest.raises(ValidationError) as info:
        flow.create("k", body)
    assert info.value.code == code
    assert ledger.payments == {}


def test_cancel_while_waiting(running):
    flow, ledger, *_ = running()
    payment, _ = flow.create("k", SALE)
    cancelled = flow.cancel(payment["id"])
    assert cancelled["state"] == "cancelled"
    assert ledger.recorded == {}


def _wait_live(flow, pid, state, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = flow.live(pid)
        if live is not None and live["state"] == state:
            return live
        time.sleep(0.005)
    raise AssertionError(f"payment never showed {state} (live: {flow.live(pid)})")


def test_reading_is_shown_while_the_card_is_read_and_a_cancel_then_lands(running):
    """The front end sees `reading` as soon as the card is sensed, for as long as its read lasts (its cue to say
    "hold the card"); a cancel in that state ends the payment cancelled, nothing recorded."""
    flow, ledger, reader, _receipts, published = running()
    payment, _ = flow.create("k", SALE)
    slow = SlowRead(emv_read())
    reader.taps.put(slow)
    live = _wait_live(flow, payment["id"], "reading")
    assert live.get("card") is None  # not read yet
    assert (payment["id"], "reading") in published.events
    cancelled = flow.cancel(payment["id"])
    assert cancelled["state"] == "cancelled"
    assert ledger.recorded == {}
    slow.done.set()


def test_a_read_that_comes_to_nothing_shows_waiting_for_card_again(running):
    flow, ledger, reader, _receipts, published = running()
    payment, _ = flow.create("k", SALE)
    pulled = SlowRead(CardRemovedError("card removed during read"))
    reader.taps.put(pulled)
    _wait_live(flow, payment["id"], "reading")
    pulled.done.set()
    deadline = time.monotonic() + 3
    while flow.live(payment["id"]) is not None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert flow.live(payment["id"]) is None and ledger.payment(payment["id"])["state"] == "waiting_for_card"
    reader.taps.put(emv_read())
    wait_state(ledger, payment["id"], "approved")
    states = [state for pid, state in published.events if pid == payment["id"]]
    first = states.index("reading")
    assert states[first + 1] == "waiting_for_card"  # back to waiting, with the read's problem
    assert states[-3:] == ["reading", "authorizing", "approved"] and states.count("reading") == 2


def test_cancel_after_approval_is_409(running):
    flow, ledger, reader, *_ = running()
    payment, _ = flow.create("k", SALE)
    reader.taps.put(emv_read())
    wait_state(ledger, payment["id"], "approved")
    with pytest.raises(FlowError) as info:
        flow.cancel(payment["id"])
    assert info.value.status == 409


def test_no_tap_times_out(running):
    flow, ledger, *_ = running(card_timeout_s=0.2)
    payment, _ = flow.create("k", SALE)
    done = wait_state(ledger, payment["id"], "timed_out")
    assert done["error"]["code"] == "card_timeout"


def test_failed_read_waits_for_another_tap(running):
    flow, ledger, reader, _receipts, published = running()
    payment, _ = flow.create("k", SALE)
    reader.taps.put(CardRemovedError("card removed during read"))
    reader.taps.put(uid_read())
    reader.taps.put(emv_read())
    done = wait_state(ledger, payment["id"], "approved")
    assert done["state"] == "approved"
    assert "not_a_payment_card" in published.errors  # shown while it waited for another tap
    assert flow.last_error is None  # and not in the status any more once a card read well


def test_a_card_that_never_reads_times_out_saying_why_and_is_not_hammered(running):
    """A bad card left on the reader: the payment ends saying it could not be read (not "no card was tapped"),
    and the flow pauses between attempts instead of re-reading it in a tight loop."""
    from drivers.errors import CardDataError

    flow, ledger, reader, *_ = running(card_timeout_s=0.3)
    payment, _ = flow.create("k", SALE)
    for _ in range(200):
        reader.taps.put(CardDataError("card returned no PAN"))
    done = wait_state(ledger, payment["id"], "timed_out")
    assert done["error"]["code"] == "card_timeout"
    assert done["error"]["message"] == "no card could be read (last: card returned no PAN)"
    assert reader.taps.qsize() > 150  # at most one attempt per retry pause (10 ms here) in 0.3 s


def test_reader_unavailable_keeps_waiting_with_the_reason(running):
    flow, ledger, reader, *_ = running(card_timeout_s=0.3)
    payment, _ = flow.create("k", SALE)
    for _ in range(3):
        reader.taps.put(ReaderUnavailableError("pcscd is not running"))
    done = wait_state(ledger, payment["id"], "timed_out")
    assert flow.last_error["code"] == "reader_unavailable"
    assert done["state"] == "timed_out"


def test_offline_decline_carries_the_rule(running):
    flow, ledger, reader, receipts, _ = running(ledger=MemoryLedger(offline=OfflineDecision(False, "per_txn_limit")))
    payment, _ = flow.create("k", SALE)
    reader.taps.put(emv_read())
    done = wait_state(ledger, payment["id"], "declined")
    assert done["authorization"]["reason"] == "per_txn_limit"
    assert ledger.recorded == {} and receipts.jobs == []


def test_store_failure_is_never_an_approval(running):
    flow, ledger, reader, receipts, _ = running(ledger=MemoryLedger(fail_record=OSError("disk full")))
    payment, _ = flow.create("k", SALE)
    reader.taps.put(emv_read())
    done = wait_state(ledger, payment["id"], "failed")
    assert done["error"]["code"] == "store_write_failed"
    assert receipts.jobs == []


def test_prefer_online_falls_back_when_head_office_is_down(running, caplog):
    caplog.set_level(logging.INFO, logger="smartpos.payments")
    def down(request):
        raise OnlineUnavailable("unreachable", "connection refused")

    flow, ledger, reader, *_ = running(online=down, mode="prefer-online")
    payment, _ = flow.create("k", SALE)
    reader.taps.put(emv_read())
    done = wait_state(ledger, payment["id"], "approved")
    assert done["authorization"]["mode"] == "offline"
    decided = [r for r in caplog.records if r.getMessage() == "payment.decided"]
    assert decided and decided[-1].fallback == "unreachable" and decided[-1].method == "offline"


def test_online_request_never_holds_the_pan(running):
    seen = []

    def hq(request):
        seen.append(request)
        return {"approved": True, "code": "000111", "auth_id": "x"}

    flow, ledger, reader, *_ = running(online=hq, mode="prefer-online")
    payment, _ = flow.create("k", SALE)
    reader.taps.put(emv_read())
    done = wait_state(ledger, payment["id"], "approved")
    assert done["authorization"]["code"] == "000111"
    # "authorizing" is stored before head office is asked (a side effect outside the process)
    assert [s for pid, s in ledger.history if pid == payment["id"]] == ["waiting_for_card", "authorizing", "approved"]
    assert done["card"]["masked_pan"] == "476173******0010"
    assert "4761739001010010" not in repr(seen)


def test_recovery_resolves_inflight_payments():
    ledger = MemoryLedger()
    waiting = ledger.create_payment(idempotency_key="a", request=SALE)
    authorizing = ledger.create_payment(idempotency_key="b", request=SALE)
    ledger.set_state(authorizing["id"], State.AUTHORIZING)
    recorded = ledger.create_payment(idempotency_key="c", request=SALE)
    ledger.set_state(recorded["id"], State.AUTHORIZING)
    ledger.recorded[recorded["id"]] = {}
    ledger.payments[recorded["id"]]["state"] = "approved"  # the atomic record already approved it
    flow, _, _, _receipts, _ = make_flow(ledger=ledger)
    flow.recover()
    assert ledger.payment(waiting["id"])["state"] == "failed"
    assert ledger.payment(waiting["id"])["error"]["code"] == "interrupted"
    assert ledger.payment(authorizing["id"])["state"] == "failed"
    assert ledger.payment(recorded["id"])["state"] == "approved"


def test_a_restart_queues_the_receipt_of_a_recent_approval_that_a_stop_lost():
    """Approved (committed with its transaction) but stopped before its receipt was queued: the restart queues it.
    Only recent approvals (an old one was printed or reprinted long ago), and only approvals."""
    from datetime import UTC, datetime, timedelta

    ledger = MemoryLedger()
    now = datetime.now(UTC)
    ids = {}
    for key, age_s, state in (("recent", 60, "approved"), ("old", 3 * 3600, "approved"),
                              ("declined", 60, "declined"), ("no-stamp", 60, "approved"),
                              ("queued", 60, "approved")):  # fmt: skip
        payment = ledger.create_payment(idempotency_key=key, request=SALE)
        stamp = (now - timedelta(seconds=age_s)).isoformat() if key != "no-stamp" else None
        ledger.payments[payment["id"]].update(state=state, updated_at=stamp, transaction_id=f"txn-{key}")
        ids[key] = payment["id"]
    flow, _, _, receipts, _ = make_flow(ledger=ledger)
    receipts.states["txn-queued"] = "printed"  # its receipt was queued: not submitted again (no write at start-up)
    flow.recover()
    assert receipts.jobs == [(ids["recent"], "approved", f"{ids['recent']}:receipt")]


def test_a_store_error_while_looking_for_lost_receipts_does_not_stop_the_start():
    ledger = MemoryLedger()

    def broken(limit):
        raise OSError("disk I/O error")

    ledger.recent_payments = broken
    flow, _, _, receipts, _ = make_flow(ledger=ledger)
    assert flow.recover() == [] and receipts.jobs == []


def test_void_records_once(running):
    flow, ledger, reader, _receipts, _ = running()
    payment, _ = flow.create("k", SALE)
    reader.taps.put(emv_read())
    wait_state(ledger, payment["id"], "approved")
    void, created = flow.void(payment["id"])
    again, created_again = flow.void(payment["id"])
    assert (created, created_again) == (True, False)
    assert void["id"] == again["id"] and void["type"] == "void"
    with pytest.raises(FlowError):
        flow.void(void["id"])


def test_shutdown_cancels_a_waiting_payment(running):
    flow, ledger, *_ = running()
    payment, _ = flow.create("k", SALE)
    flow.shutdown(2)
    done = ledger.payment(payment["id"])
    assert done["state"] == "cancelled"
    assert done["error"]["code"] == "terminal_shutdown"
    with pytest.raises(FlowError) as info:
        flow.create("k2", SALE)
    assert info.value.status == 503


def test_a_final_state_the_store_cannot_take_is_shown_and_written_later(running):
    """Disk full between creating a payment and recording it: no approval (nothing was recorded), and the payment
    does not hang in waiting_for_card: its failure, and why, is shown, then stored once the store takes writes."""
    ledger = MemoryLedger(fail_record=OSError("disk full"))
    plain_set_state = ledger.set_state
    full = {"on": True}

    def set_state(payment_id, state, **fields):
        if full["on"] and str(getattr(state, "value", state)) == "failed":
            raise OSError("disk full")
        return plain_set_state(payment_id, state, **fields)

    ledger.set_state = set_state
    flow, ledger, reader, receipts, published = running(ledger=ledger)
    payment, _ = flow.create("k", SALE)
    reader.taps.put(emv_read())
    deadline = time.monotonic() + 3
    while (flow.live(payment["id"]) or {}).get("state") != "failed" and time.monotonic() < deadline:
        time.sleep(0.005)
    shown = flow.live(payment["id"])
    assert shown["state"] == "failed" and shown["error"]["code"] == "store_write_failed"
    assert (payment["id"], "failed") in published.events and receipts.jobs == []
    assert ledger.payment(payment["id"])["state"] != "failed"  # not stored yet

    full["on"] = False  # space is back; the next payment's start writes the kept state
    ledger.fail_record = None
    flow.create("k2", SALE)
    assert wait_state(ledger, payment["id"], "failed")["error"]["code"] == "store_write_failed"


def test_closed_loop_terminal_takes_a_uid_card_and_a_shop_terminal_does_not():
    for closed_loop, expected in ((True, "approved"), (False, "timed_out")):
        ledger, reader = MemoryLedger(), ScriptedReader()
        flow = PaymentFlow(ledger, reader, online=None, receipts=ReceiptLog(), publish=Published(),
                           settings=FlowSettings(default_mode="force-offline", card_timeout_s=0.3,
                                                 reader_retry_s=0.01, closed_loop_uid=closed_loop))
        flow.start()
        try:
            payment, _ = flow.create("k", SALE)
            reader.taps.put(uid_read())
            assert wait_state(ledger, payment["id"], "approved", "timed_out")["state"] == expected
        finally:
            flow.shutdown(2)


def test_a_random_uid_does_not_pay_on_a_closed_loop_terminal():
    """A phone or bank card without a supported application shows a random UID (08...) drawn at every tap: it used
    to pay as a new closed-loop account each time. The payment shows why and keeps waiting for a real card."""
    ledger, reader, published = MemoryLedger(), ScriptedReader(), Published()
    flow = PaymentFlow(ledger, reader, online=None, receipts=ReceiptLog(), publish=published,
                       settings=FlowSettings(default_mode="force-offline", card_timeout_s=5, reader_retry_s=0.01,
                                             closed_loop_uid=True))
    flow.start()
    try:
        payment, _ = flow.create("k", SALE)
        reader.taps.put(uid_read("08A1B2C3"))
        deadline = time.monotonic() + 3
        while (ledger.payment(payment["id"]).get("error") or {}).get("code") != "uid_random" and \
                time.monotonic() < deadline:
            time.sleep(0.005)
        assert ledger.payment(payment["id"])["error"]["code"] == "uid_random"
        assert ledger.payment(payment["id"])["state"] == "waiting_for_card"
        reader.taps.put(uid_read("04A1B2C3"))  # 7-byte and fixed 4-byte UIDs name the card
        assert wait_state(ledger, payment["id"], "approved")["state"] == "approved"
    finally:
        flow.shutdown(2)


def test_the_random_uid_rule_is_type_a_only():
    from drivers.cardread import UidCardRead

    def card(technology):
        return UidCardRead(reader="r", detected_at=0, read_at=0, uid="08A1B2C3", technology=technology)

    assert card("106A").random_uid and card(None).random_uid  # PC/SC: Type A assumed
    assert not card("106B").random_uid  # a Type B PUPI may start with 08 and still name its card


def test_a_late_cancel_of_a_finished_payment_does_not_cancel_the_next_one(running):
    """The cashier's cancel of A read A still waiting; A was approved before the cancel took effect, and the front
    end (following A's events) asked for B at once. The cancel was A's: B waits for its card as asked."""
    flow, ledger, reader, receipts, _ = running()
    in_receipt, release = threading.Event(), threading.Event()
    submit = receipts.submit

    def slow_submit(payment, **kwargs):  # the worker is still on A, queueing its receipt
        submit(payment, **kwargs)
        in_receipt.set()
        release.wait(5)

    receipts.submit = slow_submit
    a, _ = flow.create("k-a", SALE)
    seen_waiting = dict(a)
    reader.taps.put(emv_read())
    assert in_receipt.wait(3) and ledger.payment(a["id"])["state"] == "approved"
    b, created = flow.create("k-b", SALE)
    assert created
    real_get = flow._get
    stale = [seen_waiting]  # cancel's first look at A, taken before A was approved

    def get(pid):
        return stale.pop() if pid == a["id"] and stale else real_get(pid)

    flow._get = get
    try:
        with pytest.raises(FlowError) as late:
            flow.cancel(a["id"], wait_s=0.2)
    finally:
        flow._get = real_get
        release.set()
    assert late.value.code == "not_cancellable" and "approved" in late.value.message
    time.sleep(0.3)  # the worker has moved on to B by now
    assert ledger.payment(b["id"])["state"] == "waiting_for_card"
    reader.taps.put(emv_read())
    assert wait_state(ledger, b["id"], "approved", "cancelled")["state"] == "approved"


def test_a_read_outside_a_payment_returns_the_public_view_and_keeps_payments_out(running):
    """POST /v1/reads' half in the flow: what was read, masked; a payment asked for meanwhile is refused (409), as
    a read asked for during a payment is; nothing is recorded."""
    flow, ledger, reader, *_ = running()
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(flow.read_card(5.0)))
    waiting.start()
    deadline = time.monotonic() + 3
    while reader.waits == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    with pytest.raises(FlowError) as busy:
        flow.create("k-during-read", SALE)
    assert (busy.value.status, busy.value.code) == (409, "terminal_busy") and "POST /v1/reads" in busy.value.message
    with pytest.raises(FlowError) as twice:
        flow.read_card(1.0)
    assert twice.value.code == "terminal_busy"
    reader.taps.put(emv_read())
    waiting.join(5)
    [shown] = answers
    assert shown["kind"] == "emv" and shown["masked_pan"] == "476173******0010"
    assert "4761739001010010" not in str(shown)
    assert ledger.payments == {} and ledger.recorded == {}
    # once the read is over, payments are taken again; during one, a read is refused
    payment, _ = flow.create("k-after-read", SALE)
    with pytest.raises(FlowError) as during:
        flow.read_card(1.0)
    assert during.value.code == "terminal_busy" and payment["id"] in during.value.message


def test_a_read_outside_a_payment_ends_when_cancelled_and_payments_are_taken_at_once(running):
    """The front end hung up (the API sets the read's own event) or asked POST /v1/reads/cancel: the read ends
    409 read_cancelled well before its timeout, and the next payment is not refused as terminal_busy."""
    flow, _ledger, reader, *_ = running()
    assert flow.cancel_read() is False  # nothing to cancel
    for how in ("hang_up", "cancel_read"):
        hung_up, outcome = threading.Event(), []

        def wait(hung_up=hung_up, outcome=outcome):
            try:
                flow.read_card(30.0, hung_up)
            except FlowError as exc:
                outcome.append(exc)

        before = reader.waits
        waiting = threading.Thread(target=wait)
        started = time.monotonic()
        waiting.start()
        while reader.waits == before and time.monotonic() - started < 3:
            time.sleep(0.005)
        if how == "hang_up":
            hung_up.set()
        else:
            assert flow.cancel_read() is True
        waiting.join(5)
        [ended] = outcome
        assert (ended.status, ended.code) == (409, "read_cancelled") and time.monotonic() - started < 5
        payment, created = flow.create(f"k-after-{how}", SALE)
        assert created and payment["state"] == "waiting_for_card"
        flow.cancel(payment["id"])
    assert flow.cancel_read() is False


def test_a_read_outside_a_payment_times_out_or_fails_typed(running):
    from drivers.errors import CardDataError

    flow, _ledger, reader, *_ = running()
    with pytest.raises(FlowError) as timed_out:
        flow.read_card(0.2)
    assert (timed_out.value.status, timed_out.value.code) == (408, "card_timeout")
    reader.taps.put(CardDataError("card returned no PAN"))
    with pytest.raises(FlowError) as bad:
        flow.read_card(2.0)
    assert (bad.value.status, bad.value.code) == (422, "card_data")
    reader.taps.put(ReaderUnavailableError("pcscd is not running"))
    with pytest.raises(FlowError) as away:
        flow.read_card(2.0)
    assert (away.value.status, away.value.code) == (503, "reader_unavailable")
    reader.taps.put(uid_read())
    shown = flow.read_card(2.0)
    assert (shown["kind"], shown["uid"]) == ("uid", "04A1B2C3")
