"""In-memory stand-ins for the queue and the reader, for unit tests of the payment flow's sequencing only.
The real queue, readers and printer are exercised by tests/e2e."""

from __future__ import annotations

import queue
import threading
import time
import uuid

from drivers.cardread import EmvCardRead, UidCardRead
from drivers.errors import ReaderUnavailableError, ReadTimeout
from terminal.authorization import OfflineDecision
from terminal.payment import ACTIVE, State

VISA_TEST_PAN = "4761739001010010"


def emv_read(pan=VISA_TEST_PAN):
    now = time.monotonic()
    return EmvCardRead(
        reader="fake", detected_at=now, read_at=now + 0.002, scheme="visa", masked_pan=pan[:6] + "******" + pan[-4:],
        pan_last4=pan[-4:], aid="A0000000031010", label="VISA CREDIT", preferred_name=None, track2_present=True,
        atc=1, cryptogram={}, wallet=False, redacted_tlv="", pan=pan, expiry="3012",
    )


def uid_read(uid: str = "04A1B2C3"):
    now = time.monotonic()
    return UidCardRead(reader="fake", detected_at=now, read_at=now, uid=uid)


class ScriptedReader:
    """Hands out what the test puts in ``taps`` (reads or exceptions); blocks like a real reader otherwise."""

    def __init__(self):
        self.taps = queue.Queue()
        self.waits = 0

    def wait_for_card(self, td, *, timeout, cancel, on_detected=None):
        self.waits += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cancel.is_set():
                raise ReadTimeout("cancelled", code="cancelled")
            try:
                item = self.taps.get(timeout=0.01)
            except queue.Empty:
                continue
            if on_detected is not None and not isinstance(item, ReaderUnavailableError):
                on_detected("fake")  # a card was sensed: its read begins (a failed read was sensed too)
            if isinstance(item, SlowRead):
                while not item.done.wait(0.01):  # the read is in progress until the test lets it finish
                    if cancel.is_set():
                        raise ReadTimeout("cancelled", code="cancelled")
                item = item.outcome
            if isinstance(item, Exception):
                raise item
            return item
        raise ReadTimeout("no card")


class SlowRead:
    """A tap whose read lasts until ``done`` is set; then it ends with ``outcome`` (a read or an exception)."""

    def __init__(self, outcome):
        self.outcome = outcome
        self.done = threading.Event()


class MemoryLedger:
    def __init__(self, offline=OfflineDecision(True), fail_record=None):
        self.payments = {}
        self.keys = {}
        self.recorded = {}
        self.history = []
        self.offline = offline
        self.fail_record = fail_record
        self.lock = threading.Lock()
        self.record_gate = None  # an Event the test can hold closed to freeze the flow before the commit
        self.reversals = {}  # idempotency key -> reversal owed to head office
        self.fail_reversal = None  # an exception queue_reversal raises (the store is full)

    def create_payment(self, *, idempotency_key, request):
        with self.lock:
            pid = str(uuid.uuid4())
            p = {"id": pid, "state": State.WAITING_FOR_CARD.value, **request, "card": None, "authorization": None,
                 "error": None, "idempotency_key": idempotency_key}
            self.payments[pid] = p
            self.keys[idempotency_key] = pid
            self.history.append((pid, p["state"]))
            return dict(p)

    def payment_by_key(self, key):
        pid = self.keys.get(key)
        return dict(self.payments[pid]) if pid else None

    def payment(self, payment_id):
        p = self.payments.get(payment_id)
        return dict(p) if p else None

    def active_payments(self):
        return [dict(p) for p in self.payments.values() if p["state"] in ACTIVE]

    def recent_payments(self, limit):
        return [dict(p) for p in list(self.payments.values())[::-1][:limit]]

    def set_state(self, payment_id, state, **fields):
        with self.lock:
            p = self.payments[payment_id]
            p["state"] = State(state).value
            p.update(fields)
            self.history.append((payment_id, p["state"]))
            return dict(p)

    def is_recorded(self, payment_id):
        return payment_id in self.recorded

    def offline_decision(self, payment, card):
        return self.offline

    def online_request(self, payment, card):
        return {"amount_minor": payment["amount_minor"], "currency": payment["currency"], "masked_pan": card.masked_pan}

    def record_approval(self, payment, card, auth):
        if self.record_gate is not None:
            self.record_gate.wait(5)
        if self.fail_record is not None:
            raise self.fail_record
        with self.lock:
            self.recorded[payment["id"]] = {"amount_minor": payment["amount_minor"], "auth": auth.to_dict()}
            p = self.payments[payment["id"]]
            # as the real store writes it with the transaction
            stored = {"mode": auth.method, "code": auth.code, "reason": auth.reason, "auth_id": auth.auth_id}
            p.update(state=State.APPROVED.value, authorization=stored)
            self.history.append((payment["id"], p["state"]))
            return dict(p)

    def queue_reversal(self, reversal):
        if self.fail_reversal is not None:
            raise self.fail_reversal
        with self.lock:
            self.reversals.setdefault(reversal["idempotency_key"], reversal)
            self.history.append((reversal["idempotency_key"], "reversal_owed"))

    def record_void(self, payment, *, idempotency_key):
        existing = self.payment_by_key(idempotency_key)
        if existing:
            return existing, False
        void = self.create_payment(idempotency_key=idempotency_key, request={
            "type": "void", "amount_minor": payment["amount_minor"], "currency": payment["currency"],
            "reference": payment.get("reference"), "mode": "force-offline", "void_of": payment["id"]})
        self.set_state(void["id"], State.APPROVED)
        self.recorded[void["id"]] = {"void_of": payment["id"]}
        return self.payment(void["id"]), True


class ReceiptLog:
    def __init__(self):
        self.jobs = []
        self.states = {}  # transaction id -> receipt state, for receipts queued before the test began

    def receipt_state(self, txn_uuid):
        return self.states.get(txn_uuid)

    def submit(self, payment, *, request_id, reprint=False):
        self.jobs.append((payment["id"], payment["state"], request_id))
