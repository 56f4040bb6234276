"""The payment flow: one worker thread drives one payment at a time through the stored state machine.

Order of effects for an approval (the write-ahead rule): the transaction is committed to the queue, in the same
commit as the payment's ``approved`` state; only then is the state published to the front end, and only then is
the receipt handed to the spooler. A crash anywhere leaves a payment that ``recover()`` resolves
deterministically (see ``terminal.payment.resolve_after_restart``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from drivers.cardread import EmvCardRead, UidCardRead
from drivers.errors import CardError, ReadTimeout
from protocol.amounts import validate_amount, validate_currency
from protocol.errors import ValidationError
from terminal.authorization import (
    Authorization,
    OfflineDecision,
    OnlineRefused,
    OnlineUnavailable,
    decide,
    reversal_for,
)
from terminal.payment import CANCELLABLE, PAYMENT_TYPES, State, check_transition, is_final, resolve_after_restart

log = logging.getLogger("smartpos.payments")

Payment = dict[str, Any]


# At start-up, approvals of the last 15 minutes (at most 20) whose receipt a stop may have lost are queued again.
LOST_RECEIPT_WINDOW_S = 900
LOST_RECEIPT_SCAN = 20


class Ledger(Protocol):
    """What the flow needs from the durable queue (``terminal.ledger.QueueLedger`` is the real one)."""

    def create_payment(self, *, idempotency_key: str, request: dict[str, Any]) -> Payment: ...
    def payment_by_key(self, idempotency_key: str) -> Payment | None: ...
    def payment(self, payment_id: str) -> Payment | None: ...
    def active_payments(self) -> list[Payment]: ...
    def recent_payments(self, limit: int) -> list[Payment]: ...
    def set_state(self, payment_id: str, state: State, **fields: Any) -> Payment: ...
    def is_recorded(self, payment_id: str) -> bool: ...
    def offline_decision(self, payment: Payment, card: EmvCardRead) -> OfflineDecision: ...
    def online_request(self, payment: Payment, card: EmvCardRead) -> dict[str, Any]: ...
    def record_approval(self, payment: Payment, card: EmvCardRead, auth: Authorization) -> Payment: ...
    def record_void(self, payment: Payment, *, idempotency_key: str) -> tuple[Payment, bool]: ...
    def queue_reversal(self, reversal: dict[str, Any]) -> None: ...


class Reversals(Protocol):
    """Head office's side of reversals (``terminal.hqlink.HeadOfficeLink``)."""

    def owed(self) -> None: ...
    def send_now(self, reversal: dict[str, Any]) -> None: ...


class Reader(Protocol):
    def wait_for_card(self, td: Any, *, timeout: float, cancel: threading.Event,
                      on_detected: Callable[[str], None] | None = None) -> Any: ...


class _ReadingGate:
    """One ``wait_for_card`` call's ``reading`` announcement: made at most once, from the reader's thread when the
    card is sensed, and never after the wait returned (so it cannot land on top of a later state)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.shown = False
        self.closed = False

    def close(self) -> bool:
        """End the wait's window; True when ``reading`` was shown during it."""
        with self.lock:
            self.closed = True
            return self.shown


class Receipts(Protocol):
    def submit(self, payment: Payment, *, request_id: str, reprint: bool = False) -> None: ...
    def receipt_state(self, txn_uuid: str | None) -> str | None: ...


class _ReversalUnsaved(Exception):
    """Head office may hold an approval for this payment and the reversal owed for it could not be stored."""


class FlowError(Exception):
    """A request the flow refuses; ``status`` is the HTTP status the API answers with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class FlowSettings:
    default_mode: str = "prefer-online"
    card_timeout_s: float = 60.0
    terminal_data: Callable[[Payment], Any] | None = None
    # pause before asking a reader again after it reported itself unavailable
    reader_retry_s: float = 0.25
    # closed loop: a UID-only card pays (identified by its keyed UID token; no EMV data, nothing sealed)
    closed_loop_uid: bool = False
    currency: str = "EUR"  # the terminal data of a read outside a payment (``read_card``)


class PaymentFlow:
    def __init__(
        self,
        ledger: Ledger,
        reader: Reader,
        *,
        online: Callable[[dict[str, Any]], dict[str, Any]] | None,
        receipts: Receipts | None,
        publish: Callable[[str, Payment], None],
        settings: FlowSettings,
        on_outcome: Callable[[Payment], None] | None = None,
        reversals: Reversals | None = None,
    ) -> None:
        self._ledger = ledger
        self._reversals = reversals
        self._reader = reader
        self._online = online
        self._receipts = receipts
        self._publish = publish
        self._settings = settings
        self._on_outcome = on_outcome
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._queued: str | None = None
        self._current: str | None = None
        self._cancel = threading.Event()
        self._cancel_for: str | None = None  # the payment `_cancel` belongs to: a late cancel never ends the next
        self._cancel_reason = "cancelled_by_pos"
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._timings: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._live: dict[str, Payment] = {}
        # Final states the store could not take (disk full): shown from memory, written once the store takes writes.
        self._unsaved: dict[str, tuple[State, dict[str, Any]]] = {}
        self.last_error: dict[str, str] | None = None
        self._last_error_payment: str | None = None
        self.heartbeat = time.monotonic()
        self._read_cancel: threading.Event | None = None  # set while a read outside a payment waits (read_card)

    # ----- lifecycle -------------------------------------------------------------------------------------------
    def recover(self) -> list[Payment]:
        """Resolve payments a crash or restart left in flight. Run before the API accepts requests."""
        resolved = []
        for payment in self._ledger.active_payments():
            recorded = self._ledger.is_recorded(payment["id"])
            state, reason = resolve_after_restart(payment["state"], recorded=recorded)
            if payment["state"] == State.AUTHORIZING and not recorded:
                # Head office was being asked when the terminal stopped: it may have approved. Owed before the
                # payment is marked failed, so a crash in between still leaves the reversal to send; if it could
                # be neither stored nor sent, the payment stays authorizing so that the next start tries again.
                if not self._owe_reversal(payment, "interrupted", strict=False):
                    continue
            if recorded:
                # The approval committed with the transaction; only a stale stored state is left to fix.
                fixed = self._ledger.payment(payment["id"]) or payment
            else:
                fixed = self._ledger.set_state(
                    payment["id"], state, error={"code": reason or "interrupted",
                                                 "message": "the terminal restarted before this payment completed"}
                )
            log.warning("payment.recovered", extra={"payment_id": payment["id"], "was": payment["state"],
                                                    "now": fixed["state"]})
            resolved.append(fixed)
            if recorded and self._receipts is not None:
                # The spooler is idempotent on request_id: a receipt already queued is not printed twice.
                self._receipts.submit(fixed, request_id=f"{fixed['id']}:receipt")
        self._queue_lost_receipts()
        return resolved

    def _queue_lost_receipts(self) -> None:
        """The approval commits with its transaction and its receipt is queued just after: a stop in between (power
        cut) left an approved payment whose receipt nobody would print. Recent approvals are submitted again;
        per-copy request ids make that a no-op for a receipt already queued or printed."""
        if self._receipts is None:
            return
        from datetime import UTC, datetime

        from offline_queue.store import parse_utc_iso

        now = datetime.now(UTC)
        try:
            recent = self._ledger.recent_payments(LOST_RECEIPT_SCAN)
        except Exception:  # the daemon starts all the same; the cashier can still reprint
            log.exception("receipt.recovery_failed")
            return
        for payment in recent:
            approved_at = parse_utc_iso(payment.get("updated_at"))
            if payment.get("state") != State.APPROVED or payment.get("type") not in ("sale", "refund") \
                    or approved_at is None or (now - approved_at).total_seconds() > LOST_RECEIPT_WINDOW_S:
                continue
            try:
                # Read before any write: a receipt already queued (the usual case) costs no commit at start-up.
                if self._receipts.receipt_state(payment.get("transaction_id")) is None:
                    self._receipts.submit(payment, request_id=f"{payment['id']}:receipt")
            except Exception:
                log.exception("receipt.recovery_failed", extra={"payment_id": payment["id"]})

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="payment-worker", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop taking payments; a payment waiting for a tap ends ``cancelled``, one past that point finishes."""
        with self._lock:
            self._stopping = True
            self._cancel_reason = "terminal_shutdown"
            self._cancel.set()
            if self._read_cancel is not None:
                self._read_cancel.set()
            self._work.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ----- requests from the API (any thread) ------------------------------------------------------------------
    def create(self, idempotency_key: str, request: dict[str, Any]) -> tuple[Payment, bool]:
        request = self.validate_request(request)
        with self._lock:
            existing = self._ledger.payment_by_key(idempotency_key)
            if existing is not None:
                if existing.get("type") == "void" or any(existing.get(k) != v for k, v in request.items()):
                    raise FlowError(
                        422, "idempotency_key_reused", "this Idempotency-Key was used for a different request"
                    )
                return existing, False
            if self._stopping:
                raise FlowError(503, "shutting_down", "the terminal is shutting down")
            self._refuse_if_busy()
            payment = self._ledger.create_payment(idempotency_key=idempotency_key, request=request)
            self._queued = self._cancel_for = payment["id"]
            self._cancel.clear()
            self._cancel_reason = "cancelled_by_pos"
            self._work.notify_all()
        log.info("payment.created", extra=_fields(payment))
        self._publish(payment["id"], payment)
        return payment, True

    def _refuse_if_busy(self) -> None:
        """Under ``self._lock``: 409 while a payment is not final or a read outside a payment waits for a tap."""
        for busy_id in (self._queued, self._current):
            busy = self._ledger.payment(busy_id) if busy_id else None
            if busy is not None and not is_final(busy["state"]):
                raise FlowError(409, "terminal_busy", f"payment {busy_id} is still {busy['state']}")
        if self._read_cancel is not None:
            raise FlowError(409, "terminal_busy", "a card read (POST /v1/reads) is waiting for a tap")

    def read_card(self, timeout_s: float, cancel: threading.Event | None = None) -> dict[str, Any]:
        """Wait up to ``timeout_s`` for a tap outside any payment and return what was read, as shown to anyone:
        an NDEF tag's records (member id, coupon), a UID card's UID, a payment card masked. For a POS front end that
        takes member tags or coupons while the daemon owns the readers. Nothing is stored. One at a time, and never
        while a payment is in progress (409 ``terminal_busy`` either way; a payment asked for meanwhile gets it too).
        Setting ``cancel`` (the API does when the front end hangs up) or :meth:`cancel_read` ends the wait with 409
        ``read_cancelled``, so the next payment need not wait for the read's timeout.
        """
        from drivers.errors import ReaderUnavailableError

        with self._lock:
            if self._stopping:
                raise FlowError(503, "shutting_down", "the terminal is shutting down")
            self._refuse_if_busy()
            cancel = self._read_cancel = cancel if cancel is not None else threading.Event()
        try:
            terminal_data = self._settings.terminal_data  # as _process builds it, for an amount of zero
            td = terminal_data({"type": "sale", "amount_minor": 0, "currency": self._settings.currency}) \
                if terminal_data else None
            read = self._reader.wait_for_card(td, timeout=timeout_s, cancel=cancel)
        except ReadTimeout as exc:
            if exc.code == "cancelled" and self._stopping:
                raise FlowError(503, "shutting_down", "the terminal is shutting down; the read was cancelled") from None
            if exc.code == "cancelled":
                raise FlowError(409, "read_cancelled", "the read was cancelled before a card was read") from None
            raise FlowError(408, "card_timeout", f"no card was tapped within {timeout_s:g} s") from None
        except ReaderUnavailableError as exc:
            raise FlowError(503, exc.code, exc.message) from None
        except CardError as exc:
            raise FlowError(422, exc.code, exc.message) from None
        finally:
            with self._lock:
                self._read_cancel = None
        log.info("card.read_outside_payment", extra={"kind": read.kind, "reader": read.reader})
        return read.to_public_dict()

    def cancel_read(self) -> bool:
        """End the read outside a payment that is waiting (POST /v1/reads/cancel); False when none is."""
        with self._lock:
            if self._read_cancel is None:
                return False
            self._read_cancel.set()
            return True

    def validate_request(self, request: dict[str, Any]) -> dict[str, Any]:
        kind = request.get("type", "sale")
        if kind not in PAYMENT_TYPES:
            raise ValidationError("invalid_type", f"type must be one of {', '.join(PAYMENT_TYPES)}, got {kind!r}")
        mode = request.get("mode") or self._settings.default_mode
        if mode not in ("prefer-online", "require-online", "force-offline"):
            raise ValidationError(
                "invalid_mode", f"mode must be prefer-online, require-online or force-offline, got {mode!r}"
            )
        reference = request.get("reference")
        if reference is not None and (not isinstance(reference, str) or len(reference) > 64):
            raise ValidationError("invalid_reference", "reference must be a string of at most 64 characters")
        return {
            "type": kind,
            "amount_minor": validate_amount(request.get("amount_minor")),
            "currency": validate_currency(request.get("currency")),
            "reference": reference,
            "mode": mode,
        }

    def cancel(self, payment_id: str, wait_s: float = 3.0) -> Payment:
        payment = self._get(payment_id)
        if payment["state"] == State.CANCELLED:
            return payment
        if payment["state"] not in CANCELLABLE:
            raise FlowError(409, "not_cancellable", f"payment is {payment['state']}; it can no longer be cancelled")
        with self._lock:
            # Only while this payment is the one queued or in progress and `_cancel` is still its own: the state
            # read above may be stale, and the next payment may already be queued (its creation cleared `_cancel`).
            if self._cancel_for == payment_id and payment_id in (self._queued, self._current):
                self._cancel_reason = "cancelled_by_pos"
                self._cancel.set()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            payment = self._get(payment_id)
            if is_final(payment["state"]):
                break
            time.sleep(0.01)
        if payment["state"] != State.CANCELLED:
            raise FlowError(409, "not_cancellable", f"payment is {payment['state']}; it could not be cancelled")
        return payment

    def void(self, payment_id: str, idempotency_key: str | None = None) -> tuple[Payment, bool]:
        payment = self._get(payment_id)
        if payment["type"] == "void":
            raise FlowError(409, "not_voidable", "a void cannot be voided")
        if payment["state"] != State.APPROVED:
            raise FlowError(409, "not_voidable", f"only approved payments can be voided, not {payment['state']}")
        void, created = self._ledger.record_void(payment, idempotency_key=idempotency_key or f"void:{payment_id}")
        if created:
            log.info("payment.voided", extra={**_fields(void), "void_of": payment_id})
            self._publish(payment_id, self._ledger.payment(payment_id) or payment)
            if self._receipts is not None:
                self._receipts.submit(void, request_id=f"{void['id']}:receipt")
        return void, created

    def reprint(self, payment_id: str, request_id: str) -> Payment:
        payment = self._get(payment_id)
        if payment["state"] != State.APPROVED:
            raise FlowError(409, "no_receipt", f"payment is {payment['state']}; only approved payments have receipts")
        if self._receipts is None or not getattr(self._receipts, "enabled", True):
            raise FlowError(409, "no_printer", "no printer is configured")
        self._receipts.submit(payment, request_id=request_id, reprint=True)
        return payment

    def timings(self, payment_id: str) -> dict[str, float] | None:
        with self._lock:
            return dict(self._timings[payment_id]) if payment_id in self._timings else None

    def busy_payment(self) -> str | None:
        with self._lock:
            return self._current or self._queued

    def _get(self, payment_id: str) -> Payment:
        payment = self._ledger.payment(payment_id)
        if payment is None:
            raise FlowError(404, "not_found", "no payment with this id")
        return payment

    # ----- the worker ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                while self._queued is None and not self._stopping:
                    self.heartbeat = time.monotonic()
                    self._work.wait(1.0)
                if self._stopping and self._queued is None:
                    return
                payment_id, self._queued = self._queued, None
                self._current = payment_id
            if self._unsaved:
                self._save_unsaved()  # this payment's creation was written: the store takes writes again
            try:
                payment = self._ledger.payment(payment_id)
                if payment is not None and payment["state"] == State.WAITING_FOR_CARD:
                    self._process(payment)
            except Exception:  # the worker must outlive any one payment; the payment itself ends failed
                log.exception("payment.worker_error", extra={"payment_id": payment_id})
                self._fail_quietly(payment_id)
            finally:
                with self._lock:
                    self._current = None
                    if payment_id not in self._unsaved:
                        self._live.pop(payment_id, None)
                self.heartbeat = time.monotonic()

    def _process(self, payment: Payment) -> None:
        deadline = time.monotonic() + self._settings.card_timeout_s
        td = self._settings.terminal_data(payment) if self._settings.terminal_data else None
        prepare = getattr(self._receipts, "prepare", None)
        if prepare is not None:
            prepare()  # the receipt stack loads in the spooler's thread while we wait for the tap
        while True:
            self.heartbeat = time.monotonic()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                message = "no card was tapped"
                if self.last_error is not None and self._last_error_payment == payment["id"]:
                    # A card was tapped but never read: say why, not that nothing came.
                    message = f"no card could be read (last: {self.last_error['message']})"
                self._finish(payment, State.TIMED_OUT, error={"code": "card_timeout", "message": message})
                return
            if self._cancel.is_set():
                self._cancelled(payment)
                return
            gate = _ReadingGate()
            try:
                read = self._reader.wait_for_card(td, timeout=min(remaining, 5.0), cancel=self._cancel,
                                                  on_detected=functools.partial(self._show_reading, payment, gate))
            except ReadTimeout as exc:
                reading = gate.close()
                if exc.code == "cancelled" or self._cancel.is_set():
                    self._cancelled(payment)
                    return
                if reading:
                    self._back_to_waiting(payment)
                continue  # slice of the wait elapsed; loop re-checks the overall deadline
            except CardError as exc:  # ReaderUnavailableError included
                if gate.close():
                    self._back_to_waiting(payment)
                self._read_problem(payment, exc)
                continue
            reading = gate.close()
            if self._cancel.is_set():
                self._cancelled(payment)
                return
            if not isinstance(read, EmvCardRead) and not (self._settings.closed_loop_uid
                                                          and isinstance(read, UidCardRead)):
                if reading:
                    self._back_to_waiting(payment)
                self._read_problem(payment, CardError("this card is not a payment card", code="not_a_payment_card"))
                continue
            if isinstance(read, UidCardRead) and read.random_uid:
                # Its token would be a new account at every tap: nothing to charge, nothing to find again.
                if reading:
                    self._back_to_waiting(payment)
                self._read_problem(payment, CardError("this card shows a new random UID at every tap; it cannot pay "
                                                      "by UID", code="uid_random"))
                continue
            self._authorize(payment, read, reading)
            return

    def _show_reading(self, payment: Payment, gate: _ReadingGate, _reader: str) -> None:
        """From the reader's thread: a card was sensed and its read begins. The front end sees ``reading`` (its
        cue to tell the customer to hold the card) for as long as the read takes, not only once it is done."""
        with gate.lock:
            if gate.closed or gate.shown or self._cancel.is_set():
                return
            gate.shown = True
            self._announce_state(payment, State.READING)

    def _back_to_waiting(self, payment: Payment) -> None:
        """The read that ``reading`` announced came to nothing (card pulled away, not a payment card): the payment
        shows its stored state, ``waiting_for_card``, again."""
        self._forget_live(payment["id"])
        self._publish(payment["id"], self._ledger.payment(payment["id"]) or payment)

    def _authorize(self, payment: Payment, card: EmvCardRead | UidCardRead, reading_shown: bool = False) -> None:
        pid = payment["id"]
        self.last_error = self._last_error_payment = None  # a good read: the reader's last problem is over
        timings = {"card_detected": card.detected_at, "card_read": card.read_at}
        public = {k: v for k, v in card.to_public_dict().items() if k in
                  ("scheme", "masked_pan", "entry_mode", "aid", "label", "wallet", "reader")}
        # "reading" was shown when the card was sensed (``reading_shown``; else it is announced now, with the card),
        # then "authorizing" with the card at once. Only a state that guards a side effect outside this
        # process is stored on its own: "authorizing" before head office is asked. Before an offline decision
        # the next commit is the recorded approval itself (or the decline), so a crash in between resolves
        # exactly as a crash in a stored "authorizing" would: not recorded -> failed.
        asks_online = self._online is not None and payment["mode"] != "force-offline"
        if reading_shown:
            payment = {**payment, "state": State.READING.value}
        else:
            payment = self._announce_state(payment, State.READING, card=public)
        if asks_online:
            payment = self._transition(payment, State.AUTHORIZING, card=public)
        else:
            payment = self._announce_state(payment, State.AUTHORIZING, card=public)
        online = None
        if self._online is not None:
            online_call = self._online

            def online() -> dict[str, Any]:
                try:
                    return online_call(self._ledger.online_request(payment, card))
                except OnlineUnavailable as exc:
                    if exc.maybe_delivered:
                        # No answer, but head office may have approved: owe it a reversal before this payment
                        # goes on offline (or ends declined), whatever happens next.
                        self._owe_reversal(payment, f"no_answer:{exc.code}")
                    raise

        try:
            auth = decide(payment["mode"], online=online,
                          offline=lambda: self._ledger.offline_decision(payment, card))
        except (OnlineRefused, OnlineUnavailable) as exc:  # decide() handles these; belt and braces
            auth = Authorization(False, "online", reason=f"online_unavailable:{exc.code}")
        except _ReversalUnsaved:
            self._finish(payment, State.FAILED, card=public,
                         error={"code": "store_write_failed",
                                "message": "head office did not answer and the terminal could not store the reversal "
                                           "it owes; the payment is NOT approved"})
            return
        timings["decided"] = time.monotonic()
        log.info("payment.decided", extra={"payment_id": pid, "approved": auth.approved, "method": auth.method,
                                           "reason": auth.reason, "fallback": auth.fallback})
        if not auth.approved:
            self._finish(payment, State.DECLINED, card=public, authorization=auth.to_dict())
            return
        try:
            approved = self._ledger.record_approval(payment, card, auth)
        except Exception as exc:
            # Never approve without a durable record: the sale is not approved, the cashier sees why.
            log.error("payment.record_failed", extra={"payment_id": pid, "error": type(exc).__name__})
            stored = self._ledger.payment(pid) if self._recorded_anyway(pid) else None
            if stored is not None:
                # The commit went through and something after it failed: the sale stands, as a restart would
                # resolve it, and head office's approval must not be reversed.
                self._approved(stored, timings)
                return
            if auth.method == "online":
                self._owe_reversal(payment, "not_recorded", strict=False)  # head office approved it
            code = getattr(exc, "code", None) or "store_write_failed"
            self._finish(payment, State.FAILED, card=public, authorization=auth.to_dict(),
                         error={"code": str(code), "message": "the payment could not be stored; it is NOT approved"})
            return
        self._approved(approved, timings)

    def _approved(self, approved: Payment, timings: dict[str, float]) -> None:
        pid = approved["id"]
        timings["approved"] = time.monotonic()
        self._remember(pid, timings)
        self._forget_live(pid)
        self._announce(approved)
        if self._receipts is not None:
            self._receipts.submit(approved, request_id=f"{pid}:receipt")

    def _recorded_anyway(self, payment_id: str) -> bool:
        try:
            return self._ledger.is_recorded(payment_id)
        except Exception:
            return False

    def _owe_reversal(self, payment: Payment, reason: str, *, strict: bool = True) -> bool:
        """Queue the reversal of this payment's online authorization; when the store cannot take it, send it now.
        If both fail: ``strict`` raises ``_ReversalUnsaved`` (the payment must not go on), else it is logged and
        False returned."""
        reversal = reversal_for(payment, reason)
        try:
            self._ledger.queue_reversal(reversal)
        except Exception as exc:
            log.error("payment.reversal_unsaved", extra={"payment_id": payment["id"], "error": type(exc).__name__})
            try:
                if self._reversals is None:
                    raise RuntimeError("no head-office link") from None
                self._reversals.send_now(reversal)
            except Exception as send_exc:
                log.error("payment.reversal_lost", extra={"payment_id": payment["id"],
                                                          "error": type(send_exc).__name__})
                if strict:
                    raise _ReversalUnsaved() from None
                return False
            log.warning("payment.reversal_sent_unqueued", extra={"payment_id": payment["id"]})
            return True
        log.warning("payment.reversal_owed", extra={"payment_id": payment["id"], "reason": reversal["reason"]})
        if self._reversals is not None:
            self._reversals.owed()
        return True

    # ----- state changes ---------------------------------------------------------------------------------------
    def _transition(self, payment: Payment, state: State, **fields: Any) -> Payment:
        """Store the new state, then tell listeners."""
        check_transition(payment["state"], state)
        updated = self._ledger.set_state(payment["id"], state, **fields)
        self._forget_live(updated["id"])
        self._publish(updated["id"], updated)
        return updated

    def _announce_state(self, payment: Payment, state: State, **fields: Any) -> Payment:
        """A state that lasts milliseconds and changes nothing a restart would resolve differently: shown to
        listeners (events, GET) without a commit of its own."""
        check_transition(payment["state"], state)
        updated = {**payment, **fields, "state": state.value}
        with self._lock:
            self._live[updated["id"]] = updated
        self._publish(updated["id"], updated)
        return updated

    def live(self, payment_id: str) -> Payment | None:
        """The announced-but-not-stored state of the payment in progress, if any."""
        with self._lock:
            live = self._live.get(payment_id)
            return dict(live) if live is not None else None

    def _forget_live(self, payment_id: str) -> None:
        with self._lock:
            if payment_id not in self._unsaved:
                self._live.pop(payment_id, None)

    def _finish(self, payment: Payment, state: State, **fields: Any) -> None:
        try:
            updated = self._transition(payment, state, **fields)
        except Exception as exc:
            # The store cannot take even the final state (disk full, I/O error). Nothing was recorded for this
            # payment, so it is no approval; its end is shown from memory so the cashier sees it (and why), and
            # written when the store takes writes again (a restart would resolve it the same way).
            log.error("payment.final_state_unsaved", extra={"payment_id": payment["id"], "state": state.value,
                                                            "error": type(exc).__name__})
            check_transition(payment["state"], state)
            updated = {**payment, **{k: v for k, v in fields.items() if v is not None}, "state": state.value}
            with self._lock:
                self._unsaved[payment["id"]] = (state, fields)
                self._live[payment["id"]] = updated
            self._publish(updated["id"], updated)
        self._announce(updated, published=True)

    def _save_unsaved(self) -> None:
        """Write the final states kept in memory, now that the store may take writes again."""
        with self._lock:
            pending = list(self._unsaved.items())
        for payment_id, (state, fields) in pending:
            try:
                self._ledger.set_state(payment_id, state, **fields)
            except Exception:
                return  # still failing: try again before the next payment
            with self._lock:
                self._unsaved.pop(payment_id, None)
                self._live.pop(payment_id, None)

    def _announce(self, payment: Payment, *, published: bool = False) -> None:
        if not published:
            self._publish(payment["id"], payment)
        log.info(f"payment.{payment['state']}", extra=_fields(payment))
        if self._on_outcome is not None:
            self._on_outcome(payment)

    def _cancelled(self, payment: Payment) -> None:
        current = self.live(payment["id"]) or self._ledger.payment(payment["id"]) or payment
        reason = self._cancel_reason
        self._finish(current, State.CANCELLED, error={"code": reason, "message": reason.replace("_", " ")})

    def _read_problem(self, payment: Payment, exc: CardError) -> None:
        """Show the problem on the payment (once per payment), then pause before the reader is asked again: a
        reader that is away, or a card that fails the same way at once (left on the reader), is not retried in a
        tight loop."""
        error = {"code": exc.code, "message": exc.message}
        repeated = self.last_error == error and self._last_error_payment == payment["id"]
        self.last_error, self._last_error_payment = error, payment["id"]
        if not repeated:
            log.warning("payment.read_failed", extra={"payment_id": payment["id"], "code": exc.code})
            current = self._ledger.payment(payment["id"]) or payment
            updated = self._ledger.set_state(current["id"], State(current["state"]), error=error)
            self._publish(updated["id"], updated)
        self._cancel.wait(self._settings.reader_retry_s)

    def _remember(self, payment_id: str, timings: dict[str, float]) -> None:
        with self._lock:
            self._timings[payment_id] = timings
            while len(self._timings) > 256:
                self._timings.popitem(last=False)

    def _fail_quietly(self, payment_id: str) -> None:
        try:
            payment = self._ledger.payment(payment_id)
            if payment is None or is_final(payment["state"]):
                return
            if self._ledger.is_recorded(payment_id):
                return
            if payment["state"] == State.AUTHORIZING and not self._owe_reversal(payment, "internal_error",
                                                                               strict=False):
                # Head office was asked and may have approved; with the reversal neither stored nor sent, the
                # payment stays authorizing so that the next start owes it (as recover() does).
                return
            self._finish(payment, State.FAILED, error={"code": "internal_error", "message": "the payment failed"})
        except Exception:
            log.exception("payment.fail_quietly_error", extra={"payment_id": payment_id})


def _fields(payment: Payment) -> dict[str, Any]:
    return {
        "payment_id": payment.get("id"),
        "state": payment.get("state"),
        "type": payment.get("type"),
        "amount_minor": payment.get("amount_minor"),
        "currency": payment.get("currency"),
        "mode": payment.get("mode"),
    }
