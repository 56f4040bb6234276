"""PC/SC readers through pcscd (pyscard's low-level ``smartcard.scard`` API).

=========================  ==================================================================================
supports                   notes
=========================  ==================================================================================
EMV contactless cards      full read via ``drivers.emv`` (T=0 and T=1; 61xx/6Cxx resolved in the transport)
phones (HCE wallets)       same EMV flow
UID-only cards             PC/SC GET DATA ``FF CA 00 00 00`` when the card has no payment application
reader hotplug             ``\\\\?PnP?\\Notification`` pseudo-reader; the reader list is re-read on each change
pcscd restart / absence    the monitor re-establishes its context with backoff; state ``error`` meanwhile
=========================  ==================================================================================

A monitor thread of our own loops on ``SCardGetStatusChange`` (pyscard's ``CardMonitor`` is a process-wide
singleton that re-reports present cards and dies after a pcscd restart). It records card insertions with the
``time.monotonic()`` at which they were seen and, when a ``wait_for_card`` is waiting, reads the card itself right
away (no thread hand-off, and no status wait of ours running against pcscd during the read). Nothing here raises
anything but ``CardError`` subclasses to callers, and the monitor thread never dies on an error.

One presentation, one read: a card is read once per insertion. A read whose wait timed out before it finished
(the payment flow waits in slices of a few seconds) reached nobody, so it does not use the insertion up: the card,
if still there, is read afresh for the next wait, with that wait's terminal data. A finished read is never kept
for a later wait: it holds the earlier wait's amount, and one read must never reach two payments. A read cut off
by a cancel does use the insertion up: it was presented for a sale that was cancelled (or that another reader's
card paid), and must not pay for the next one unless it is presented again.

Unavailable stack: a wait raises ``ReaderUnavailableError`` (with the status detail) once pcscd has been
unreachable, or no matching reader has existed, for ``drivers.errors.UNAVAILABLE_GRACE_S`` of that wait (a pcscd
restart or a reader re-enumeration passes unreported).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.cardread import CardRead, OnDetected, UidCardRead, notify_detected
from drivers.emv import TerminalData, read_card
from drivers.errors import (
    READ_GRACE_S,
    UNAVAILABLE_GRACE_S,
    CardDataError,
    CardError,
    CardRemovedError,
    NoApplicationError,
    ReaderUnavailableError,
    ReadTimeout,
)
from drivers.transport import RApdu, split_response

log = logging.getLogger(__name__)

PNP_READER = "\\\\?PnP?\\Notification"
GET_UID = bytes.fromhex("FFCA000000")
# PC/SC part 3 ATR historical bytes of a storage card (MIFARE, FeliCa...): RID A000000306. No EMV to try.
_STORAGE_CARD_RID = bytes.fromhex("A000000306")


def _u32(hr: int) -> int:
    return hr & 0xFFFFFFFF


_REMOVED = {0x80100069, 0x8010000C, 0x80100016, 0x80100067, 0x80100068, 0x80100066, 0x8010002F}
_SERVICE_GONE = {0x8010001D, 0x8010001E, 0x80100003, 0x80100009, 0x80100017, 0x8010002E, 0x80100013}
_TIMEOUT = 0x8010000A
_SHARING = 0x8010000B  # SCARD_E_SHARING_VIOLATION: another program has the card connected
_CANCELLED = 0x80100002



def _scard() -> Any:
    # Imported lazily: pyscard loads libpcsclite, which nothing should do at import time of this module.
    from smartcard import scard

    return scard


class _GoneBeforeConnect(CardRemovedError):
    pass


class _HeldByAnother(ReaderUnavailableError):
    """Another program has the card connected: this read waits for it to let go (the card is not read beside it)."""


class PcscTransport:
    """``ApduTransport`` over one connected PC/SC card handle."""

    def __init__(self, handle: int, protocol: int) -> None:
        sc = _scard()
        self._sc = sc
        self._handle = handle
        self._pci = sc.SCARD_PCI_T0 if protocol == sc.SCARD_PROTOCOL_T0 else sc.SCARD_PCI_T1
        self.protocol = "T=0" if protocol == sc.SCARD_PROTOCOL_T0 else "T=1"

    def transmit(self, apdu: bytes) -> RApdu:
        hr, resp = self._sc.SCardTransmit(self._handle, self._pci, list(apdu))
        if hr != 0:
            raise _error_for(hr, "transmit")
        if len(resp) < 2:
            # No status word at all: the card left the field mid-exchange (or the reader lost it).
            raise CardRemovedError("card stopped answering during the read")
        return split_response(bytes(resp))


def _error_for(hr: int, what: str) -> CardError:
    code = _u32(hr)
    if code in _REMOVED:
        return CardRemovedError(f"card removed during {what}")
    if code in _SERVICE_GONE:
        return ReaderUnavailableError(f"reader or pcscd unavailable during {what} (0x{code:08X})")
    if code == _SHARING:
        return ReaderUnavailableError(f"the card is in use by another program on this reader ({what})")
    return ReaderUnavailableError(f"PC/SC error during {what} (0x{code:08X})")


def overall_state(service_ok: bool, readers: list[dict]) -> tuple[str, str | None]:
    """The state the PC/SC stack shows for its readers' states, and a detail when it has one of its own."""
    states = {r["state"] for r in readers}
    if not service_ok:
        return "error", None
    if not readers:
        return "absent", None
    if "card_present" in states:
        return "card_present", None
    if states & {"empty", "mute"}:  # mute: a card that does not answer; the reader takes the next one
        return "ready", None
    if "unavailable" in states:
        # Every reader pcscd lists is unusable (its driver failing, unplugged mid-scan, held by another program):
        # not ready to take a card, though pcscd itself answers. It used to show "ready".
        return "unavailable", f"no usable reader: {', '.join(r['name'] for r in readers)} unavailable"
    return "unknown", None  # listed, first state not read yet


@dataclass
class _ReaderState:
    name: str
    state: str = "unknown"  # until the first status: "empty" | "card_present" | "mute" | "unavailable"
    atr: bytes = b""
    insertion: int = 0  # counter of insertions seen on this reader
    detected_at: float = 0.0
    read_insertion: int = 0  # last insertion that a wait_for_card took
    events: int = -1  # pcsc-lite's card event counter (upper 16 bits of the event state)
    connect_retries: int = 0  # connects of the current insertion that found no card (see _serve_waiter)


@dataclass
class _Waiter:
    td: TerminalData
    done: threading.Event = field(default_factory=threading.Event)  # outcome handed over, or the wait gave up
    abandoned: str | None = None  # why the wait gave up (error code); set under ``PcscReaders._cond``, as the outcome
    result: CardRead | None = None
    error: CardError | None = None
    on_detected: OnDetected | None = None
    reading: bool = False  # a card is being read for this waiter: its timeout waits for the read (READ_GRACE_S)
    held_on: str | None = None  # a reader whose card another program held when this waiter tried to read it


class PcscReaders:
    """All PC/SC readers whose name contains ``reader_filter`` (case-insensitive), as one ``CardReader``.
    ``exclude``: leave out the readers whose name contains it (those another program reads; "" leaves out all)."""

    def __init__(
        self,
        reader_filter: str | None = None,
        *,
        poll_ms: int = 500,
        on_change: Callable[[dict], None] | None = None,
        exclude: str | None = None,
    ) -> None:
        self.reader_filter = reader_filter
        self.exclude = exclude
        self.name = f"pcsc:{reader_filter}" if reader_filter else "pcsc"
        self._poll_ms = poll_ms
        self._on_change = on_change
        self._cond = threading.Condition()
        self._readers: dict[str, _ReaderState] = {}
        self._service_ok = False
        self._detail = "starting"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._monitor_ctx: int | None = None
        self._read_ctx: int | None = None
        self._waiter: _Waiter | None = None
        self.restarts = 0  # how many times the monitor re-established its context (pcscd restarts seen)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> PcscReaders:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._monitor, name=f"{self.name}-monitor", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        ctx = self._monitor_ctx
        if ctx is not None:
            with contextlib.suppress(Exception):
                _scard().SCardCancel(ctx)
        if self._thread is not None:
            self._thread.join(5)
        self._release_read_ctx()

    def __enter__(self) -> PcscReaders:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -------------------------------------------------------------------------------------------------
    def status(self) -> dict:
        if self._thread is None:
            self.start()
        with self._cond:
            readers = [{"name": r.name, "state": r.state, "atr": r.atr.hex().upper() or None}
                       for r in self._readers.values()]  # fmt: skip
            state, detail = overall_state(self._service_ok, readers)
            return {"name": self.name, "stack": "pcsc", "state": state, "detail": detail or self._detail,
                    "readers": readers}

    def reader_names(self) -> list[str]:
        with self._cond:
            return list(self._readers)

    def wait_ready(self, timeout: float) -> bool:
        """Wait until pcscd is reachable, at least one matching reader exists and its state is known."""
        self.start()
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (
                self._service_ok and self._readers and all(r.state != "unknown" for r in self._readers.values())
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _matches(self, name: str) -> bool:
        if self.exclude is not None and self.exclude.lower() in name.lower():
            return False
        return self.reader_filter is None or self.reader_filter.lower() in name.lower()

    def _notify(self) -> None:
        self._cond.notify_all()
        if self._on_change is not None:
            try:
                self._on_change(self.status())
            except Exception:  # a listener's bug must not stop the monitor
                log.exception("reader state listener failed")

    # -- monitor thread ----------------------------------------------------------------------------------------
    def _monitor(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._monitor_session()
                backoff = 0.1
            except Exception as exc:  # never let the thread die: report, back off, retry
                # One warning per outage; the retries while pcscd stays away are only debug noise.
                log.log(logging.WARNING if self._service_ok or self._detail == "starting" else logging.DEBUG,
                        "PC/SC monitor: %s", exc)  # fmt: skip
                with self._cond:
                    self._service_ok = False
                    self._detail = str(exc)
                    for r in self._readers.values():
                        r.state = "unavailable"
                    self._notify()
            finally:
                ctx, self._monitor_ctx = self._monitor_ctx, None
                if ctx is not None:
                    with contextlib.suppress(Exception):
                        _scard().SCardReleaseContext(ctx)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, 2.0)

    def _monitor_session(self) -> None:
        sc = _scard()
        hr, ctx = sc.SCardEstablishContext(sc.SCARD_SCOPE_USER)
        if hr != 0:
            raise ReaderUnavailableError(f"pcscd not reachable (0x{_u32(hr):08X})")
        self._monitor_ctx = ctx
        if self._stop.is_set():
            return
        with self._cond:
            if not self._service_ok and self._detail != "starting":
                self.restarts += 1
            self._service_ok = True
            self._detail = "pcscd connected"
            self._notify()
        while not self._stop.is_set():
            names = self._list_readers(ctx)
            states = [(n, sc.SCARD_STATE_UNAWARE) for n in names]
            states.append((PNP_READER, sc.SCARD_STATE_UNAWARE))
            pnp_changed = False
            while not self._stop.is_set() and not pnp_changed:
                retry_soon = self._serve_waiter()
                hr, new_states = sc.SCardGetStatusChange(ctx, 50 if retry_soon else self._poll_ms, states)
                code = _u32(hr)
                if code == _TIMEOUT:
                    continue
                if code == _CANCELLED:
                    if self._stop.is_set():
                        return
                    continue  # woken up because a waiter arrived
                if hr != 0:
                    log.debug("status wait failed: 0x%08X", code)
                    raise _error_for(hr, "status wait")
                states = []
                for name, event_state, atr in new_states:
                    if name == PNP_READER:
                        if event_state & sc.SCARD_STATE_CHANGED:
                            pnp_changed = True
                    else:
                        self._update(name, event_state, bytes(atr))
                    states.append((name, event_state & ~sc.SCARD_STATE_CHANGED))

    def _list_readers(self, ctx: int) -> list[str]:
        sc = _scard()
        hr, names = sc.SCardListReaders(ctx, [])
        if _u32(hr) == 0x8010002E:  # no readers
            names = []
        elif hr != 0:
            raise _error_for(hr, "reader listing")
        names = [n for n in names if self._matches(n)]
        with self._cond:
            for gone in set(self._readers) - set(names):
                del self._readers[gone]
            for name in names:
                self._readers.setdefault(name, _ReaderState(name))
            self._detail = f"{len(names)} reader(s)"
            self._notify()
        return names

    def _update(self, name: str, event_state: int, atr: bytes) -> None:
        sc = _scard()
        now = time.monotonic()
        with self._cond:
            r = self._readers.get(name)
            if r is None:
                return
            if event_state & (sc.SCARD_STATE_UNAVAILABLE | sc.SCARD_STATE_IGNORE):
                new = "unavailable"
            elif event_state & sc.SCARD_STATE_MUTE:
                new = "mute"
            elif event_state & sc.SCARD_STATE_PRESENT:
                new = "card_present"
            else:
                new = "empty"
            # pcsc-lite counts card events in the upper 16 bits: a remove+insert between two polls still counts.
            events = event_state >> 16
            replaced = r.events >= 0 and events != r.events
            if new == "card_present" and (r.state != "card_present" or atr != r.atr or replaced):
                r.insertion += 1
                r.detected_at = now
                r.connect_retries = 0
            r.events = events
            changed = new != r.state or atr != r.atr
            r.state, r.atr = new, atr
            if changed:
                self._notify()

    # -- reading -----------------------------------------------------------------------------------------------
    def _read_context(self) -> int:
        if self._read_ctx is None:
            sc = _scard()
            hr, ctx = sc.SCardEstablishContext(sc.SCARD_SCOPE_USER)
            if hr != 0:
                raise ReaderUnavailableError(f"pcscd not reachable (0x{_u32(hr):08X})")
            self._read_ctx = ctx
        return self._read_ctx

    def _release_read_ctx(self) -> None:
        ctx, self._read_ctx = self._read_ctx, None
        if ctx is not None:
            with contextlib.suppress(Exception):
                _scard().SCardReleaseContext(ctx)

    def _serve_waiter(self) -> bool:
        """In the monitor thread: read the next unread card for the registered waiter, if both exist.

        Reading here rather than in the waiting thread saves a thread hand-off and keeps our own status wait from
        running against pcscd in parallel with the read. Returns True when a connect found no card although
        pcscd still says one is present (state lags its ~400 ms poll, or a card was swapped between two polls):
        the monitor then retries after 50 ms instead of its normal poll. A read that finds its waiter gone hands
        the insertion back (see "One presentation, one read" in the module docstring).
        """
        with self._cond:
            waiter = self._waiter
            if waiter is None or waiter.done.is_set():
                return False
            reader = next(
                (r for r in self._readers.values() if r.state == "card_present" and r.insertion > r.read_insertion),
                None,
            )
            if reader is None:
                return False
            reader.read_insertion = taken = reader.insertion
            name, detected_at, atr = reader.name, reader.detected_at, reader.atr
            waiter.reading = True
        result: CardRead | None = None
        error: CardError | None = None
        try:
            result = self.read_present(name, waiter.td, detected_at=detected_at, atr=atr, connect=True,
                                       on_connected=waiter.on_detected)
        except _GoneBeforeConnect:
            with self._cond:
                waiter.reading = False
                reader.connect_retries += 1
                if reader.connect_retries <= 20:  # ~1 s of retries, then wait for a new insertion
                    reader.read_insertion = reader.insertion - 1
                    return True
            log.debug("card on %s left before it could be read", name)
            return False
        except _HeldByAnother:
            # Connected exclusively, the read cannot interleave with another program's commands to the card; it
            # is tried again at the next poll, while the waiter still waits, and reads the card once it is free.
            with self._cond:
                waiter.reading = False
                waiter.held_on = name
                if reader.read_insertion == taken:
                    reader.read_insertion = taken - 1
            log.debug("card on %s is in use by another program; waiting for it", name)
            return False
        except CardError as exc:
            error = exc
        except Exception as exc:  # pyscard/SWIG surprises become a typed failure, never a dead monitor
            log.exception("unexpected error while reading a card")
            error = ReaderUnavailableError("unexpected reader error")
            del exc
        with self._cond:
            if waiter.abandoned is not None:
                if waiter.abandoned == "timeout" and reader.read_insertion == taken:
                    reader.read_insertion = taken - 1
                    log.debug("read on %s outlived its wait; the card is read again if it stays", name)
                return False
            waiter.result, waiter.error = result, error
            waiter.done.set()
        return False

    def _wake_monitor(self) -> None:
        ctx = self._monitor_ctx
        if ctx is not None:
            with contextlib.suppress(Exception):
                _scard().SCardCancel(ctx)

    def wait_for_card(self, td: TerminalData, *, timeout: float, cancel: threading.Event | None = None,
                      on_detected: OnDetected | None = None) -> CardRead:
        """Wait for the next card on any matching reader and read it (EMV, else UID). One waiter at a time.

        A card that was already present and not read yet (tapped just before the wait) is read; a card that was
        read before is not read again until it is removed and presented again. ``ReaderUnavailableError`` while
        pcscd or the reader stays away (module docstring).
        """
        cancel = cancel or threading.Event()
        self.start()
        waiter = _Waiter(td, on_detected=on_detected)
        with self._cond:
            if self._waiter is not None and not self._waiter.done.is_set():
                raise ReaderUnavailableError("another read is already waiting on this reader")
            self._waiter = waiter
        failure: CardError | None = None
        try:
            with contextlib.suppress(CardError):
                self._read_context()  # ready before the tap, so it is not part of the read time
            self._wake_monitor()
            now = time.monotonic()
            deadline = now + timeout
            available_at = now  # last time pcscd and a matching reader were there during this wait
            while True:
                # The timeout is for a card to come: a read already going on is let finish (cut off, the card
                # was read again from the start by the next wait, a second GPO and cryptogram on the same tap).
                limit = deadline + READ_GRACE_S if waiter.reading else deadline
                if waiter.done.wait(min(0.05, max(0.0, limit - now))):
                    break
                now = time.monotonic()
                unavailable = self._unavailable_detail()
                if unavailable is None:
                    available_at = now
                if cancel.is_set():
                    failure = ReadTimeout("card read cancelled", code="cancelled")
                elif now >= limit and waiter.held_on is not None and not waiter.reading:
                    # Said as a failed read (the payment shows it and goes on waiting), not as "no card came".
                    failure = ReaderUnavailableError(f"the card on {waiter.held_on} is in use by another program; "
                                                     "it is read once that program lets go")
                elif now >= limit:
                    failure = ReadTimeout(f"the card's read did not finish within {READ_GRACE_S:g} s after the wait"
                                          if waiter.reading else f"no card presented within {timeout:g} s")
                elif unavailable is not None and now - available_at >= UNAVAILABLE_GRACE_S:
                    failure = ReaderUnavailableError(f"PC/SC reader unavailable: {unavailable}")
                if failure is not None:
                    break
        finally:
            with self._cond:
                if not waiter.done.is_set():
                    # After a timeout a read still running hands its insertion back (_serve_waiter).
                    waiter.abandoned = failure.code if failure is not None else "error"
                    waiter.done.set()
                if self._waiter is waiter:
                    self._waiter = None
        # Not abandoned although we gave up: the read finished in that same instant and is ours to return.
        if waiter.abandoned is not None and failure is not None:
            raise failure
        if waiter.error is not None:
            raise waiter.error
        if waiter.result is None:  # done without a result: only when we gave up above, which raised already
            raise ReaderUnavailableError("card read ended without a result")
        return waiter.result

    def _unavailable_detail(self) -> str | None:
        """Why no card can be read right now (pcscd away, no matching reader), or ``None`` if one can."""
        with self._cond:
            if not self._service_ok:
                return self._detail
            if not self._readers:
                if self.exclude is not None:
                    return "no PC/SC reader besides those left to another program"
                return f"no PC/SC reader matches {self.reader_filter!r}" if self.reader_filter else "no PC/SC reader"
        return None

    def read_present(
        self, reader: str, td: TerminalData, *, detected_at: float, atr: bytes = b"", connect: bool = False,
        on_connected: OnDetected | None = None,
    ) -> CardRead:
        """Connect to the card now in ``reader`` and read it, in the calling thread. (``connect=True``: a card
        already gone at connect raises ``_GoneBeforeConnect`` for the monitor to retry or skip.) ``on_connected``
        is told the reader's name once the card answered the connect, before its read."""
        sc = _scard()
        for attempt in (1, 2):
            ctx = self._read_context()
            hr, handle, protocol = sc.SCardConnect(
                ctx, reader, sc.SCARD_SHARE_EXCLUSIVE, sc.SCARD_PROTOCOL_T0 | sc.SCARD_PROTOCOL_T1
            )
            if hr == 0:
                break
            err = _error_for(hr, "connect")
            if isinstance(err, CardRemovedError) and connect:
                raise _GoneBeforeConnect(err.message)
            if _u32(hr) == _SHARING and connect:
                raise _HeldByAnother(err.message)
            if not isinstance(err, ReaderUnavailableError):
                raise err
            # The cached context may belong to a pcscd that has restarted since: retry once with a fresh one.
            self._release_read_ctx()
            if attempt == 2:
                raise err
        try:
            notify_detected(on_connected, reader)
            transport = PcscTransport(handle, protocol)
            return self._read(transport, reader, td, detected_at, atr)
        finally:
            with contextlib.suppress(Exception):
                sc.SCardDisconnect(handle, sc.SCARD_UNPOWER_CARD)

    def _read(
        self, transport: PcscTransport, reader: str, td: TerminalData, detected_at: float, atr: bytes
    ) -> CardRead:
        if _STORAGE_CARD_RID not in atr:
            try:
                return read_card(transport, td, reader=reader, detected_at=detected_at)
            except NoApplicationError:
                pass
        resp = transport.transmit(GET_UID)
        if resp.sw != 0x9000 or not 4 <= len(resp.data) <= 10:
            raise NoApplicationError("card has no payment application and no readable UID")
        return UidCardRead(
            reader=reader,
            detected_at=detected_at,
            read_at=time.monotonic(),
            uid=resp.data.hex().upper(),
            atr=atr.hex().upper() or None,
        )


__all__ = ["CardDataError", "PcscReaders", "PcscTransport"]
