"""Virtual contactless card for pcscd's vpcd reader (vsmartcard).

pcscd's vpcd driver is a TCP *server*; a card is a *client*: connecting = card enters the field, closing the
socket = card removed. Messages both ways are a 2-byte big-endian length + payload. One-byte payloads from the
reader are control: ``00`` power off, ``01`` power on, ``02`` reset, ``04`` get ATR (answered with the ATR);
anything longer is a command APDU, answered with the response APDU. pcscd polls presence with ``04`` about
every 400 ms.

Latency: ``TCP_NODELAY`` on the socket and ``TCP_QUICKACK`` again before *every* ``recv``; without them each APDU
waits ~40 ms for a delayed ACK.

A *tap* is one connection. It ends when the reader powers the card off after talking to it, when no APDU
came for ``linger`` seconds after the last one, or after ``hold`` seconds in the field; then the card stays out
for ``gap`` seconds (long enough for pcscd's poll to see the removal) before the next tap. ``taps=None`` keeps
tapping until stopped. ``bad_taps=K`` applies the bad-card ``mode`` to the first K taps only, so a test can
show that the next tap reads fine. ``stay=True`` is one insertion that lasts until stopped (benchmarks,
a card left on the reader).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drivers.simulators.emv_card import CardProfile, SimulatedDrop, VirtualEmvCard, load_profile

log = logging.getLogger(__name__)

DEFAULT_PORT = 35963  # the port of the system pcscd's "Virtual PCD 00 00"

_CTRL_OFF, _CTRL_ON, _CTRL_RESET, _CTRL_ATR = 0, 1, 2, 4


@dataclass
class TapResult:
    apdus: int
    ended: str  # "powered_off" | "linger" | "hold" | "dropped" | "reader_closed" | "stopped"


class _Closed(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise _Closed
        buf += chunk
    return bytes(buf)


class VpcdCard:
    """One simulated card tapping on a vpcd reader at ``host:port``."""

    WAITING_NOTE_S = 3.0

    def __init__(
        self,
        profile: CardProfile | str | Path,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        taps: int | None = None,
        mode: str | None = None,
        bad_taps: int | None = None,
        linger: float = 0.3,
        hold: float = 10.0,
        gap: float = 0.6,
        drop_after_apdus: int | None = None,
        stay: bool = False,
        apdu_delay: float = 0.0,
    ) -> None:
        self.profile = profile if isinstance(profile, CardProfile) else load_profile(profile)
        VirtualEmvCard(self.profile, mode=mode)  # validates the mode now, not on the first tap
        self.host, self.port = host, port
        self.taps, self.mode, self.bad_taps = taps, mode, bad_taps
        self.linger, self.hold, self.gap = linger, hold, gap
        self.drop_after_apdus = drop_after_apdus
        self.stay = stay  # one long insertion: stay in the field across power cycles until stopped
        self.apdu_delay = apdu_delay  # a slow card: think time before each response
        self.apdus_served = 0  # over all taps, for tests that act mid-read
        self.stop_event = threading.Event()
        self.results: list[TapResult] = []
        self.on_tap: Callable[[int, TapResult], None] | None = None
        self.on_waiting: Callable[[str], None] | None = None  # told once per tap when no reader answers for a while
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> VpcdCard:
        """Run the taps in a background thread (tests, demo). ``stop()`` ends them."""
        self._thread = threading.Thread(target=self.run, name=f"vpcd-card-{self.profile.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until all taps are done; True if they are."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def run(self) -> list[TapResult]:
        """Tap ``taps`` times (forever if None) or until ``stop_event``. Returns one result per tap."""
        n = 0
        while not self.stop_event.is_set() and (self.taps is None or n < self.taps):
            sock = self._connect()
            if sock is None:
                break
            mode = self.mode if self.bad_taps is None or n < self.bad_taps else None
            card = VirtualEmvCard(self.profile, mode=mode)
            try:
                result = self._serve(sock, card)
            finally:
                with contextlib.suppress(OSError):
                    sock.close()
            self.results.append(result)
            n += 1
            log.debug("tap %d ended: %s after %d APDUs", n, result.ended, result.apdus)
            if self.on_tap is not None:
                self.on_tap(n, result)
            if self.taps is None or n < self.taps:
                self.stop_event.wait(self.gap)
        return self.results

    def _connect(self) -> socket.socket | None:
        delay = 0.05
        since = time.monotonic()
        while not self.stop_event.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2.0)
            except OSError as exc:
                # pcscd not (yet) listening, or another card holds this reader: try again shortly.
                if self.on_waiting is not None and time.monotonic() - since >= self.WAITING_NOTE_S:
                    self.on_waiting(f"no vpcd reader answers on {self.host}:{self.port} yet ({exc.strerror or exc})")
                    since = float("inf")  # said once per tap
                self.stop_event.wait(delay)
                delay = min(delay * 2, 0.5)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        return None

    # -- one tap -----------------------------------------------------------------------------------------------
    def _serve(self, sock: socket.socket, card: VirtualEmvCard) -> TapResult:
        started = time.monotonic()
        last_apdu: float | None = None
        apdus = 0
        while True:
            if self.stop_event.is_set():
                return TapResult(apdus, "stopped")
            now = time.monotonic()
            if self.stay:
                last_apdu, started = None, now
            if last_apdu is not None and now - last_apdu >= self.linger:
                return TapResult(apdus, "linger")
            if now - started >= self.hold:
                return TapResult(apdus, "hold")
            wait = self.hold - (now - started)
            if last_apdu is not None:
                wait = min(wait, self.linger - (now - last_apdu))
            sock.settimeout(max(0.01, min(wait, 0.2)))
            try:
                header = _recv_exact(sock, 2)
            except TimeoutError:
                continue
            except (_Closed, OSError):
                return TapResult(apdus, "reader_closed")
            sock.settimeout(2.0)
            try:
                (length,) = struct.unpack(">H", header)
                payload = _recv_exact(sock, length)
            except (_Closed, OSError):
                return TapResult(apdus, "reader_closed")
            if length == 1:
                ctrl = payload[0]
                if ctrl == _CTRL_ATR:
                    self._send(sock, card.atr)
                elif ctrl in (_CTRL_ON, _CTRL_RESET):
                    card.reset()
                elif ctrl == _CTRL_OFF:
                    card.reset()
                    if apdus and not self.stay:
                        return TapResult(apdus, "powered_off")
                continue
            apdus += 1
            if self.drop_after_apdus is not None and apdus > self.drop_after_apdus:
                return TapResult(apdus, "dropped")
            try:
                response = card.process(payload)
            except SimulatedDrop:
                return TapResult(apdus, "dropped")
            if self.apdu_delay and self.stop_event.wait(self.apdu_delay):
                return TapResult(apdus, "stopped")
            try:
                self._send(sock, response)
            except OSError:
                return TapResult(apdus, "reader_closed")
            self.apdus_served += 1
            last_apdu = time.monotonic()

    @staticmethod
    def _send(sock: socket.socket, payload: bytes) -> None:
        sock.sendall(struct.pack(">H", len(payload)) + payload)
