"""Card side of nfcpy's ``udp`` driver: the listening port and an ISO-DEP (ISO/IEC 14443-4) Type 4A target.

nfcpy emulates Type 3 tags only; a phone doing host card emulation, or a Type 4 NDEF tag, is an ISO-DEP target:
answer RATS with an ATS, then I-blocks (command APDUs, possibly chained), R-blocks (ACK / NAK, also the reader's
presence check) and S(DESELECT). ``serve_isodep`` runs that loop for one APDU handler, tap after tap.

A *tap* is one activation by the reader. It ends when the reader deselects the target, switches its field off
(the udp driver's ``RFOFF``), starts polling again, or stays silent for ``idle`` seconds. Only taps in which the
reader sent at least one APDU are counted: a reader that merely senses the target (and gives up, e.g. because its
wait was cancelled) has not read it.

Busy port: nfcpy's udp listener fails *silently* when another process holds the port, so the port is probed
before listening (and whenever a listen returns at once), and a busy port raises ``PortInUseError``. Once bound,
the port stays bound from tap to tap (``_listener_device``), so no poll of the reader falls between two listens.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# ATS: TL, T0 = TA+TB+TC present with FSCI 8 (256-byte frames), TA = same bit rate both ways,
# TB = FWI 8 (frame waiting time ~77 ms, so a reader notices a vanished phone after ~0.5 s of retries), TC = 0.
ATS = bytes.fromhex("0578808000")
FSD_BY_FSDI = (16, 24, 32, 40, 48, 64, 96, 128, 256)

# How long one wait for a frame may block before ``stop`` is looked at again.
_POLL_S = 0.2


def udp_sockets(port: int) -> set[str]:
    """The sockets bound to udp ``port`` (as /proc/PID/fd links name them), read from /proc/net: a probe by binding
    would race whoever is about to bind it."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def udp_port_holder(port: int) -> str | None:
    """Which process holds udp ``port`` ("pid N: command line"), from /proc; None when it cannot be told."""
    inodes = udp_sockets(port)
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
                return f"pid {proc.name}: {cmd[:200]}"
        except OSError:
            continue
    return None


class PortInUseError(OSError):
    """The udp port is held by another process (another emulator): nothing could be served on it."""

    def __init__(self, port: int) -> None:
        holder = udp_port_holder(port)
        super().__init__(errno.EADDRINUSE, f"udp port {port} is already in use "
                                           f"({holder or 'another emulator is listening'})")
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


class EndTap(Exception):
    """Raised by an APDU handler to end the tap at once and stay silent (a phone pulled away mid-read)."""


@dataclass
class TapOutcome:
    apdus: int
    ended: str  # "deselect" | "rf_off" | "idle" | "repoll" | "dropped" | "stopped"


def check_port_free(port: int) -> None:
    """Raise ``PortInUseError`` if another process holds udp ``port`` (nfcpy would only fail silently)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(("0.0.0.0", port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(port) from exc
        raise
    finally:
        probe.close()


def import_nfc() -> Any:
    """Import nfcpy, undoing its import-time ``INFO`` level on the ``nfc`` logger (see ``drivers.nfc_reader``)."""
    from drivers.nfc_reader import import_nfc as _import

    return _import()


def open_listener(port: int) -> Any:
    """A ``ContactlessFrontend`` on ``udp:127.0.0.1:port`` for the card side. Raises ``PortInUseError``."""
    nfc = import_nfc()
    check_port_free(port)
    clf = nfc.ContactlessFrontend()
    clf.device = _listener_device(nfc, port)
    return clf


_device_class: Any = None


def _listener_device(nfc: Any, port: int) -> Any:
    """nfcpy's udp device, except that the listening socket stays bound from one activation to the next.

    Stock nfcpy closes and re-binds the socket on every ``listen``; a reader's poll that arrives in between is
    lost and the reader then waits a whole poll cycle (~1 s per technology) before it sees the card again.
    """
    global _device_class
    if _device_class is None:
        import nfc.clf.udp

        class KeepBoundUdpDevice(nfc.clf.udp.Device):
            def mute(self) -> None:
                pass  # a listener has no field to switch off; keep the port and the frames queued on it

            def close(self) -> None:
                if self.socket is not None:
                    self.socket.close()
                    self.socket = None

            def _bind_socket(self, time_to_return: float) -> bool:
                if self.socket.getsockname()[1] == self.addr[1]:
                    return True
                return super()._bind_socket(time_to_return)

            # Frame-level access for emulators that answer polls themselves (Type 3): nfcpy's listen_ttf keeps
            # the poll it answered in a local variable, so a poll answered just before its timeout is forgotten
            # and the reader's next command is ignored (the reader then stalls ~1 s). Frames carry their sender.
            def bind_port(self) -> bool:
                self._create_socket()
                return bool(self._bind_socket(time.time() + 1.0))

            def recv_frame(self, timeout: float, brty: str) -> tuple[str, bytearray, tuple[str, int]]:
                return self._recv_data(timeout, brty)

            def send_frame(self, brty: str, data: bytes, addr: tuple[str, int]) -> None:
                self._send_data(brty, data, addr)

        _device_class = KeepBoundUdpDevice
    device = _device_class("127.0.0.1", port)
    device._vendor_name, device._device_name, device._chipset_name = "smartpos", "udp listener", "UDP"
    return device


def listen_once(clf: Any, target: Any, port: int, timeout: float) -> Any:
    """One ``clf.listen``; ``None`` on timeout. Distinguishes nfcpy's silent bind failure (port taken meanwhile)."""
    started = time.monotonic()
    activated = clf.listen(target, timeout)
    if activated is None and time.monotonic() - started < timeout / 2:
        # listen returned at once: either the port was taken, or a stray frame ended it. Probe to tell.
        sock = getattr(clf.device, "socket", None)
        bound = sock is not None and sock.getsockname()[1] == port
        if not bound:
            check_port_free(port)
    return activated


def tta_target(nfc: Any, uid: bytes) -> Any:
    """A Type 4A ``LocalTarget``: SEL_RES 0x20 (ISO-DEP), ATQA announcing a single or double size UID."""
    if len(uid) not in (4, 7):
        raise ValueError("a Type A UID is 4 or 7 bytes")
    target = nfc.clf.LocalTarget("106A")
    target.sens_res = bytearray.fromhex("0400" if len(uid) == 4 else "4400")
    target.sdd_res = bytearray(uid)
    target.sel_res = bytearray.fromhex("20")
    return target


class IsoDepSession:
    """Block protocol of one activation (card side). ``frame(block) -> reply | None``; ``done`` when deselected."""

    def __init__(self, process: Callable[[bytes], bytes], fsd: int) -> None:
        self.process = process
        self.max_inf = fsd - 3  # PCB + 2 CRC bytes count against the reader's frame size
        self.block_number = 1  # ISO/IEC 14443-4: the PICC's block number starts at 1
        self.last: bytes | None = None
        self.chained_cmd = bytearray()
        self.pending: list[bytes] = []
        self.apdus = 0
        self.done = False

    def frame(self, block: bytes) -> bytes | None:
        if not block:
            return None
        pcb = block[0]
        if pcb & 0xE2 == 0x02:  # I-block
            return self._i_block(pcb, block)
        if pcb & 0xE6 == 0xA2:  # R-block
            return self._r_block(pcb)
        if pcb & 0xC7 == 0xC2 and pcb & 0x30 == 0x00:  # S(DESELECT)
            self.done = True
            return bytes([pcb])
        return None  # S(WTX) answers (never requested) and garbage: stay silent, as a card does

    def _i_block(self, pcb: int, block: bytes) -> bytes:
        start = 1 + bool(pcb & 0x08) + bool(pcb & 0x04)  # skip CID and NAD if present
        self.block_number = pcb & 0x01
        if pcb & 0x10:  # the reader chains a long command: acknowledge each part
            self.chained_cmd += block[start:]
            return self._send(bytes([0xA2 | self.block_number]))
        apdu = bytes(self.chained_cmd + block[start:])
        self.chained_cmd.clear()
        self.apdus += 1
        response = self.process(apdu)
        chunks = [response[i : i + self.max_inf] for i in range(0, len(response), self.max_inf)] or [b""]
        self.pending = chunks[1:]
        return self._send(self._i_reply(chunks[0]))

    def _r_block(self, pcb: int) -> bytes | None:
        number, nak = pcb & 0x01, bool(pcb & 0x10)
        if number == self.block_number:
            return self.last  # the reader missed our last block: send it again
        if nak:
            return self._send(bytes([0xA2 | self.block_number]))  # presence check: "still here"
        if self.pending:
            self.block_number = number
            chunk = self.pending.pop(0)
            return self._send(self._i_reply(chunk))
        return None

    def _i_reply(self, chunk: bytes) -> bytes:
        more = 0x10 if self.pending else 0x00
        return bytes([0x02 | more | self.block_number]) + chunk

    def _send(self, reply: bytes) -> bytes:
        self.last = reply
        return reply


def serve_activation(
    clf: Any, activated: Any, process: Callable[[bytes], bytes], *, stop: threading.Event, idle: float
) -> TapOutcome:
    """Run one activation that started with RATS (``activated.tt4_cmd``) until the tap ends."""
    nfc = import_nfc()
    rats = bytes(activated.tt4_cmd or b"")
    if len(rats) != 2 or rats[0] != 0xE0:
        return TapOutcome(0, "repoll")
    fsd = FSD_BY_FSDI[min(rats[1] >> 4, 8)]
    session = IsoDepSession(process, fsd)
    reply: bytes | None = ATS
    last_rx = time.monotonic()
    dropped = False
    while True:
        if stop.is_set():
            return TapOutcome(session.apdus, "stopped")
        try:
            block = clf.exchange(reply, _POLL_S)
        except nfc.clf.BrokenLinkError:
            return TapOutcome(session.apdus, "dropped" if dropped else "rf_off")
        except nfc.clf.TimeoutError:
            reply = None
            if time.monotonic() - last_rx > idle:
                return TapOutcome(session.apdus, "dropped" if dropped else "idle")
            continue
        except nfc.clf.CommunicationError:
            reply = None
            continue
        if block is None:
            return TapOutcome(session.apdus, "rf_off")
        last_rx = time.monotonic()
        block = bytes(block)
        if block == b"\x26" or block == b"\x52":  # the reader polls again: this activation is over
            return TapOutcome(session.apdus, "repoll")
        if dropped:
            reply = None  # out of the field: the reader's retries go unanswered
            continue
        try:
            reply = session.frame(block)
        except EndTap:
            dropped, reply = True, None
            continue
        if session.done:
            clf.exchange(reply, 0)  # timeout 0: send the DESELECT answer without waiting for another frame
            return TapOutcome(session.apdus, "deselect")


def serve_isodep(
    handler_for_tap: Callable[[int], Callable[[bytes], bytes]],
    udp_port: int,
    *,
    uid: bytes,
    taps: int | None = None,
    stop: threading.Event | None = None,
    gap: float = 0.0,
    idle: float = 2.0,
    on_tap: Callable[[int, TapOutcome], None] | None = None,
) -> int:
    """Be an ISO-DEP Type 4A target on ``udp_port`` until ``taps`` taps were served or ``stop`` is set.

    ``handler_for_tap(n)`` gives the APDU handler for tap ``n`` (0-based), so a simulator can reset its card per
    tap or misbehave on the first taps only. Returns the number of taps served. Prints nothing.
    """
    stop = stop or threading.Event()
    nfc = import_nfc()
    clf = open_listener(udp_port)
    served = 0
    try:
        target = tta_target(nfc, uid)
        while not stop.is_set() and (taps is None or served < taps):
            activated = listen_once(clf, target, udp_port, 0.5)
            if activated is None or stop.is_set():
                continue
            outcome = serve_activation(clf, activated, handler_for_tap(served), stop=stop, idle=idle)
            log.debug("tap ended: %s after %d APDUs", outcome.ended, outcome.apdus)
            if outcome.apdus == 0:
                continue
            if on_tap is not None:
                on_tap(served, outcome)
            served += 1
            if gap > 0 and (taps is None or served < taps):
                stop.wait(gap)
    finally:
        clf.close()
    return served
