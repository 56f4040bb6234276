"""Virtual ESC/POS printer: listens on TCP (like a network printer on port 9100) and/or a pty or serial device,
decodes what arrives, keeps every receipt as text + PNG, and answers ``DLE EOT`` status requests.

Run it with ``smartpos sim printer --tcp 127.0.0.1:9100 [--pty] [--device PATH] [--out DIR]``.

Modes (switch at run time through the control channel, a signal, or ``VirtualPrinter.set_mode``):

===========  ==============================================================================================
``ok``       prints, answers status "online, paper ok"
``near_end`` prints, paper status "near end" (0x1E)
``out``      paper out: online status has the offline bit (0x1A), paper status 0x72; print data is dropped
``offline``  cover open: online status 0x1A, paper ok; print data is dropped
``silent``   reads nothing, answers nothing (a hung printer); the sender's buffers fill up
``close``    accepts a TCP connection and closes it at once (a printer that drops connections)
===========  ==============================================================================================

Scripted faults: ``mode out after 300`` switches to ``out`` after 300 more bytes of print data (paper runs
out while printing); ``drop after 300`` closes the current connections after 300 more bytes (cable pulled).

Control channel (TCP, one command per line, one JSON answer per line): ``mode MODE [after N]``,
``drop after N``, ``status``, ``receipts``, ``receipt N`` (text of receipt N), ``reset``.
Signals: ``SIGUSR1`` paper out, ``SIGUSR2`` paper ok, ``SIGHUP`` prints a status line.

Data received while paper is out or the printer is offline is dropped (not buffered and printed later as some
real printers do), so a test sees exactly one copy of what was printed once the printer is back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.escpos_decode import (
    Cut,
    EscposDecoder,
    Event,
    Feed,
    Init,
    Qr,
    Realtime,
    StatusRequest,
    events_png,
    events_text,
)

log = logging.getLogger(__name__)

MODES = ("ok", "near_end", "out", "offline", "silent", "close")

# DLE EOT n replies (n = 1 printer, 2 offline cause, 3 error, 4 paper roll sensor).
_STATUS_REPLIES = {
    "ok": {1: 0x12, 2: 0x12, 3: 0x12, 4: 0x12},
    "near_end": {1: 0x12, 2: 0x12, 3: 0x12, 4: 0x1E},
    "out": {1: 0x1A, 2: 0x32, 3: 0x12, 4: 0x72},
    "offline": {1: 0x1A, 2: 0x16, 3: 0x12, 4: 0x12},
}


@dataclass
class ReceivedReceipt:
    index: int
    events: list[Event]
    complete: bool  # ended with a cut (False: connection ended or paper ran out mid-receipt)
    received_at: float  # time.monotonic() when its last byte arrived
    text: str = ""
    png_path: Path | None = None
    text_path: Path | None = None

    @property
    def qr_contents(self) -> list[str]:
        return [e.content for e in self.events if isinstance(e, Qr)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "complete": self.complete,
            "text": self.text,
            "qr": self.qr_contents,
            "png": str(self.png_path) if self.png_path else None,
            "received_at_monotonic": self.received_at,
        }


@dataclass
class _Session:
    decoder: EscposDecoder = field(default_factory=EscposDecoder)
    current: list[Event] = field(default_factory=list)
    close_now: bool = False


class VirtualPrinter:
    """The printer itself, independent of transport: ``handle(session, data) -> reply bytes``."""

    def __init__(self, out_dir: Path | None = None, *, columns: int = 48, width_px: int = 576,
                 png: bool = True, on_receipt: Callable[[ReceivedReceipt], None] | None = None) -> None:
        self.out_dir = Path(out_dir) if out_dir else None
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.columns = columns
        self.width_px = width_px
        self.png = png
        self.on_receipt = on_receipt
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self.mode = "ok"
        self._mode_after: tuple[str, int] | None = None
        self._drop_after: int | None = None
        self.close_after_receipt = False  # as a print server that hangs up after each job, before any status reply
        self.receipts: list[ReceivedReceipt] = []
        self.bytes_received = 0
        self.events_dropped = 0
        self.status_requests = 0
        self.connections = 0
        self._sessions: list[_Session] = []

    # -- control ----------------------------------------------------------------------------------------
    def set_mode(self, mode: str, *, after_bytes: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        with self._lock:
            if after_bytes is None:
                self.mode = mode
                self._mode_after = None
            else:
                self._mode_after = (mode, after_bytes)
            self._changed.notify_all()

    def drop_after(self, nbytes: int) -> None:
        with self._lock:
            self._drop_after = nbytes

    def reset(self) -> None:
        with self._lock:
            self.receipts.clear()
            self.bytes_received = self.events_dropped = self.status_requests = 0
            self.mode = "ok"
            self._mode_after = None
            self._drop_after = None
            self.close_after_receipt = False
            self._changed.notify_all()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "mode": self.mode,
                "receipts": len(self.receipts),
                "bytes_received": self.bytes_received,
                "events_dropped": self.events_dropped,
                "status_requests": self.status_requests,
                "connections": self.connections,
            }

    def wait_for_receipts(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.receipts) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def wait_while_silent(self, stop: threading.Event) -> None:
        with self._lock:
            while self.mode == "silent" and not stop.is_set():
                self._changed.wait(0.05)

    # -- data path --------------------------------------------------------------------------------------
    def open_session(self) -> _Session:
        with self._lock:
            self.connections += 1
            session = _Session()
            self._sessions.append(session)
            return session

    def handle(self, session: _Session, data: bytes) -> bytes:
        """Process received bytes; returns the bytes to send back (status replies)."""
        reply = bytearray()
        with self._lock:
            if self._drop_after is not None:
                if len(data) >= self._drop_after:
                    data = data[: self._drop_after]
                    self._drop_after = None
                    for s in self._sessions:
                        s.close_now = True
                else:
                    self._drop_after -= len(data)
            self.bytes_received += len(data)
            if self._mode_after is not None and len(data) > self._mode_after[1] > 0:
                # the switch happens exactly at its byte: the part before it prints, the rest sees the new mode
                cut = self._mode_after[1]
                self._feed(session, data[:cut], reply)
                self._advance_scripted(cut)
                self._feed(session, data[cut:], reply)
            else:
                self._feed(session, data, reply)
                self._advance_scripted(len(data))
        return bytes(reply)

    def _feed(self, session: _Session, data: bytes, reply: bytearray) -> None:
        for event in session.decoder.feed(data):
            if isinstance(event, StatusRequest):
                if session.close_now:
                    continue  # hanging up: nothing more is answered
                self.status_requests += 1
                answer = _STATUS_REPLIES.get(self.mode, {}).get(event.n)
                if answer is not None:
                    reply.append(answer)
                continue
            if isinstance(event, Realtime | Init):
                continue
            self._print_event(session, event)

    def _advance_scripted(self, nbytes: int) -> None:
        if self._mode_after is None:
            return
        mode, left = self._mode_after
        left -= nbytes
        if left <= 0:
            self.mode = mode
            self._mode_after = None
            self._changed.notify_all()
        else:
            self._mode_after = (mode, left)

    def _print_event(self, session: _Session, event: Event) -> None:
        if self.mode in ("out", "offline"):
            self.events_dropped += 1
            if session.current and any(not isinstance(e, Feed) for e in session.current):
                self._finish(session, complete=False)
            session.current = []
            return
        session.current.append(event)
        if isinstance(event, Cut):
            self._finish(session, complete=True)
            if self.close_after_receipt:
                session.close_now = True

    def end_session(self, session: _Session) -> None:
        with self._lock:
            for event in session.decoder.flush():
                if not isinstance(event, StatusRequest | Realtime | Init):
                    self._print_event(session, event)
            if any(not isinstance(e, Feed) for e in session.current):
                self._finish(session, complete=False)
            with contextlib.suppress(ValueError):
                self._sessions.remove(session)

    def _finish(self, session: _Session, *, complete: bool) -> None:
        events, session.current = session.current, []
        receipt = ReceivedReceipt(len(self.receipts) + 1, events, complete, time.monotonic())
        receipt.text = events_text(events, self.columns)
        self.receipts.append(receipt)
        if self.out_dir:
            receipt.text_path = self.out_dir / f"receipt-{receipt.index:04d}.txt"
            receipt.text_path.write_text(receipt.text, encoding="utf-8")
            if self.png:
                receipt.png_path = self.out_dir / f"receipt-{receipt.index:04d}.png"
                try:
                    events_png(events, str(receipt.png_path), self.width_px)
                except Exception:  # a preview failure must not stop the printer
                    log.exception("could not draw receipt %d", receipt.index)
                    receipt.png_path = None
        self._changed.notify_all()
        if self.on_receipt:
            self.on_receipt(receipt)


class _Transport:
    def __init__(self, printer: VirtualPrinter) -> None:
        self.printer = printer
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(2)


class TcpPrinterServer(_Transport):
    """The virtual printer on a TCP port (port 0 picks a free one; see ``.address``)."""

    def __init__(self, printer: VirtualPrinter, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(printer)
        self.sock = socket.create_server((host, port), reuse_port=False)
        self.sock.settimeout(0.1)
        self.address = self.sock.getsockname()[:2]
        self._conns: list[socket.socket] = []

    @property
    def uri(self) -> str:
        return f"tcp://{self.address[0]}:{self.address[1]}"

    def start(self) -> TcpPrinterServer:
        self._spawn(self._accept_loop)
        return self

    def _accept_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.printer.mode == "close":
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.append(conn)
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        session = self.printer.open_session()
        try:
            while not self.stop_event.is_set():
                if self.printer.mode == "silent":
                    self.printer.wait_while_silent(self.stop_event)
                    continue
                if self.printer.mode == "close" or session.close_now:
                    break
                ready, _w, _x = select.select([conn], [], [], 0.05)
                if not ready:
                    continue
                try:
                    data = conn.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                reply = self.printer.handle(session, data)
                if reply:
                    with contextlib.suppress(OSError):
                        conn.sendall(reply)
                if session.close_now:
                    break
        finally:
            self.printer.end_session(session)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            with contextlib.suppress(ValueError):
                self._conns.remove(conn)

    def stop(self) -> None:
        self.stop_event.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        super().stop()


class SerialPrinterPort(_Transport):
    """The virtual printer on a tty: its own pty (``SerialPrinterPort.pty()``; clients open ``.path``) or an
    existing device such as one end of ``socat -d -d pty,raw,echo=0 pty,raw,echo=0``."""

    def __init__(self, printer: VirtualPrinter, fd: int, path: str, *, owns_peer: int | None = None) -> None:
        super().__init__(printer)
        self.fd = fd
        self.path = path
        self._peer = owns_peer

    @classmethod
    def pty(cls, printer: VirtualPrinter) -> SerialPrinterPort:
        master, slave = os.openpty()
        tty.setraw(slave)
        path = os.ttyname(slave)
        # keep the slave open so the master never sees a hang-up between client connections
        return cls(printer, master, path, owns_peer=slave)

    @classmethod
    def device(cls, printer: VirtualPrinter, path: str) -> SerialPrinterPort:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        with contextlib.suppress(OSError):
            tty.setraw(fd)
        return cls(printer, fd, path)

    def start(self) -> SerialPrinterPort:
        self._spawn(self._serve)
        return self

    def _serve(self) -> None:
        session = self.printer.open_session()
        while not self.stop_event.is_set():
            if self.printer.mode == "silent":
                self.printer.wait_while_silent(self.stop_event)
                continue
            ready, _w, _x = select.select([self.fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                time.sleep(0.05)  # EIO: no client has the other end open right now
                continue
            if not data:
                time.sleep(0.05)
                continue
            reply = self.printer.handle(session, data)
            if reply:
                with contextlib.suppress(OSError):
                    os.write(self.fd, reply)
        self.printer.end_session(session)

    def stop(self) -> None:
        super().stop()
        for fd in (self.fd, self._peer):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


class ControlServer(_Transport):
    """Line commands to switch the printer's mode at run time (see the module docstring)."""

    def __init__(self, printer: VirtualPrinter, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(printer)
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.1)
        self.address = self.sock.getsockname()[:2]

    def start(self) -> ControlServer:
        self._spawn(self._accept_loop)
        return self

    def _accept_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            for raw in stream:
                answer = self.command(raw.decode("utf-8", errors="replace"))
                stream.write(json.dumps(answer).encode() + b"\n")
                stream.flush()

    def command(self, line: str) -> dict[str, Any]:
        words = line.split()
        try:
            if not words:
                raise ValueError("empty command")
            verb = words[0].lower()
            if verb == "mode" and len(words) in (2, 4):
                after = int(words[3]) if len(words) == 4 and words[2] == "after" else None
                if len(words) == 4 and after is None:
                    raise ValueError("usage: mode MODE [after N]")
                self.printer.set_mode(words[1], after_bytes=after)
            elif verb == "drop" and len(words) == 3 and words[1] == "after":
                self.printer.drop_after(int(words[2]))
            elif verb == "reset":
                self.printer.reset()
            elif verb == "receipts":
                with self.printer._lock:
                    return {"ok": True, "receipts": [r.to_dict() for r in self.printer.receipts]}
            elif verb == "receipt" and len(words) == 2:
                with self.printer._lock:
                    receipt = self.printer.receipts[int(words[1]) - 1]
                    return {"ok": True, "receipt": receipt.to_dict()}
            elif verb != "status":
                raise ValueError(f"unknown command {line.strip()!r}")
            return {"ok": True, **self.printer.snapshot()}
        except (ValueError, IndexError) as exc:
            return {"ok": False, "error": str(exc)}

    def stop(self) -> None:
        self.stop_event.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        super().stop()


def control(address: tuple[str, int], command: str, timeout: float = 2.0) -> dict[str, Any]:
    """Send one control command to a running virtual printer and return its JSON answer."""
    with socket.create_connection(address, timeout=timeout) as sock, sock.makefile("rwb") as stream:
        stream.write(command.encode() + b"\n")
        stream.flush()
        return json.loads(stream.readline())
