"""nfcpy reader stack: an ISO-DEP APDU transport and a ``CardReader`` over one nfcpy device.

=================  =========  ===========================================================================
what               support    how
=================  =========  ===========================================================================
ISO-DEP (4A / 4B)  yes        EMV contactless read (``drivers.emv.read_card``) over ``tag.transceive``
Type 4 NDEF        yes        when no payment application answers: NDEF via nfcpy, records via ndeflib
Type 2 / 3 NDEF    yes        ``tag.ndef`` (nfcpy), records via ndeflib
Type 1             yes        NDEF when present, else UID
no NDEF, no EMV    UID        ``UidCardRead`` with the tag's identifier
devices            all        nfcpy paths: ``usb[:vid:pid]``, ``tty:USB0:pn532``, ``udp:HOST:PORT`` (simulation)
=================  =========  ===========================================================================

One reader belongs to one stack: a reader claimed by pcscd cannot be opened here (reported as
``reader_unavailable`` with the reason), and one path is opened by at most one ``NfcpyReader`` per process.

Waiting: nfcpy's ``sense()`` blocks for a whole poll of one technology (about 1 s per technology on the ``udp``
driver when nothing answers), so the device is driven by one worker thread and ``wait_for_card`` only waits for
that worker's answer. Cancel and timeout are therefore honoured within ~20 ms; a sense in flight finishes in the
background and a card it finds for a wait that has already given up is released unread (a stale tap must never
pay for the next sale). A read that finishes after its wait timed out reached nobody, so it does not count as a
read (the card, if still there, is read afresh for the next wait); one cut off by a cancel counts (see below).

Card removal (the EMV rule; PC/SC has it through pcscd's insertion events): after a read, successful or failed,
nothing is read again until the field has been seen empty, i.e. one poll of every technology found no target.
Until then the worker keeps polling (also between waits, so a removal and a new tap while no sale is waiting are
both seen) and releases what it finds unread: a phone or card left on the reader cannot pay for the next sale,
and a failing card or a member tag left there is not re-read (no GET PROCESSING OPTIONS, no ATC spent) in a loop.
A read cut off by a cancel counts too: it was presented for a sale that was cancelled (or paid by another reader).
The UID cannot tell a new tap from a card left lying: phones present a new random UID on each activation. On the
``udp`` driver an unanswered poll takes ~1 s per technology, so an emulator must stay away longer than that (its
``gap``) for its next tap to count as a new one; with ``gap=0`` it behaves as a card left on the reader.

Unavailable device: a wait raises ``ReaderUnavailableError`` (with the status detail) once the device has been
missing or failed for ``drivers.errors.UNAVAILABLE_GRACE_S`` of that wait (a reopen after a transient failure
passes unreported).

Logging: ``import nfc`` sets the ``nfc`` logger to INFO, and nfcpy logs every frame (card data included) at DEBUG
and an expected card removal as warnings/errors. This module owns that outcome reporting (typed errors, no card
data), so on first import the ``nfc`` logger is set to CRITICAL; lower it afterwards to debug a reader.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers.cardread import CardRead, NdefRead, OnDetected, UidCardRead, notify_detected
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
from drivers.ndef import decode_records
from drivers.transport import RApdu, split_response

log = logging.getLogger(__name__)

PATH_PREFIXES = ("usb", "tty:", "com:", "udp")

# 106A first: phones and most payment cards answer it; then FeliCa (Type 3), then Type B.
DEFAULT_TECHNOLOGIES: tuple[str, ...] = ("106A", "212F", "106B")


_nfc_lock = threading.Lock()
_nfc_module: Any = None


def import_nfc() -> Any:
    """Import nfcpy (lazily: it costs ~0.2 s) and quiet its logger once; see the module docstring."""
    global _nfc_module
    with _nfc_lock:
        if _nfc_module is None:
            import nfc
            import nfc.clf
            import nfc.tag
            import nfc.tag.tt3
            import nfc.tag.tt4

            logging.getLogger("nfc").setLevel(logging.CRITICAL)
            _nfc_module = nfc
        return _nfc_module


def udp_port_problem(port: int) -> str | None:
    """Why nfcpy's udp driver cannot use ``port``, or None. It turns the address back into text with a service name
    (``getnameinfo`` without NI_NUMERICSERV, so the TCP name) and then reads that as a number: a port named in
    /etc/services (9 "discard", 8080 "http-alt", ...) cannot be opened, by a reader or an emulator."""
    import socket

    if not 0 < port < 65536:
        return None
    name = socket.getnameinfo(("127.0.0.1", port), socket.NI_NUMERICHOST)[1]
    if name.isdigit():
        return None
    return f"nfcpy's udp driver cannot use port {port}: it has a service name ({name!r} in /etc/services)"


def is_nfcpy_path(text: str) -> bool:
    """True if ``text`` names an nfcpy device (``usb...``, ``tty:...``, ``com:...``, ``udp...``)."""
    return text.startswith(PATH_PREFIXES)


class NfcpyTransport:
    """``ApduTransport`` over an activated ISO-DEP tag (``nfc.tag.tt4.Type4Tag``): one APDU per ``transceive``."""

    def __init__(self, tag: Any) -> None:
        self.tag = tag

    def transmit(self, apdu: bytes) -> RApdu:
        nfc = import_nfc()
        try:
            raw = self.tag.transceive(bytearray(apdu))
        except nfc.tag.tt4.Type4TagCommandError as exc:
            if exc.errno == nfc.tag.PROTOCOL_ERROR:
                raise CardDataError("card broke the ISO-DEP block protocol") from exc
            raise CardRemovedError("card left the field during the read") from exc
        except nfc.clf.CommunicationError as exc:  # BrokenLinkError (field off), timeouts, transmission errors
            raise CardRemovedError("card left the field during the read") from exc
        except OSError as exc:
            raise ReaderUnavailableError("nfc reader failed during the read") from exc
        if not raw:
            raise CardRemovedError("card left the field during the read")
        return split_response(bytes(raw))


@dataclass
class _Wait:
    """One ``wait_for_card`` call as the worker sees it."""

    td: TerminalData
    abandoned: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: CardRead | None = None
    error: CardError | None = None
    gave_up: str | None = None  # why the waiter gave up (error code), set with ``abandoned``
    on_detected: OnDetected | None = None
    reading: bool = False  # the tag answered its activation and is being read: the timeout waits for the read
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def finish(self, result: CardRead | None = None, error: CardError | None = None) -> bool:
        """Hand the outcome to the waiter. ``False`` if it gave up first: then the outcome reached nobody."""
        with self._lock:
            if self.abandoned.is_set():
                return False
            self.result, self.error = result, error
            self.done.set()
            return True

    def abandon(self, reason: str) -> bool:
        """Give up waiting (``reason``: the error code). ``False`` if the worker handed over an outcome first: the
        waiter must take it, or the read would be spent (the card then counts as read) without reaching anyone."""
        with self._lock:
            if self.done.is_set():
                return False
            self.gave_up = reason
            self.abandoned.set()
            return True


_CARD_LEFT = "the card read last is still on the reader; the next tap counts once it is taken away"


class NfcpyReader:
    """``CardReader`` over one nfcpy device (see the module docstring for what it reads)."""

    _claimed: set[str] = set()  # paths opened in this process: one reader, one owner
    _claim_lock = threading.Lock()

    def __init__(
        self,
        path: str,
        *,
        name: str | None = None,
        technologies: Sequence[str] = DEFAULT_TECHNOLOGIES,
        supported_aids: Sequence[str] | None = None,
        reopen_s: float = 1.0,
        poll_interval_s: float = 0.05,
        removal_poll_s: float = 0.2,
    ) -> None:
        if not isinstance(path, str) or not is_nfcpy_path(path):
            raise ValueError(f"not an nfcpy reader path: {path!r} (usb[:VID:PID], tty:PORT:DRIVER, udp:HOST:PORT)")
        parts = path.split(":")
        if parts[0] == "udp" and len(parts) == 3 and parts[2].isdigit() and udp_port_problem(int(parts[2])):
            raise ValueError(udp_port_problem(int(parts[2])))
        key = path.lower()
        with NfcpyReader._claim_lock:
            if key in NfcpyReader._claimed:
                raise ReaderUnavailableError(f"nfc reader {path} is already in use by another reader in this process")
            NfcpyReader._claimed.add(key)
        self._key = key
        self.path = path
        self.name = name or f"nfcpy:{path}"
        self.technologies = list(technologies)
        self.supported_aids = list(supported_aids) if supported_aids is not None else None
        self.reopen_s = reopen_s
        self.poll_interval_s = poll_interval_s
        self.removal_poll_s = removal_poll_s  # pause between the polls that wait for a read card to be removed
        self._waits: queue.Queue[_Wait] = queue.Queue()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._clf: Any = None
        self._next_open = 0.0
        self._state_lock = threading.Lock()
        self._state = "absent"
        self._detail = "not opened yet"
        self._device_detail = ""  # what status shows while the device is open and the field empty
        self._opened = threading.Event()
        self._removal_pending = False  # worker only: a card was read and the field has not been seen empty since

    # -- CardReader --------------------------------------------------------------------------------------------
    def wait_for_card(self, td: TerminalData, *, timeout: float, cancel: threading.Event | None = None,
                      on_detected: OnDetected | None = None) -> CardRead:
        """Wait for the next tap and read it. ``ReadTimeout`` (``timeout`` / ``cancelled``) or another
        ``CardError`` subclass; never another exception type. A card still on the reader since an earlier read is
        not read again (see "Card removal" in the module docstring)."""
        if self._closing.is_set():
            raise ReaderUnavailableError(f"nfc reader {self.path} is closed")
        self.start()
        wait = _Wait(td, on_detected=on_detected)
        self._waits.put(wait)
        now = time.monotonic()
        deadline = now + max(0.0, timeout)
        available_at = now  # last time the device was seen usable during this wait
        try:
            while not wait.done.wait(0.02):
                now = time.monotonic()
                failure: CardError | None = None
                if cancel is not None and cancel.is_set():
                    failure = ReadTimeout("card read cancelled", code="cancelled")
                elif now >= deadline and not (wait.reading and now < deadline + READ_GRACE_S):
                    # A read under way is let finish, as on PC/SC: cut off, the tap was read again from the start.
                    failure = ReadTimeout(f"the card's read did not finish within {READ_GRACE_S:g} s after the wait"
                                          if wait.reading else f"no card presented within {timeout:g} s")
                elif self._closing.is_set():
                    failure = ReaderUnavailableError(f"nfc reader {self.path} was closed")
                else:
                    with self._state_lock:
                        state, detail = self._state, self._detail
                    if state not in ("error", "absent"):
                        available_at = now
                    elif now - available_at >= UNAVAILABLE_GRACE_S:
                        failure = ReaderUnavailableError(f"nfc reader {self.path} unavailable: {detail}")
                if failure is not None and wait.abandon(failure.code):
                    raise failure
        finally:
            wait.abandon("error")
        if wait.error is not None:
            raise wait.error
        if wait.result is None:  # cannot happen: the worker always sets one of the two
            raise ReaderUnavailableError("nfc reader finished a read without a result")
        return wait.result

    def status(self) -> dict:
        self.start()
        with self._state_lock:
            return {"name": self.name, "stack": "nfcpy", "state": self._state, "detail": self._detail}

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(3.0)
        with NfcpyReader._claim_lock:
            NfcpyReader._claimed.discard(self._key)

    def __enter__(self) -> NfcpyReader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> NfcpyReader:
        """Start the worker that owns the device (opens it, retries while it is missing)."""
        if (self._thread is None or not self._thread.is_alive()) and not self._closing.is_set():
            self._thread = threading.Thread(target=self._run, name=f"{self.name}-worker", daemon=True)
            self._thread.start()
        return self

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the device has been opened at least once (``False``: still not, see ``status()``)."""
        self.start()
        return self._opened.wait(timeout)

    def _set_state(self, state: str, detail: str) -> None:
        with self._state_lock:
            if (state, detail) != (self._state, self._detail) and state == "error":
                log.warning("nfc reader %s: %s", self.path, detail)
            self._state, self._detail = state, detail

    def _run(self) -> None:
        try:
            while not self._closing.is_set():
                clf = self._ensure_open()
                removal_check = self._removal_pending and clf is not None
                try:
                    # While a removal is pending the worker polls without a wait too (module docstring).
                    wait = self._waits.get_nowait() if removal_check else self._waits.get(timeout=0.2)
                except queue.Empty:
                    wait = None
                if wait is not None and wait.abandoned.is_set():
                    continue
                try:
                    if wait is not None:
                        self._serve(wait)
                    elif removal_check:
                        self._poll(clf, None)
                        self._closing.wait(self.removal_poll_s)
                except Exception as exc:  # the worker must outlive any surprise from a driver
                    log.exception("nfc reader %s: unexpected error", self.path)
                    self._device_failed(f"unexpected reader error: {type(exc).__name__}")
                    if wait is not None and not wait.done.is_set():
                        wait.finish(error=ReaderUnavailableError("unexpected nfc reader error"))
        finally:
            self._close_device()
            with self._state_lock:
                self._state, self._detail = "absent", "closed"

    def _ensure_open(self) -> Any:
        if self._clf is not None:
            return self._clf
        if time.monotonic() < self._next_open:
            return None
        self._next_open = time.monotonic() + self.reopen_s
        nfc = import_nfc()
        clf = nfc.ContactlessFrontend()
        try:
            found = clf.open(self.path)
        except OSError as exc:
            self._set_state("error", _open_error(self.path, exc))
            return None
        except Exception as exc:  # malformed path pieces raise assorted errors inside nfcpy
            self._set_state("error", f"cannot open {self.path}: {type(exc).__name__}")
            return None
        if not found:
            self._set_state("error", f"no nfc reader found at {self.path}")
            return None
        self._clf = clf
        self._device_detail = f"{clf.device}" if clf.device is not None else self.path
        self._set_state("ready", self._device_detail)
        self._opened.set()
        return clf

    def _device_failed(self, detail: str) -> None:
        self._close_device()
        self._set_state("error", detail)

    def _close_device(self) -> None:
        clf, self._clf = self._clf, None
        if clf is not None:
            with contextlib.suppress(Exception):
                clf.close()

    # -- one wait ----------------------------------------------------------------------------------------------
    def _serve(self, wait: _Wait) -> None:
        while not (wait.abandoned.is_set() or self._closing.is_set()):
            clf = self._ensure_open()
            if clf is None:
                wait.abandoned.wait(min(self.reopen_s, 0.2))
                continue
            if self._poll(clf, wait):
                return
            wait.abandoned.wait(self.removal_poll_s if self._removal_pending else self.poll_interval_s)

    def _poll(self, clf: Any, wait: _Wait | None) -> bool:
        """Sense each technology once; ``True`` when ``wait`` got its outcome (``None``: removal check only).

        A target found while a removal is pending (or with nobody waiting) is released unread. A complete poll in
        which nothing answered is the field seen empty: the removal is no longer pending. A poll cut short (wait
        given up, device failed) proves nothing either way.
        """
        occupied = False
        for tech in list(self.technologies):
            if self._closing.is_set() or (wait is not None and wait.abandoned.is_set()):
                return False
            target, answered = self._sense(clf, tech)
            if self._clf is None:
                return False  # the device failed during sense
            if target is None:
                occupied = occupied or answered
                continue
            occupied = True
            detected_at = time.monotonic()
            if self._removal_pending or wait is None or wait.abandoned.is_set():
                self._release(clf, None)
                # Shown only while a removal is pending: only then do polls go on until the field is seen empty.
                self._show_field(occupied=self._removal_pending)
                break
            if self._read(clf, target, wait, detected_at):
                return True
        if not occupied:
            self._removal_pending = False
            self._show_field(occupied=False)
        return False

    def _sense(self, clf: Any, tech: str) -> tuple[Any, bool]:
        """``(target or None, answered)``: ``answered`` is True when something replied but no target came of it
        (a garbled answer): the field is then not empty, whatever the outcome."""
        nfc = import_nfc()
        try:
            return clf.sense(nfc.clf.RemoteTarget(tech)), False
        except nfc.clf.UnsupportedTargetError:
            log.info("nfc reader %s does not poll %s; skipping it", self.path, tech)
            self.technologies.remove(tech)
            if not self.technologies:
                self._device_failed("the reader supports none of the configured technologies")
        except nfc.clf.CommunicationError:
            return None, True
        except OSError as exc:
            self._device_failed(f"nfc reader {self.path} failed: {exc.strerror or exc}")
        return None, False

    def _read(self, clf: Any, target: Any, wait: _Wait, detected_at: float) -> bool:
        """Activate and read ``target``; ``False`` if it left during activation (not a tap, keep polling).

        An outcome handed to the waiter (a read or a failed read) makes the removal pending, and so does one whose
        wait was cancelled; one whose wait timed out does not, so the card, if still there, is read for the next.
        """
        nfc = import_nfc()
        tag = None
        self._show_field(occupied=True)
        try:
            try:
                tag = nfc.tag.activate(clf, target)
            except OSError as exc:
                raise ReaderUnavailableError("nfc reader failed during activation") from exc
            except Exception as exc:  # nfcpy indexes activation answers without checking their length
                raise CardDataError("card answered the activation with malformed data") from exc
            if tag is None:
                self._show_field(occupied=False)
                return False
            wait.reading = True
            notify_detected(wait.on_detected, self.name)
            result = self._read_tag(tag, wait.td, detected_at)
        except CardError as exc:
            log.info("nfc read on %s failed: %s", self.path, exc.code)
            self._spent(wait, wait.finish(error=exc))
            if isinstance(exc, ReaderUnavailableError):
                self._device_failed(exc.message)
            self._show_field(occupied=self._removal_pending)
            return True
        finally:
            self._release(clf, tag)
        self._spent(wait, wait.finish(result))
        self._show_field(occupied=self._removal_pending)
        return True

    def _show_field(self, *, occupied: bool) -> None:
        """Status ``card_present`` while a card is in the field (being read, or read and not yet taken away: the
        next tap counts only once it is), as the PC/SC stack reports a card left on its reader; else ``ready``."""
        with self._state_lock:
            if self._state in ("ready", "card_present"):
                self._state = "card_present" if occupied else "ready"
                self._detail = _CARD_LEFT if occupied and self._removal_pending else self._device_detail

    def _spent(self, wait: _Wait, delivered: bool) -> None:
        """After a read of the card now in the field: start waiting for its removal unless it reached nobody."""
        if delivered or wait.gave_up != "timeout":
            self._removal_pending = True

    def _read_tag(self, tag: Any, td: TerminalData, detected_at: float) -> CardRead:
        nfc = import_nfc()
        uid = bytes(tag.identifier).hex().upper()
        if isinstance(tag, nfc.tag.tt4.Type4Tag):
            try:
                return read_card(
                    NfcpyTransport(tag), td, reader=self.name, supported_aids=self.supported_aids,
                    detected_at=detected_at,
                )  # fmt: skip
            except NoApplicationError:
                pass  # not a payment card/phone: an NDEF tag, or a card known by its UID
        octets = self._ndef_octets(tag)
        if octets is not None:
            return NdefRead(
                reader=self.name, detected_at=detected_at, read_at=time.monotonic(), tag_type=str(tag.type),
                uid=uid, records=decode_records(octets),
            )  # fmt: skip
        brty = getattr(getattr(tag, "target", None), "brty", None)
        return UidCardRead(reader=self.name, detected_at=detected_at, read_at=time.monotonic(), uid=uid,
                           technology=str(brty) if brty else None)

    @staticmethod
    def _ndef_octets(tag: Any) -> bytes | None:
        """The tag's NDEF message bytes, ``None`` if it has no (readable) NDEF. A tag that vanished meanwhile
        raises ``CardRemovedError`` (nfcpy reports both cases as "no NDEF")."""
        nfc = import_nfc()
        try:
            ndef = tag.ndef
            octets = ndef.octets if ndef is not None and ndef.is_readable else None
        except (nfc.tag.TagCommandError, nfc.clf.CommunicationError):
            ndef = octets = None
        except OSError as exc:
            raise ReaderUnavailableError("nfc reader failed during the read") from exc
        if octets is not None:
            return octets
        try:
            present = tag.is_present
        except Exception:
            present = False
        if not present:
            raise CardRemovedError("tag left the field during the read")
        return None

    def _release(self, clf: Any, tag: Any) -> None:
        """End the activation: S(DESELECT) for ISO-DEP, then field off, so the card knows the tap is over."""
        nfc = import_nfc()
        if tag is not None and isinstance(tag, nfc.tag.tt4.Type4Tag):
            with contextlib.suppress(Exception):
                clf.exchange(bytearray(b"\xc2"), 0.02)
        with contextlib.suppress(Exception), clf.lock:
            if clf.device is not None:
                clf.device.mute()


def _open_error(path: str, exc: OSError) -> str:
    if exc.errno == errno.EBUSY:
        return f"{path} is busy: claimed by another process or by pcscd (one reader belongs to one stack)"
    if exc.errno == errno.EACCES:
        return f"no permission to open {path} (install the udev rule or run as a member of the reader's group)"
    if exc.errno == errno.ENODEV:
        return f"no nfc reader found at {path}"
    return f"cannot open {path}: {exc.strerror or exc}"


def open_reader(path: str, **options: Any) -> NfcpyReader:
    """An ``NfcpyReader`` for ``path`` (e.g. ``udp:127.0.0.1:54321``) with its worker started (for the CLI)."""
    return NfcpyReader(path, **options).start()
