"""The sync engine: drains the local queue to head office, in sequence order, exactly once.

Protocol (PowerSync/CouchDB style): each page is an idempotent unit. The page is marked ``uploaded`` before it is
sent; head office answers per sequence. ``accepted`` (also when it was a replay of something head office already
had) -> the row is accepted and its sealed envelope wiped; ``rejected`` -> that row is dead-lettered with head
office's reason and the rest goes on. A network error, timeout or 5xx leaves the rows as they were: the same page
is sent again after an exponential backoff with jitter, and head office acknowledges what it already stored.
408/425/429 (a proxy timeout, rate limiting) are retried the same way. A 400/413/422 for a whole page halves the
page until the one bad transaction is found and dead-lettered; 401/403 (the terminal itself is refused) and any
other 4xx stop the pass without touching any row, and a refused terminal is not a successful contact (the offline
rules' "time since last contact" keeps running). A "gap" answer never dead-letters: the rows are fine and stay
queued; for the first page it means head office lacks a transaction this terminal no longer sends, and the pass
stops with ``headoffice_behind`` for a technician (``smartpos sync --requeue SEQ`` sends a dead letter again).

Up to ``inflight`` pages are on the wire at once (the terminal reads and marks while head office works), but answers
are applied strictly in order, and a "gap" answer for a page that overtook an unanswered one is not trusted: such
pages are sent again once the earlier ones are settled.

Reversals the terminal owes (online authorizations whose answer came too late) go first, then the pages. After the
queue is drained, closed batches are reported (head office answers balanced/out_of_balance), and
parameters/deny list are refreshed when head office's version changed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from offline_queue.hqclient import (
    HeadOfficeBadAnswer,
    HeadOfficeClient,
    HeadOfficeRejected,
    HeadOfficeUnreachable,
    UploadResult,
)

log = logging.getLogger("smartpos.sync")


class SyncStore(Protocol):
    """The part of ``offline_queue.store.QueueStore`` the engine uses."""

    def pending_page(self, limit: int = 500, *, after_sequence: int = 0) -> list[dict[str, Any]]: ...
    def mark_uploaded(self, sequences: Any) -> int: ...
    def mark_accepted(self, sequences: Any) -> int: ...
    def mark_rejected(self, sequence: int, code: str, reason: str) -> None: ...
    def record_contact(self, at: datetime | None = None) -> None: ...
    def last_contact(self) -> datetime | None: ...
    def hq_envelope_versions(self) -> tuple[int, ...] | None: ...
    def save_hq_envelope_versions(self, versions: Any) -> None: ...
    def batches_to_report(self) -> list[Any]: ...
    def mark_batch_reported(self, number: int, hq_status: str, detail: dict[str, Any] | None = None) -> None: ...
    def pending_reversals(self, limit: int = 100) -> list[dict[str, Any]]: ...
    def mark_reversal(self, idempotency_key: str, *, done: bool, hq_status: str | None) -> None: ...
    def save_parameters(self, version: int, parameters: dict[str, Any], deny_list: Any) -> None: ...
    def parameters(self) -> Any: ...
    def stats(self, *, now: datetime | None = None) -> Any: ...
    def transactions(self, *, batch: int | None = None, after_sequence: int = 0, limit: int = 1000) -> list[Any]: ...
    def last_transaction(self) -> Any: ...


@dataclass
class SyncProgress:
    done: int
    total: int
    accepted: int
    rejected: int


@dataclass
class SyncResult:
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    pages: int = 0
    retries: int = 0
    batches_reported: int = 0
    reversals_sent: int = 0
    parameters_version: int | None = None
    parameters_updated: bool = False
    remaining: int = 0
    online: bool = False
    error: str | None = None
    error_code: str | None = None
    rejections: list[dict[str, Any]] = field(default_factory=list)
    last_retry_error: str | None = None  # with wait=True: why head office was last not reached
    last_retry_code: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stopped(Exception):
    pass


class HeadOfficeBehind(Exception):
    """Head office answered "gap" for the first page: it expects an earlier sequence than any this terminal still
    sends. Nothing is dead-lettered for it; the pass stops so a technician can look (see docs/headoffice.md)."""

    def __init__(self, sequence: int, reason: str) -> None:
        super().__init__(reason)
        self.sequence = sequence
        self.reason = reason


@dataclass
class _Counter:
    total: int
    done: int = 0


@dataclass
class _InFlight:
    page: list[dict[str, Any]]
    future: Future[UploadResult]
    behind_another: bool  # sent while an earlier page was still unanswered


class SyncEngine:
    def __init__(
        self,
        store: SyncStore,
        client: HeadOfficeClient,
        *,
        page_size: int = 500,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 60.0,
        on_progress: Callable[[SyncProgress], None] | None = None,
        on_retry: Callable[[HeadOfficeUnreachable, float], None] | None = None,
        on_contact: Callable[[bool], None] | None = None,
        on_envelope_versions: Callable[[tuple[int, ...]], None] | None = None,
        rng: random.Random | None = None,
        max_rejections_listed: int = 100,
        inflight: int = 2,
    ) -> None:
        self.store = store
        self.client = client
        self.page_size = max(1, int(page_size))
        # Two pages on the wire keep both the terminal and head office busy; answers are still applied in order.
        self.inflight = max(1, int(inflight))
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.on_progress = on_progress
        self.on_retry = on_retry  # (why, seconds to the retry): with wait=True, each time head office is not reached
        self.on_contact = on_contact
        self.on_envelope_versions = on_envelope_versions
        self._envelope_versions: tuple[int, ...] | None = None  # as last passed to on_envelope_versions
        self._rng = rng or random.Random()
        self._max_rejections_listed = max_rejections_listed
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one pass at a time (daemon loop and a technician's sync may overlap)
        self._online: bool | None = None
        self._last_error: str | None = None
        self._last_result: SyncResult | None = None

    # -- state ---------------------------------------------------------------------------------------------------

    def wake(self) -> None:
        """Sync now (after an offline approval, or when head office is seen again)."""
        self._wake.set()

    def note_contact(self, ok: bool) -> None:
        """Outcome of any real request to head office (also the daemon's authorizations)."""
        self._online = ok
        if ok:
            self.store.record_contact()
        if self.on_contact is not None:
            try:
                self.on_contact(ok)
            except Exception:  # a faulty observer must not stop the sync
                log.exception("on_contact callback failed")

    def note_envelope_versions(self, versions: tuple[int, ...] | None) -> None:
        """Head office said which sealed-envelope formats it opens: kept in the queue (for the next start) and
        passed on, so the terminal seals in the newest format head office opens (``on_envelope_versions``). The
        observer hears it once per engine even when another process (`smartpos sync`) stored it already."""
        if versions is None or versions == self._envelope_versions:
            return
        self._envelope_versions = versions
        if self.store.hq_envelope_versions() != versions:
            self.store.save_hq_envelope_versions(versions)
        if self.on_envelope_versions is not None:
            try:
                self.on_envelope_versions(versions)
            except Exception:  # a faulty observer must not stop the sync
                log.exception("on_envelope_versions callback failed")

    def status(self) -> dict[str, Any]:
        last = self.store.last_contact()
        return {
            "online": self._online,
            "last_contact": last.astimezone(UTC).isoformat() if last else None,
            "last_error": self._last_error,
            "last_result": self._last_result.to_dict() if self._last_result else None,
        }

    def backoff_delay(self, attempt: int) -> float:
        """Exponential with "equal jitter": between half and all of min(max, base * 2^attempt)."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2 ** min(attempt, 30)))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    # -- passes --------------------------------------------------------------------------------------------------

    def run_once(self, *, wait: bool = False, stop: threading.Event | None = None) -> SyncResult:
        """One pass: parameters, all pending pages, closed batches. With ``wait``, network errors and 5xx are
        retried with backoff until done or ``stop`` is set; without, the pass ends at the first such error."""
        with self._lock:
            result = SyncResult()
            try:
                self._pass(result, wait=wait, stop=stop)
            except _Stopped:
                result.error = result.error or "stopped"
                result.error_code = result.error_code or "stopped"
            except HeadOfficeUnreachable as exc:
                result.error, result.error_code = exc.message, exc.code
            except HeadOfficeRejected as exc:
                who = "the terminal" if exc.is_auth else "the request"
                result.error, result.error_code = f"head office refused {who}: {exc.message}", exc.code
            except HeadOfficeBehind as exc:
                result.error = (f"head office is missing earlier transactions ({exc.reason}; this terminal's next "
                                f"queued one is #{exc.sequence}): nothing was dead-lettered; see `smartpos sync "
                                "--requeue`")
                result.error_code = "headoffice_behind"
            try:
                result.remaining = int(self.store.stats().unsynced_count)
            except Exception:  # stats are informative only
                result.remaining = -1
            self._last_error = result.error
            self._last_result = result
            return result

    def run_forever(self, stop: threading.Event, interval_s: float = 10.0) -> None:
        """The daemon's loop: a pass every ``interval_s`` or on ``wake()``; after a failure the next pass waits
        the backoff delay instead."""
        failures = 0
        while not stop.is_set():
            try:
                result = self.run_once(stop=stop)
            except Exception as exc:  # store errors: report and keep the loop alive
                log.error("sync pass failed: %s", type(exc).__name__)
                result = SyncResult(error=type(exc).__name__, error_code="internal")
            if result.ok:
                failures = 0
                delay = interval_s
            else:
                delay = self.backoff_delay(failures)
                failures += 1
            self._wake.clear()
            if self._wait_any(stop, delay):
                continue

    def _wait_any(self, stop: threading.Event, delay: float) -> bool:
        deadline = time.monotonic() + delay
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._wake.wait(min(left, 0.5)):
                return True
        return True

    # -- one pass ------------------------------------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any], result: SyncResult, *, wait: bool, stop: threading.Event | None) -> Any:
        attempt = 0
        while True:
            if stop is not None and stop.is_set():
                raise _Stopped()
            try:
                value = fn()
            except HeadOfficeBadAnswer:
                raise  # head office answered, with something unusable: asking again at once would get the same
            except HeadOfficeUnreachable as exc:
                self.note_contact(False)
                if not wait:
                    raise
                self._retry_wait(exc, attempt, result, stop)
                attempt += 1
                continue
            except HeadOfficeRejected as exc:
                # Head office answered and refused this request: reachable, but refusing the terminal itself
                # (401/403: unknown, bad signature, clock) is no successful contact.
                self.note_contact(not exc.is_auth)
                raise
            self.note_contact(True)
            return value

    def _retry_wait(self, exc: HeadOfficeUnreachable, attempt: int, result: SyncResult,
                    stop: threading.Event | None) -> None:
        """Wait the backoff delay before retry ``attempt``, saying why (``on_retry``, the log, the result)."""
        delay = self.backoff_delay(attempt)
        result.retries += 1
        result.last_retry_error, result.last_retry_code = exc.message, exc.code
        log.info("head office unreachable (%s); retry in %.1f s", exc.code, delay)
        if self.on_retry is not None:
            self.on_retry(exc, delay)
        if stop is not None:
            if stop.wait(delay):
                raise _Stopped() from None
        else:
            time.sleep(delay)

    def _pass(self, result: SyncResult, *, wait: bool, stop: threading.Event | None) -> None:
        self._refresh_parameters(result, wait=wait, stop=stop)
        self._send_reversals(result, wait=wait, stop=stop)
        behind: HeadOfficeBehind | None = None
        try:
            with ThreadPoolExecutor(max_workers=self.inflight, thread_name_prefix="sync-upload") as pool:
                self._upload_all(result, pool, wait=wait, stop=stop)
        except HeadOfficeBehind as exc:
            # Closed batches are still reported: head office staff then see them out of balance, with what is
            # missing, while the technician looks into the stuck upload.
            behind = exc
        self._report_batches(result, wait=wait, stop=stop)
        if behind is not None:
            raise behind
        result.online = True

    def _upload_all(self, result: SyncResult, pool: ThreadPoolExecutor, *, wait: bool,
                    stop: threading.Event | None) -> None:
        """Up to ``inflight`` pages on the wire at once, answers applied strictly in sequence order. A later page
        can only be judged once the earlier ones are: when an earlier page fails, what was sent after it is
        settled (its acceptances kept, its rejections not trusted) and sent again."""
        progress = _Counter(total=int(self.store.stats().unsynced_count))
        page_size = self.page_size
        attempt = 0
        known_version = result.parameters_version
        window: deque[_InFlight] = deque()
        after = 0
        while True:
            if stop is not None and stop.is_set():
                self._settle(window, result, progress)
                raise _Stopped()
            while len(window) < self.inflight:
                page = self.store.pending_page(page_size, after_sequence=after)
                if not page:
                    break
                self.store.mark_uploaded([row["sequence"] for row in page])
                window.append(_InFlight(page, pool.submit(self.client.upload, page), behind_another=bool(window)))
                after = page[-1]["sequence"]
            if not window:
                return
            current = window.popleft()
            try:
                upload = _only_sent(current.future.result(), current.page)
            except HeadOfficeUnreachable as exc:  # also an unusable answer: nothing of it is applied
                self.note_contact(False)
                self._settle(window, result, progress)
                after = 0
                if not wait:
                    raise
                self._retry_wait(exc, attempt, result, stop)
                attempt += 1
                continue
            except HeadOfficeRejected as exc:
                self.note_contact(not exc.is_auth)
                self._settle(window, result, progress)
                after = 0
                if not exc.is_content:
                    raise  # the terminal is refused, or the request is: no transaction is at fault
                if len(current.page) > 1:
                    # Something in this page makes head office refuse the whole request: narrow it down.
                    page_size = max(1, len(current.page) // 2)
                    continue
                seq = current.page[0]["sequence"]
                self.store.mark_rejected(seq, exc.code, exc.message)
                result.rejected += 1
                self._note_rejection(result, seq, exc.code, exc.message)
                progress.done += 1
                self._progress(progress, result)
                continue
            self.note_contact(True)
            self.note_envelope_versions(upload.envelope_versions)
            attempt = 0
            page_size = self.page_size
            result.pages += 1
            if not upload.results:
                # An answer that covers none of what was sent would loop forever: stop and report.
                raise HeadOfficeUnreachable("bad_response", "head office answered for none of the uploaded rows")
            # A "gap" for a page sent while an earlier one was still unanswered only means it overtook it.
            untrusted_gap = current.behind_another and any(
                r.status == "rejected" and (r.reason or "").startswith("gap") for r in upload.results)
            try:
                self._apply(upload, result, progress, trust_gaps=not untrusted_gap)
            except HeadOfficeBehind:
                self._settle(window, result, progress)
                raise
            if untrusted_gap:
                self._settle(window, result, progress)
                after = 0
            if upload.parameters_version is not None and upload.parameters_version != known_version:
                known_version = upload.parameters_version
                self._refresh_parameters(result, wait=wait, stop=stop)

    def _apply(self, upload: UploadResult, result: SyncResult, progress: _Counter, *, trust_gaps: bool = True,
               trust_rejections: bool = True) -> None:
        accepted = upload.accepted
        if accepted:
            self.store.mark_accepted(accepted)
        result.accepted += len(accepted)
        result.duplicates += sum(1 for r in upload.results if r.duplicate and r.status == "accepted")
        judged = len(accepted)
        behind = None
        for rej in upload.rejected:
            is_gap = (rej.reason or "").startswith("gap")
            if is_gap:
                # Head office is behind what this terminal holds: the rows are fine, they stay queued. From a page
                # that overtook another it only means that; from the first page it means head office lacks a
                # transaction this terminal no longer sends (a dead letter, or head office restored from a backup).
                if trust_gaps and trust_rejections and behind is None:
                    behind = rej
                continue
            if not trust_rejections:
                continue
            code = (rej.reason or "rejected").split(":", 1)[0][:64].strip() or "rejected"
            self.store.mark_rejected(rej.sequence, code, rej.reason or "rejected by head office")
            self._note_rejection(result, rej.sequence, code, rej.reason)
            result.rejected += 1
            judged += 1
        progress.done += judged
        self._progress(progress, result)
        if behind is not None:
            raise HeadOfficeBehind(behind.sequence, behind.reason or "gap")

    def _settle(self, window: deque[_InFlight], result: SyncResult, progress: _Counter) -> None:
        """Wait for what is still on the wire; keep its acceptances (head office stored those), not its
        rejections (they may follow from the failure before them: the rows are sent again and judged then)."""
        while window:
            pending = window.popleft()
            try:
                upload = _only_sent(pending.future.result(), pending.page)
            except HeadOfficeUnreachable:  # also an unusable answer: its rows are sent again
                self.note_contact(False)
                continue
            except HeadOfficeRejected as exc:
                self.note_contact(not exc.is_auth)
                continue
            self.note_contact(True)
            self._apply(upload, result, progress, trust_rejections=False)

    def _batch_range(self, batch: Any) -> tuple[int | None, int | None]:
        """The batch's sequence range, so head office can name what it is missing. Batches are consecutive
        sequence ranges: a closed batch ends where the next one starts (or at the last transaction)."""
        totals = batch.totals if isinstance(batch.totals, dict) else {}
        if totals.get("first_sequence") and totals.get("last_sequence"):
            return int(totals["first_sequence"]), int(totals["last_sequence"])
        first = _first_of(self.store, batch.number)
        if first is None:
            return None, None
        following = _first_of(self.store, batch.number + 1)
        if following is not None:
            return first, following - 1
        last = self.store.last_transaction()
        return first, int(last.sequence) if last is not None else first

    def _note_rejection(self, result: SyncResult, sequence: int, code: str, reason: str | None) -> None:
        log.warning("head office rejected transaction %d: %s", sequence, reason or code)
        if len(result.rejections) < self._max_rejections_listed:
            result.rejections.append({"sequence": sequence, "code": code, "reason": reason})

    def _progress(self, progress: _Counter, result: SyncResult) -> None:
        if self.on_progress is not None:
            total = max(progress.total, progress.done)
            self.on_progress(SyncProgress(progress.done, total, result.accepted, result.rejected))

    def _refresh_parameters(self, result: SyncResult, *, wait: bool, stop: threading.Event | None) -> None:
        stored = self.store.parameters()
        have = stored.version if stored is not None else None
        try:
            doc = self._call(lambda: self.client.parameters(if_version=have), result, wait=wait, stop=stop)
        except HeadOfficeBadAnswer as exc:
            # Kept whole: the risk rules and deny list in force stay, and the uploads of this pass go on.
            log.warning("head office's parameters were not applied (%s); version %s stays", exc.message, have)
            result.parameters_version = have
            return
        if doc is None:
            result.parameters_version = have
            return
        self.store.save_parameters(doc.version, doc.parameters, doc.deny_list)
        result.parameters_version = doc.version
        result.parameters_updated = True
        log.info("parameters updated to version %d (%d denied tokens)", doc.version, len(doc.deny_list))

    def _send_reversals(self, result: SyncResult, *, wait: bool, stop: threading.Event | None) -> None:
        """Before any upload: the authorizations this terminal owes a reversal (their answers came too late, or
        the sale could not be recorded) are taken back at head office, so no card keeps a hold for a sale the
        customer was told failed, nor one that was approved offline instead."""
        for owed in self.store.pending_reversals():
            key = owed["idempotency_key"]
            try:
                answer = self._call(
                    lambda o=owed: self.client.reverse(
                        idempotency_key=o["idempotency_key"], type=o["type"], amount_minor=o["amount_minor"],
                        currency=o["currency"], reason=o["reason"]),
                    result, wait=wait, stop=stop,
                )
            except HeadOfficeRejected as exc:
                if not (exc.is_content or exc.status == 409):
                    # 401/403 (the terminal is refused) or 404/405 (a head office or proxy without the reversal
                    # route): nothing is wrong with this reversal; it stays owed and the pass stops.
                    self.store.mark_reversal(key, done=False, hq_status=None)
                    raise
                # Head office will never take this one (malformed, or the key belongs to another amount).
                log.warning("head office refused the reversal of %s: %s", key, exc.message)
                self.store.mark_reversal(key, done=True, hq_status=f"refused:{exc.code}")
                continue
            except HeadOfficeBadAnswer as exc:
                log.warning("head office's answer to the reversal of %s was unusable (%s); it stays owed", key,
                            exc.message)  # fmt: skip
                self.store.mark_reversal(key, done=False, hq_status=None)
                continue
            except HeadOfficeUnreachable:
                self.store.mark_reversal(key, done=False, hq_status=None)
                raise
            status = str(answer["status"])
            self.store.mark_reversal(key, done=True, hq_status=status)
            result.reversals_sent += 1
            log.info("authorization %s reversed at head office (%s)", key, status)

    def _report_batches(self, result: SyncResult, *, wait: bool, stop: threading.Event | None) -> None:
        for batch in self.store.batches_to_report():
            lines = totals_lines(batch.totals)
            first, last = self._batch_range(batch)
            try:
                answer = self._call(
                    lambda b=batch, ln=lines, f=first, la=last: self.client.close_batch(
                        b.number, ln, first_sequence=f, last_sequence=la),
                    result, wait=wait, stop=stop,
                )
            except HeadOfficeRejected as exc:
                if exc.is_auth:
                    raise
                log.warning("head office refused batch %d close: %s", batch.number, exc.message)
                continue
            except HeadOfficeBadAnswer as exc:
                log.warning("head office's answer to batch %d close was unusable (%s); it is reported again later",
                            batch.number, exc.message)  # fmt: skip
                continue
            self.store.mark_batch_reported(batch.number, answer["status"], answer)
            result.batches_reported += 1


def _only_sent(upload: UploadResult, page: list[dict[str, Any]]) -> UploadResult:
    """The answer's results for rows of this page only. A result for a row that was not sent must never mark it
    (an acceptance would wipe the envelope of a transaction head office does not have); one row both accepted and
    rejected makes the whole answer unusable."""
    sent = {row["sequence"] for row in page}
    kept = [r for r in upload.results if r.sequence in sent]
    if len(kept) < len(upload.results):
        log.warning("head office answered for %d rows that were not in the page; ignored",
                    len(upload.results) - len(kept))  # fmt: skip
    statuses: dict[int, set[str]] = {}
    for r in kept:
        statuses.setdefault(r.sequence, set()).add(r.status)
    if any({"accepted", "rejected"} <= both for both in statuses.values()):
        raise HeadOfficeBadAnswer("bad_response", "head office both accepted and rejected one transaction")
    return replace(upload, results=kept)


def _first_of(store: Any, batch: int) -> int | None:
    rows = store.transactions(batch=batch, limit=1)
    return int(rows[0].sequence) if rows else None


def totals_lines(totals: dict[str, Any]) -> list[dict[str, Any]]:
    """The queue's batch totals (``offline_queue.totals.compute_totals``) as head office's close lines:
    one per (type, scheme, currency) with count and amount."""
    lines = []
    for entry in totals.get("by_scheme", []) if isinstance(totals, dict) else []:
        scheme = entry.get("scheme")
        for kind in ("sale", "refund", "void"):
            count = int(entry.get(f"{kind}_count", 0))
            if count:
                lines.append({
                    "type": kind,
                    "scheme": None if scheme in (None, "unknown") else scheme,
                    "currency": entry["currency"],
                    "count": count,
                    "amount_minor": int(entry.get(f"{kind}_amount_minor", 0)),
                })
    return lines
