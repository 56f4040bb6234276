"""When the terminal owes head office a reversal: an online request that may have been approved there, but whose
answer never arrived (or whose sale could not be recorded). The reversal is owed, durably, before the payment
goes on, so no outcome the cashier sees can leave an approval standing at head office."""

import pytest

from terminal.authorization import OnlineUnavailable
from terminal.flow import FlowSettings, PaymentFlow
from terminal.payment import State
from tests.terminal.flowfakes import MemoryLedger, ReceiptLog, ScriptedReader, emv_read
from tests.terminal.test_flow import SALE, Published, wait_state


class LinkLog:
    def __init__(self, fail_send=None):
        self.woken = 0
        self.sent = []
        self.fail_send = fail_send

    def owed(self):
        self.woken += 1

    def send_now(self, reversal):
        if self.fail_send is not None:
            raise self.fail_send
        self.sent.append(reversal)


@pytest.fixture
def flows():
    started = []

    def start(online, mode, ledger=None, link=None):
        ledger = ledger or MemoryLedger()
        reader = ScriptedReader()
        link = link or LinkLog()
        flow = PaymentFlow(ledger, reader, online=online, receipts=ReceiptLog(), publish=Published(),
                           settings=FlowSettings(default_mode=mode, card_timeout_s=5.0, reader_retry_s=0.01),
                           reversals=link)
        flow.start()
        started.append(flow)
        return flow, ledger, reader, link

    yield start
    for flow in started:
        flow.shutdown(2)


def timed_out(request):
    raise OnlineUnavailable("timeout", "head office did not answer within 3 s")


def refused_connection(request):
    raise OnlineUnavailable("unreachable", "connection refused", maybe_delivered=False)


def steps(ledger, pid):
    return [s for p, s in ledger.history if p == pid]


def test_prefer_online_timeout_owes_a_reversal_before_the_offline_approval(flows):
    flow, ledger, reader, link = flows(timed_out, "prefer-online")
    payment, _ = flow.create("k", SALE)
    reader.taps.put(emv_read())
    done = wait_state(ledger, payment["id"], "approved", "declined", "failed")
    assert done["state"] == "approved" and done["authorization"]["mode"] == "offline"
    assert ledger.reversals[payment["id"]] == {"idempotency_key": payment["id"], "type": "sale",
                                               "amount_minor": 1250, "currency": "EUR",
                                               "reason": "no_answer:timeout"}
    assert steps(ledger, payment["id"]) == ["waiting_for_card", "authorizing", "reversal_owed", "approved"]
    assert link.woken == 1


def test_require_online_timeout_declines_and_owes_the_reversal(flows):
    flow, ledger, reader, _ = flows(timed_out, "require-online")
    payment, _ = flow.create("k", SALE)
    reader.taps.put(emv_read())
    done = wait_state(ledger, payment["id"], "approved", "declined", "failed")
    assert done["state"] == "declined"
    assert done["authorization"]["reason"] == "online_unavailable:timeout"
    assert payment["id"] in ledger.reversals


def test_no_reversal_when_the_request_never_left(flows):
    flow, ledger, reader, link = flows(refused_connection, "prefer-online")
    payment, _ = flow.create("k", SALE)
    reader.taps.put(emv_read())
    assert wait_state(ledger, payment["id"], "approved", "declined", "failed")["state"] == "approved"
    assert ledger.reversals == {} and link.woken == 0


def test_online_approval_that_cannot_be_recorded_is_reversed(flows):
    def approves(request):
        return {"approved": True, "code": "123456", "auth_id": "a-1"}

    flow, ledger, reader, _ = flows(approves, "require-online", ledger=MemoryLedger(fail_record=OSError("disk full")))
    payment, _ = flow.create("k", SALE)
    reader.taps.put(emv_read())
    done = wait_state(ledger, payment["id"], "approved", "declined", "failed")
    assert done["state"] == "failed" and done["error"]["code"] == "store_write_failed"
    assert ledger.reversals[payment["id"]]["reason"] == "not_recorded"


def test_reversal_the_store_cannot_take_is_sent_at_once(flows):
    ledger = MemoryLedger()
    ledger.fail_reversal = OSError("disk full")
    link = LinkLog()
    flow, ledger, reader, _ = flows(timed_out, "prefer-online", ledger=ledger, link=link)
    payment, _ = flow.create("k", SALE)
    reader.taps.put(emv_read())
    done = wait_state(ledger, payment["id"], "approved", "declined", "failed")
    assert done["state"] == "approved"  # the reversal reached head office: the offline decision may go on
    assert [r["idempotency_key"] for r in link.sent] == [payment["id"]]


def test_reversal_neither_stored_nor_sent_stops_the_payment(flows):
    ledger = MemoryLedger()
    ledger.fail_reversal = OSError("disk full")
    link = LinkLog(fail_send=ConnectionError("still down"))
    flow, ledger, reader, _ = flows(timed_out, "prefer-online", ledger=ledger, link=link)
    payment, _ = flow.create("k", SALE)
    reader.taps.put(emv_read())
    done = wait_state(ledger, payment["id"], "approved", "declined", "failed")
    assert done["state"] == "failed" and done["error"]["code"] == "store_write_failed"
    assert "NOT approved" in done["error"]["message"]
    assert ledger.recorded == {}


def test_restart_during_online_authorization_owes_a_reversal():
    ledger = MemoryLedger()
    asked = ledger.create_payment(idempotency_key="a", request={**SALE, "mode": "require-online"})
    ledger.set_state(asked["id"], State.AUTHORIZING)
    waiting = ledger.create_payment(idempotency_key="b", request=SALE)
    flow = PaymentFlow(ledger, ScriptedReader(), online=timed_out, receipts=ReceiptLog(), publish=Published(),
                       settings=FlowSettings(), reversals=LinkLog())
    flow.recover()
    assert ledger.payment(asked["id"])["state"] == "failed"
    assert ledger.reversals[asked["id"]]["reason"] == "interrupted"
    assert waiting["id"] not in ledger.reversals  # head office was never asked about it


def test_restart_keeps_a_payment_authorizing_while_its_reversal_can_go_nowhere():
    """Disk full and head office away at boot: the reversal is neither stored nor sent, so the payment is left
    authorizing and the next start owes it again (marking it failed would forget it for good)."""
    ledger = MemoryLedger()
    asked = ledger.create_payment(idempotency_key="a", request={**SALE, "mode": "require-online"})
    ledger.set_state(asked["id"], State.AUTHORIZING)
    ledger.fail_reversal = OSError("disk full")
    flow = PaymentFlow(ledger, ScriptedReader(), online=timed_out, receipts=ReceiptLog(), publish=Published(),
                       settings=FlowSettings(), reversals=LinkLog(fail_send=ConnectionError("down")))
    flow.recover()
    assert ledger.payment(asked["id"])["state"] == "authorizing" and ledger.reversals == {}
    ledger.fail_reversal = None  # space is back at the next start
    flow = PaymentFlow(ledger, ScriptedReader(), online=timed_out, receipts=ReceiptLog(), publish=Published(),
                       settings=FlowSettings(), reversals=LinkLog())
    flow.recover()
    assert ledger.payment(asked["id"])["state"] == "failed" and asked["id"] in ledger.reversals


def test_an_error_after_the_record_committed_keeps_the_sale_and_its_approval(flows):
    """record_approval committed, then failed (reading the payment back): the sale stands, nothing is reversed."""
    class CommitsThenFails(MemoryLedger):
        def record_approval(self, payment, card, auth):
            super().record_approval(payment, card, auth)
            raise OSError("read back failed")

    def approves(request):
        return {"approved": True, "code": "123456", "auth_id": "a-1"}

    flow, ledger, reader, _ = flows(approves, "require-online", ledger=CommitsThenFails())
    payment, _ = flow.create("k", SALE)
    reader.taps.put(emv_read())
    done = wait_state(ledger, payment["id"], "approved", "declined", "failed")
    assert done["state"] == "approved" and ledger.reversals == {}


def test_an_unexpected_error_after_head_office_was_asked_owes_the_reversal(flows):
    """The worker's last resort (any exception once the online request was sent) fails the payment as before, and
    owes the reversal first: head office may have approved it."""

    def broken(request):
        raise RuntimeError("an answer this terminal did not expect")

    flow, ledger, reader, link = flows(broken, "prefer-online")
    payment, _ = flow.create("k", SALE)
    reader.taps.put(emv_read())
    done = wait_state(ledger, payment["id"], "approved", "declined", "failed")
    assert done["state"] == "failed" and done["error"]["code"] == "internal_error"
    assert ledger.reversals[payment["id"]]["reason"] == "internal_error"
    assert steps(ledger, payment["id"]) == ["waiting_for_card", "authorizing", "reversal_owed", "failed"]
    assert link.woken == 1
