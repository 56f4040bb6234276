"""Durable print jobs: recorded before they are sent, sent by one background thread, retried when the printer
recovers, marked printed / failed / unknown. ``submit`` never talks to the printer, so a silent or broken
printer never holds up a sale.

Job states (stored in the offline queue's SQLite database, one commit per change)::

    pending --claim--> sending --> printed
                          |------> failed   (error code: paper_out, offline, no_reply, unavailable,
                          |                  disconnected, timeout -> retried when the printer is ready again,
                          |                  within ``retry_window_s``, at most ``max_attempts`` in all -- one
                          |                  more only when it failed after the whole receipt was written;
                          |                  bad_receipt -> never retried)
                          '------> unknown  (all bytes sent but the printer stopped answering, or the terminal
                                             restarted mid-job: not re-sent automatically)

At most once per request: jobs are keyed by ``request_id`` (one job per copy), so submitting the same request
again returns the existing job. A job found in ``sending`` at start-up (the process died while printing) becomes
``unknown`` and is never re-sent on its own. What a crash mid-job can leave on paper: nothing, a partial receipt
without a cut (the printer printed what it had received), or the complete receipt if the crash came after the
last byte but before ``printed`` was stored. A reprint (new request id) is marked DUPLICATE on paper.

A retried job prints the whole receipt again: after paper ran out mid-receipt, the paper shows the partial
first attempt followed by the complete one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any, Protocol

from drivers.printer import (
    UNKNOWN_STATUS,
    PrinterConnection,
    PrinterDisconnected,
    PrinterError,
    PrinterProfile,
    PrinterStatus,
    PrinterTimeout,
)
from protocol.carddata import redact, redact_line
from protocol.errors import ValidationError
from terminal.receipt import (
    COPIES,
    ReceiptModel,
    make_test_page,
    receipt_for_transaction,
    render_escpos,
    settlement_model,
)

log = logging.getLogger(__name__)

RETRYABLE = {"paper_out", "offline", "no_reply", "unavailable", "disconnected", "timeout", "not_ready"}
JOB_STATES = ("pending", "sending", "printed", "failed", "unknown")
ERROR_TEXT_MAX = 300  # a job's stored error: one line of at most this many characters


class PrintJob(Protocol):
    id: Any
    kind: str
    txn_uuid: str | None
    request_id: str
    payload: dict[str, Any]
    state: str
    error: str | None


class PrintJobStore(Protocol):
    """What the spooler needs from the offline queue's store (``offline_queue.store.QueueStore``)."""

    def add_print_job(self, kind: str, txn_uuid: str | None, request_id: str, payload: dict[str, Any]) -> PrintJob: ...
    def claim_print_job(self, job_id: int | None = None) -> PrintJob | None: ...
    def mark_print_job(self, job_id: int, state: str, error: str | None = None) -> Any: ...
    def print_jobs(self, states: Iterable[str] | None = None, limit: int = 100, *,
                   newest_first: bool = False) -> list[PrintJob]: ...
    def print_jobs_for_txn(self, txn_uuid: str) -> list[PrintJob]: ...
    def prune_print_jobs(self, older_than_s: float) -> int: ...


PrinterFactory = Callable[[], PrinterConnection]


@dataclass
class _Attempt:
    state: str
    code: str = ""
    message: str = ""
    after_send: bool = False  # failed once the whole receipt had been written


KEEP_JOBS_S = 30 * 86400.0  # finished print jobs are kept this long (receipt state, `smartpos status`), then deleted
PRUNE_EVERY_S = 6 * 3600.0


def error_code(error: str | None) -> str:
    """Jobs store errors as ``"code: message"``."""
    return (error or "").split(":", 1)[0].strip()


class PrintSpooler:
    """One background thread that prints stored jobs in order. Thread-safe ``submit``/``status``."""

    def __init__(
        self,
        store: PrintJobStore,
        printer_factory: PrinterFactory,
        *,
        profile: PrinterProfile,
        merchant: Mapping[str, Any],
        terminal_id: str,
        retry_interval_s: float = 2.0,
        retry_window_s: float = 900.0,
        max_attempts: int = 20,
        idle_probe_s: float = 30.0,
        copies: tuple[str, ...] = ("merchant", "customer"),
        tz: tzinfo | None = None,
        header: Callable[[], Sequence[str]] | None = None,
        keep_jobs_s: float = KEEP_JOBS_S,
    ) -> None:
        """``tz``: the zone receipt times are printed in; None = the system's local time (what a shop reads).
        ``header``: extra lines under the merchant's name and address (head office's ``receipt_header`` parameter,
        read when each receipt is made, so a change reaches the next receipt)."""
        self.store = store
        self.printer_factory = printer_factory
        self.profile = profile
        self.merchant = dict(merchant)
        self.terminal_id = terminal_id
        self.retry_interval_s = retry_interval_s
        self.retry_window_s = retry_window_s
        self.max_attempts = max_attempts
        self.idle_probe_s = idle_probe_s
        self.copies = copies
        self.tz = tz
        self.header = header
        self.keep_jobs_s = keep_jobs_s
        self._next_prune = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._status: PrinterStatus = UNKNOWN_STATUS
        self._status_at: float | None = None
        self._last_error = ""
        self._attempts: dict[Any, int] = {}
        self._first_failed: dict[Any, float] = {}
        self._unrecorded: dict[str, str] = {}  # txn uuid -> why its receipt job could not be recorded
        self._next_probe = 0.0
        self._prepare = threading.Event()
        self._prepared = False

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> PrintSpooler:
        """Recover from a crash (jobs left in ``sending`` become ``unknown``), then start the worker."""
        for job in self.store.print_jobs(["sending"]):
            self.store.mark_print_job(
                job.id, "unknown",
                "interrupted: terminal restarted while this receipt was being sent; not re-sent (reprint if needed)",
            )
        # Failed jobs from before the restart get retried too, only while still in their window, counted from when
        # they last failed: a receipt that failed days ago (and was likely reprinted) does not come out again.
        now = time.monotonic()
        for job in self.store.print_jobs(["failed"], newest_first=True):
            self._first_failed.setdefault(job.id, now - _age_s(job.updated_at))
        self._thread = threading.Thread(target=self._run, name="print-spooler", daemon=True)
        self._thread.start()
        return self

    def alive(self) -> bool:
        """The worker thread runs (true before ``start()``, which has nothing to run yet)."""
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    # -- API used by the daemon -------------------------------------------------------------------------
    def submit(self, kind: str, txn: object, request_id: str, *, copies: Iterable[str] | None = None,
               reprint: bool = False) -> list[Any]:
        """Record the job(s) for this request and return their ids at once; printing happens in the background.

        ``kind``: sale | refund | void (``txn`` = the recorded transaction; one job per copy), settlement
        (``txn`` = the closed ``Batch`` or a mapping like it), test (``txn`` ignored). Never raises for printer
        problems; a store error is logged and reported by ``status()`` (the sale stays approved: a missing
        receipt can be reprinted)."""
        try:
            models = self._models(kind, txn, copies, reprint)
        except ValidationError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError("invalid_receipt", f"cannot build a {kind} receipt: {exc}") from None
        ids = []
        for suffix, model in models:
            txn_uuid = model.txn.uuid if model.txn else None
            try:
                job = self.store.add_print_job(kind, txn_uuid, f"{request_id}{suffix}", model.to_dict())
            except Exception as exc:  # the store's typed errors; a receipt must never fail the sale
                self._last_error = redact(f"store: {exc}")
                log.error("could not record print job for request %s: %s", request_id, self._last_error)
                if txn_uuid is not None and not reprint:
                    self._unrecorded[txn_uuid] = self._last_error  # its receipt state is "failed", not pending
                    while len(self._unrecorded) > 256:
                        self._unrecorded.pop(next(iter(self._unrecorded)))
                continue
            ids.append(job.id)
        self._wake.set()
        return ids

    def reprint(self, txn: object, request_id: str, *, copy: str = "customer") -> list[Any]:
        kind = str(txn.get("type") if isinstance(txn, Mapping) else txn.type)  # type: ignore[attr-defined]
        return self.submit(kind, txn, request_id, copies=[copy], reprint=True)

    def prepare(self) -> None:
        """A receipt is probably coming (a payment started): have the worker load the rendering stack now.

        python-escpos, Pillow and qrcode are imported on first use so an idle terminal does not carry them;
        loading them while the customer reaches for a card keeps that cost off the first receipt."""
        if not self._prepared:
            self._prepare.set()
            self._wake.set()

    def status(self) -> dict[str, Any]:
        """Cached state, no I/O: {printer: ok|paper_low|paper_out|offline|unknown, online, paper, detail,
        checked_age_s, pending, failed, last_error}."""
        with self._lock:
            status, at = self._status, self._status_at
        try:
            pending = len(self.store.print_jobs(["pending", "sending"]))
            failed = len(self.store.print_jobs(["failed"]))
        except Exception as exc:
            pending = failed = -1
            self._last_error = redact(f"store: {exc}")
        return {
            "printer": status.summary,
            "online": status.online,
            "paper": status.paper,
            "detail": status.detail,
            "checked_age_s": None if at is None else round(time.monotonic() - at, 1),
            "pending": pending,
            "failed": failed,
            "last_error": self._last_error,
        }

    def receipt_state(self, txn_uuid: str) -> str | None:
        """printed | pending | failed for a transaction's receipts (None: none submitted). A customer copy that
        failed but was then reprinted (DUPLICATE) counts as printed: the customer has a receipt."""
        all_jobs = self.store.print_jobs_for_txn(txn_uuid)
        jobs = [j for j in all_jobs if not (j.payload or {}).get("reprint")]
        if not jobs:
            return "failed" if txn_uuid in self._unrecorded else None
        states = {j.state for j in jobs}
        if states & {"failed", "unknown"}:
            if any(j.state == "printed" and (j.payload or {}).get("reprint") for j in all_jobs):
                return "printed"
            return "failed"
        if states & {"pending", "sending"}:
            return "pending"
        return "printed"

    def wait_idle(self, timeout: float) -> bool:
        """Block until no job is pending or sending (tests and the CLI)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.store.print_jobs(["pending", "sending"]):
                return True
            self._wake.set()
            time.sleep(0.02)
        return False

    # -- worker -----------------------------------------------------------------------------------------
    def _models(self, kind: str, txn: object, copies: Iterable[str] | None,
                reprint: bool) -> list[tuple[str, ReceiptModel]]:
        merchant = self._merchant()
        if kind in ("sale", "refund", "void"):
            txn = self._with_original(txn)
            chosen = tuple(copies or self.copies)
            bad = [c for c in chosen if c not in COPIES]
            if bad:
                raise ValidationError("invalid_receipt", f"unknown receipt copy {bad[0]!r}")
            return [
                (f":{copy}", receipt_for_transaction(txn, merchant=merchant, terminal_id=self.terminal_id,
                                                     copy=copy, reprint=reprint, tz=self.tz))
                for copy in chosen
            ]
        if kind == "settlement":
            if txn is None:
                raise ValidationError("invalid_receipt", "a settlement report needs the closed batch")
            return [("", settlement_model(txn, merchant=merchant, terminal_id=self.terminal_id, tz=self.tz))]
        if kind == "test":
            return [("", make_test_page(self.profile, merchant=merchant, terminal_id=self.terminal_id,
                                         status_before=self._status.summary, tz=self.tz))]
        raise ValidationError("invalid_receipt", f"unknown receipt kind {kind!r}")

    def _merchant(self) -> dict[str, Any]:
        if self.header is None:
            return self.merchant
        try:
            lines = [str(line) for line in self.header() or ()]
        except Exception as exc:  # the header is decoration: a receipt without it beats no receipt
            log.warning("receipt header unavailable: %s", redact(str(exc)))
            lines = []
        return {**self.merchant, "address": [*(self.merchant.get("address") or ()), *lines]} if lines else self.merchant

    def _with_original(self, txn: object) -> object:
        """A void's receipt names the voided sale (or refund) by its sequence number, and a (reprinted) receipt of
        a voided sale names its void; the records only hold each other's uuid."""
        def field_of(name: str) -> Any:
            return txn.get(name) if isinstance(txn, Mapping) else getattr(txn, name, None)

        lookup = getattr(self.store, "transaction", None)
        if lookup is None:
            return txn
        extra: dict[str, Any] = {}
        for uuid_field, seq_field in (("void_of", "original_sequence"), ("voided_by", "voided_by_sequence")):
            other_uuid = field_of(uuid_field)
            if not other_uuid:
                continue
            try:
                other = lookup(other_uuid)
            except Exception as exc:  # the receipt prints without the cross-reference rather than not at all
                log.warning("receipt.lookup_failed", extra={"field": uuid_field, "error": type(exc).__name__})
                continue
            if other is not None:
                extra[seq_field] = other.sequence
                if uuid_field == "void_of":
                    extra["original_type"] = other.type
        if not extra:
            return txn
        base = dict(txn) if isinstance(txn, Mapping) else {
            f: getattr(txn, f) for f in getattr(txn, "__dataclass_fields__", {})
        }
        return {**base, **extra}

    def _set_status(self, status: PrinterStatus) -> None:
        with self._lock:
            self._status, self._status_at = status, time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:
                # The spooler outlives any one failure (a store that refuses a write, a driver error that is no
                # PrinterError): the jobs stay where they are and are taken up again, the status says why.
                self._last_error = redact_line(f"spooler: {type(exc).__name__}: {exc}", ERROR_TEXT_MAX)
                log.error("print spooler step failed: %s", self._last_error)
                self._wake.wait(self.retry_interval_s)
                self._wake.clear()

    def _step(self) -> None:
        try:
            job = self.store.claim_print_job()
        except Exception as exc:
            self._last_error = redact(f"store: {exc}")
            log.error("print spooler cannot read jobs: %s", self._last_error)
            self._wake.wait(self.retry_interval_s)
            self._wake.clear()
            return
        if job is not None:
            self._idle.clear()
            self._run_job(job)
            return
        self._idle.set()
        if self._prepare.is_set() and not self._prepared:
            self._warm_up()
        self._maybe_probe()
        self._maybe_prune()
        self._wake.wait(min(self.retry_interval_s, self.idle_probe_s))
        self._wake.clear()

    def _warm_up(self) -> None:
        # A throwaway render (test page: text, codepages, QR) imports and initialises what real receipts use.
        self._prepared = True
        try:
            render_escpos(make_test_page(self.profile, merchant=self.merchant, terminal_id=self.terminal_id,
                                         status_before=self._status.summary), self.profile)
        except Exception as exc:  # only a warm-up: the real job reports its own errors
            log.debug("receipt rendering warm-up failed: %s", redact(str(exc)))

    def _run_job(self, job: PrintJob) -> None:
        attempt = self._attempt(job)
        self._attempts[job.id] = self._attempts.get(job.id, 0) + 1
        if attempt.after_send:
            # at most one more copy of a receipt that may already be on paper
            self._attempts[job.id] = max(self._attempts[job.id], self.max_attempts - 1)
        # One line: a driver's message may span several (pyusb's does), and the store keeps printable text only.
        error = redact_line(f"{attempt.code}: {attempt.message}", ERROR_TEXT_MAX) if attempt.code else None
        if attempt.state == "failed":
            self._first_failed.setdefault(job.id, time.monotonic())
            self._last_error = error or ""
            self._next_probe = time.monotonic() + self.retry_interval_s
        else:
            self._first_failed.pop(job.id, None)
            if attempt.state == "printed":
                self._last_error = ""  # the printer works again: its last problem is over
        try:
            self.store.mark_print_job(job.id, attempt.state, error)
        except Exception as exc:
            self._last_error = redact(f"store: {exc}")
            log.error("could not store print job %s state %s: %s", job.id, attempt.state, self._last_error)
            # The job is still `sending`: try once more with the bare code, so it does not stay pending for good
            # (at start-up a job left in `sending` becomes unknown, never re-sent).
            try:
                self.store.mark_print_job(job.id, attempt.state, attempt.code or None)
            except Exception:
                log.error("print job %s stays in sending until the next start", job.id)
        log.info("print job %s (%s): %s%s", job.id, job.kind, attempt.state, f" ({error})" if error else "")

    def _attempt(self, job: PrintJob) -> _Attempt:
        try:
            data = render_escpos(ReceiptModel.from_dict(job.payload), self.profile)
        except (ValidationError, ValueError, KeyError, TypeError) as exc:
            return _Attempt("failed", "bad_receipt", str(exc))
        try:
            conn = self.printer_factory()
        except Exception as exc:  # PrinterError, or a driver's own (a setting it cannot take): the job fails, typed
            self._set_status(PrinterStatus(False, "unknown", str(exc)))
            return _Attempt("failed", "unavailable", str(exc))
        sent = False
        with conn:
            try:
                if conn.supports_status:
                    before = conn.status()
                    self._set_status(before)
                    if not before.ready:
                        return _Attempt("failed", _not_ready_code(before), before.detail or before.summary)
                conn.write(data)
                sent = True
                if not conn.supports_status:
                    return _Attempt("printed")
                after = conn.status()
                self._set_status(after)
            # After the whole receipt was written, a failure cannot tell a printer that got it all (a print server
            # that closes the connection after each job) from one that dropped mid-receipt (TCP accepted bytes the
            # printer never saw): such a job gets one more automatic attempt, not max_attempts of them.
            except PrinterTimeout as exc:
                self._set_status(PrinterStatus(None, "unknown", str(exc)))
                return _Attempt("failed", "timeout", str(exc), after_send=sent)
            except PrinterDisconnected as exc:
                self._set_status(PrinterStatus(False, "unknown", str(exc)))
                return _Attempt("failed", "disconnected", str(exc), after_send=sent)
            except PrinterError as exc:
                return _Attempt("failed", exc.code, str(exc), after_send=sent)
        if after.paper == "out" or after.online is False:
            return _Attempt("failed", _not_ready_code(after), "printer stopped while printing: " + after.summary)
        if after.online is None:
            return _Attempt("unknown", "no_reply", "all data sent but the printer did not answer afterwards")
        return _Attempt("printed")

    def _maybe_prune(self) -> None:
        """When idle, at start and then every few hours: forget finished jobs older than ``keep_jobs_s``."""
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY_S
        try:
            removed = self.store.prune_print_jobs(self.keep_jobs_s)
        except Exception as exc:  # a store that refuses the delete keeps its jobs; printing goes on
            log.warning("print jobs not pruned: %s", redact(str(exc)))
            return
        if removed:
            log.info("pruned %d print jobs finished more than %.0f days ago", removed, self.keep_jobs_s / 86400)
            for book in (self._attempts, self._first_failed):
                for job_id in [j for j in book if self.store.get_print_job(j) is None]:
                    book.pop(job_id, None)

    def _maybe_probe(self) -> None:
        now = time.monotonic()
        if now < self._next_probe:
            return
        try:
            # Newest first: the retry window is minutes, and old failures past it must not hide new ones.
            retry = [j for j in self.store.print_jobs(["failed"], newest_first=True) if self._retry_allowed(j, now)]
        except Exception as exc:
            self._last_error = redact(f"store: {exc}")
            return
        self._next_probe = now + (self.retry_interval_s if retry else self.idle_probe_s)
        status = self._probe()
        if retry and (status.ready or (status.online is None and status.detail.startswith("this connection"))):
            for job in retry:
                self.store.mark_print_job(job.id, "pending", job.error)
            self._wake.set()

    def _retry_allowed(self, job: PrintJob, now: float) -> bool:
        if error_code(job.error) not in RETRYABLE:
            return False
        if self._attempts.get(job.id, 0) >= self.max_attempts:
            return False
        return now - self._first_failed.setdefault(job.id, now) <= self.retry_window_s

    def _probe(self) -> PrinterStatus:
        try:
            with self.printer_factory() as conn:
                status = conn.status()
        except Exception as exc:  # a probe never stops the spooler: a status it cannot get is unknown
            status = PrinterStatus(False, "unknown", str(exc))
        self._set_status(status)
        return status


def _age_s(stamp: str) -> float:
    """Seconds since a stored UTC timestamp; 0 when it cannot be read."""
    from datetime import UTC, datetime

    from offline_queue.store import parse_utc_iso

    then = parse_utc_iso(stamp)
    return max(0.0, (datetime.now(UTC) - then).total_seconds()) if then is not None else 0.0


def _not_ready_code(status: PrinterStatus) -> str:
    if status.paper == "out":
        return "paper_out"
    if status.online is False:
        return "offline"
    return "no_reply"
