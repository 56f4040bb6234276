"""ESC/POS printers through python-escpos: one URI per connection, a profile, status with short timeouts.

==============================  =================================  ==========================================
URI                             python-escpos class                status (DLE EOT 1 / DLE EOT 4)
==============================  =================================  ==========================================
``tcp://HOST[:PORT]``           plain socket (port 9100 default)   yes, 1-byte reply read with a short timeout
``usb://VID:PID``               ``Usb`` (needs pyusb + access)     yes, through the IN endpoint
``serial:/dev/ttyS0?baudrate=`` ``Serial`` subclass opening        yes, reads 1 byte (not the 16 python-escpos
``serial:socket://HOST:PORT``   ``serial.serial_for_url`` (any     waits for the whole timeout)
``serial:loop://``              pyserial URL)
``file:/dev/usb/lp0``           ``File`` (append, non-blocking)    no: always "unknown"
==============================  =================================  ==========================================

Options in the query string: ``status=0`` (never query status: for one-way links), serial ``baudrate``,
``bytesize``, ``parity``, ``stopbits``, ``xonxoff``, ``rtscts``, ``dsrdtr``; usb ``in_ep``, ``out_ep``.
Other query options of a pyserial URL are passed on to pyserial.

A status query that gets no reply is *unknown*, never "paper ok" (python-escpos's ``paper_status()`` says ok
on an empty reply). Every operation has a deadline, so a silent printer costs at most that long, and only to
the thread that talks to it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import select
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from protocol.errors import ValidationError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 3.0
DEFAULT_STATUS_TIMEOUT_S = 0.5
DEFAULT_PROFILE = "TM-T20II"

# DLE EOT n reply bytes: bits 1 and 4 are always 1, bits 0 and 7 always 0.
_FIXED_MASK, _FIXED_BITS = 0x93, 0x12
_OFFLINE_BIT = 0x08
_NEAR_END_BITS = 0x0C
_PAPER_OUT_BITS = 0x60

_SERIAL_OPTIONS = {"baudrate", "bytesize", "parity", "stopbits", "xonxoff", "rtscts", "dsrdtr"}
_USB_OPTIONS = {"in_ep", "out_ep"}


# -- errors ----------------------------------------------------------------------------------------------
class PrinterError(Exception):
    """A printer operation failed. ``code`` is machine readable; ``retryable`` says whether trying again
    after the printer recovers makes sense."""

    code = "printer_error"
    retryable = True

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code


class PrinterUriError(ValidationError):
    def __init__(self, message: str) -> None:
        super().__init__("invalid_printer_uri", message)


class PrinterUnavailable(PrinterError):
    """Could not open the connection (refused, no device, no permission)."""

    code = "unavailable"


class PrinterDisconnected(PrinterError):
    """The printer closed the connection or the cable went away mid-operation."""

    code = "disconnected"


class PrinterTimeout(PrinterError):
    """The printer stopped accepting data before the deadline."""

    code = "timeout"


class PrinterNotReady(PrinterError):
    """Status says the printer cannot print now (offline, paper out) or it does not answer."""

    code = "not_ready"


# -- python-escpos import ---------------------------------------------------------------------------------
_escpos_imported = False


def _quiet_import(*modules: str) -> None:
    """Import python-escpos modules without their side effects: ``escpos.capabilities`` calls
    ``logging.basicConfig()`` (which would add a stderr handler to the root logger) and creates a new temp dir
    for its capabilities pickle on every import."""
    import importlib

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "smartpos-escpos"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("ESCPOS_CAPABILITIES_PICKLE_DIR", str(cache))
    except OSError:
        pass
    root = logging.getLogger()
    guard = None
    if not root.handlers:
        guard = logging.NullHandler()
        root.addHandler(guard)
    try:
        for module in modules:
            importlib.import_module(module)
    finally:
        if guard is not None:
            root.removeHandler(guard)


def import_escpos() -> None:
    """Import python-escpos (with Pillow, qrcode and python-barcode behind it) without its side effects.

    Only rendering and the serial/USB/file connections need all of it; profiles need just
    ``escpos.capabilities`` and TCP connections none of it, so an idle daemon does not carry the image stack
    until it prints."""
    global _escpos_imported
    if _escpos_imported:
        return
    _quiet_import("escpos.capabilities", "escpos.escpos")
    _escpos_imported = True


# -- URIs -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrinterUri:
    scheme: str  # "tcp" | "usb" | "serial" | "file"
    target: str  # host:port, vid:pid, pyserial URL or device path, file path
    options: dict[str, str] = field(default_factory=dict)
    host: str = ""
    port: int = 0
    vendor_id: int = 0
    product_id: int = 0

    @property
    def status_enabled(self) -> bool:
        default = self.scheme != "file"
        value = self.options.get("status")
        return default if value is None else value.lower() not in ("0", "false", "no", "off")

    def __str__(self) -> str:
        query = f"?{urlencode(self.options)}" if self.options else ""
        if self.scheme == "tcp":
            return f"tcp://{self.target}{query}"
        if self.scheme == "usb":
            return f"usb://{self.target}{query}"
        return f"{self.scheme}:{self.target}{query}"


def _split_query(rest: str) -> tuple[str, dict[str, str]]:
    if "?" not in rest:
        return rest, {}
    base, query = rest.split("?", 1)
    return base, dict(parse_qsl(query, keep_blank_values=True))


# Serial line settings a URI may give, and what pyserial takes for them.
_SERIAL_NUMBERS: dict[str, tuple[float, ...] | range] = {
    "baudrate": range(50, 4_000_001), "bytesize": (5, 6, 7, 8), "stopbits": (1, 1.5, 2),
}


def parse_uri(uri: str) -> PrinterUri:
    """Parse a printer URI (see the module table); raises ``PrinterUriError`` with what is wrong."""
    if not isinstance(uri, str) or not uri.strip():
        raise PrinterUriError("printer URI is empty; use tcp://HOST:PORT, usb://VID:PID, serial:DEVICE or file:PATH")
    uri = uri.strip()
    if uri.startswith("tcp://"):
        base, opts = _split_query(uri[len("tcp://") :])
        base = base.rstrip("/")
        if base.startswith("["):
            host, _, rest = base[1:].partition("]")
            port_s = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_s = base.partition(":")
        if not host:
            raise PrinterUriError(f"printer URI {uri!r} has no host")
        try:
            port = int(port_s) if port_s else 9100
        except ValueError:
            raise PrinterUriError(f"printer URI {uri!r}: port must be a number") from None
        if not 0 < port < 65536:
            raise PrinterUriError(f"printer URI {uri!r}: port out of range")
        target = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        return PrinterUri("tcp", target, opts, host=host, port=port)
    if uri.startswith("usb://"):
        base, opts = _split_query(uri[len("usb://") :])
        vid_s, sep, pid_s = base.rstrip("/").partition(":")
        try:
            vid, pid = int(vid_s, 16), int(pid_s, 16)
        except ValueError:
            vid = pid = -1
        if not sep or not 0 <= vid <= 0xFFFF or not 0 <= pid <= 0xFFFF:
            raise PrinterUriError(f"printer URI {uri!r}: expected usb://VID:PID in hex, e.g. usb://04b8:0e15")
        unknown = set(opts) - _USB_OPTIONS - {"status"}
        if unknown:
            raise PrinterUriError(f"printer URI {uri!r}: unknown option(s) {', '.join(sorted(unknown))}")
        for key in _USB_OPTIONS & set(opts):
            try:
                endpoint = int(opts[key], 0)
            except ValueError:
                endpoint = -1
            if not 0 <= endpoint <= 0xFF:
                raise PrinterUriError(f"printer URI {uri!r}: {key} must be an endpoint number, e.g. 0x82")
        return PrinterUri("usb", f"{vid:04x}:{pid:04x}", opts, vendor_id=vid, product_id=pid)
    if uri.startswith("serial:"):
        rest = uri[len("serial:") :]
        if rest.startswith("//") and not rest.startswith("///"):
            rest = rest[2:]
        elif rest.startswith("///"):
            rest = rest[2:]
        base, opts = _split_query(rest)
        ours = {k: v for k, v in opts.items() if k in _SERIAL_OPTIONS or k == "status"}
        theirs = {k: v for k, v in opts.items() if k not in ours}
        if not base:
            raise PrinterUriError(f"printer URI {uri!r} has no device or pyserial URL")
        if "://" not in base and not base.startswith("/"):
            raise PrinterUriError(f"printer URI {uri!r}: expected a device path or a pyserial URL such as socket://")
        scheme, _, address = base.partition("://")
        if scheme in ("socket", "rfc2217"):
            host, _, port_s = address.rstrip("/").rpartition(":")
            if not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
                raise PrinterUriError(f"printer URI {uri!r}: expected serial:{scheme}://HOST:PORT")
        for key, allowed in _SERIAL_NUMBERS.items():
            if key in ours:
                try:
                    value = float(ours[key])
                except ValueError:
                    raise PrinterUriError(f"printer URI {uri!r}: {key} must be a number") from None
                if not (value in allowed if isinstance(allowed, tuple) else
                        value.is_integer() and allowed.start <= value < allowed.stop):  # nan, inf, 1e400 fail too
                    shown = "/".join(f"{v:g}" for v in allowed) if isinstance(allowed, tuple) else \
                        f"a whole number from {allowed.start} to {allowed.stop - 1}"
                    raise PrinterUriError(f"printer URI {uri!r}: {key} must be {shown}")
        target = base + (f"?{urlencode(theirs)}" if theirs else "")
        return PrinterUri("serial", target, ours)
    if uri.startswith("file:"):
        rest = uri[len("file:") :]
        if rest.startswith("//"):
            rest = rest[2:]
        base, opts = _split_query(rest)
        if not base.startswith("/"):
            raise PrinterUriError(f"printer URI {uri!r}: file: needs an absolute path, e.g. file:/dev/usb/lp0")
        return PrinterUri("file", base, opts)
    raise PrinterUriError(
        f"unsupported printer URI {uri!r}; use tcp://HOST:PORT, usb://VID:PID, serial:/dev/ttyS0?baudrate=19200, "
        "serial:socket://HOST:PORT or file:/dev/usb/lp0"
    )


# -- profiles ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrinterProfile:
    """What the layout needs to know about a printer, from python-escpos's printer database plus overrides."""

    name: str
    columns: int
    width_px: int
    native_qr: bool
    codepages: dict[int, str]  # ESC t slot -> codepage name, as the printer numbers them
    model: str = ""

    def escpos_profile(self) -> str:
        """The python-escpos profile name (what its printer classes take)."""
        return self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_profile(
    name: str | None = None,
    *,
    columns: int | None = None,
    width_px: int | None = None,
    native_qr: bool | None = None,
    codepages: list[str] | None = None,
) -> PrinterProfile:
    """A python-escpos profile by name (``TM-T20II``, ``TM-T88V``, ``default``...) with optional overrides.

    ``codepages`` limits the codepages used for text to those names (in that order of preference)."""
    _quiet_import("escpos.capabilities")
    from escpos.capabilities import CAPABILITIES

    name = name or DEFAULT_PROFILE
    profiles = CAPABILITIES["profiles"]
    if name not in profiles:
        raise ValidationError(
            "invalid_printer_profile", f"unknown printer profile {name!r}; known: {', '.join(sorted(profiles))}"
        )
    data = profiles[name]
    fonts = data.get("fonts") or {}
    cols = columns or int((fonts.get("0") or {}).get("columns") or 42)
    pixels = (data.get("media") or {}).get("width", {}).get("pixels")
    px = width_px or (int(pixels) if isinstance(pixels, int | str) and str(pixels).isdigit() else cols * 12)
    qr = bool((data.get("features") or {}).get("qrCode")) if native_qr is None else native_qr
    pages = {int(slot): cp for slot, cp in (data.get("codePages") or {}).items() if cp and cp != "Unknown"}
    if codepages is not None:
        wanted = [c.upper() for c in codepages]
        missing = [c for c in wanted if c not in pages.values()]
        if missing:
            raise ValidationError(
                "invalid_printer_profile", f"profile {name!r} has no codepage(s) {', '.join(missing)}"
            )
        order = {c: i for i, c in enumerate(wanted)}
        pages = dict(sorted(((s, c) for s, c in pages.items() if c in order), key=lambda sc: order[sc[1]]))
    if cols < 16 or px < 128:
        raise ValidationError("invalid_printer_profile", "printer profile must have >= 16 columns and >= 128 px")
    return PrinterProfile(name, cols, px, qr, pages, str(data.get("name") or name))


# -- status -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrinterStatus:
    online: bool | None  # None: unknown
    paper: str  # "ok" | "near_end" | "out" | "unknown"
    detail: str = ""

    @property
    def summary(self) -> str:
        """One word for status displays: ok | paper_low | paper_out | offline | unknown."""
        if self.paper == "out":
            return "paper_out"
        if self.online is False:
            return "offline"
        if self.online is None or self.paper == "unknown":
            return "unknown"
        return "paper_low" if self.paper == "near_end" else "ok"

    @property
    def ready(self) -> bool:
        return self.online is True and self.paper in ("ok", "near_end")

    def to_dict(self) -> dict[str, Any]:
        return {"online": self.online, "paper": self.paper, "summary": self.summary, "detail": self.detail}


UNKNOWN_STATUS = PrinterStatus(None, "unknown", "status not queried")


def _reply_valid(byte: int) -> bool:
    return byte & _FIXED_MASK == _FIXED_BITS


def parse_online(byte: int | None) -> bool | None:
    if byte is None or not _reply_valid(byte):
        return None
    return not byte & _OFFLINE_BIT


def parse_paper(byte: int | None) -> str:
    if byte is None or not _reply_valid(byte):
        return "unknown"
    if byte & _PAPER_OUT_BITS == _PAPER_OUT_BITS:
        return "out"
    if byte & _NEAR_END_BITS == _NEAR_END_BITS:
        return "near_end"
    return "ok"


# -- connections ------------------------------------------------------------------------------------------
def _deadline_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise PrinterTimeout("printer did not accept the data before the deadline")
    return left


class _TcpLink:
    """A raw TCP connection to a network printer (``tcp://``). The receipt's bytes are rendered elsewhere, so
    sending them and the 1-byte status replies need only a socket: without python-escpos's Network class, the
    spooler's idle status probe does not import python-escpos and the image stack behind it."""

    def __init__(self, host: str, port: int, *, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.device: socket.socket | None = None

    def open(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            self.device = None
            raise PrinterUnavailable(f"cannot connect to printer at {self.host}:{self.port}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.device = sock

    def _sock(self) -> socket.socket:
        if self.device is None:
            raise PrinterDisconnected("printer connection is closed")
        return self.device

    def write_until(self, data: bytes, deadline: float) -> None:
        sock = self._sock()
        view = memoryview(data)
        while view:
            sock.settimeout(_deadline_left(deadline))
            try:
                sent = sock.send(view)
            except TimeoutError:
                raise PrinterTimeout("printer stopped accepting data (timeout)") from None
            except OSError as exc:
                raise PrinterDisconnected(f"printer connection lost while sending: {exc}") from None
            view = view[sent:]

    def read_byte(self, timeout: float) -> int | None:
        sock = self._sock()
        sock.settimeout(timeout)
        try:
            data = sock.recv(1)
        except TimeoutError:
            return None
        except OSError as exc:
            raise PrinterDisconnected(f"printer connection lost: {exc}") from None
        if not data:
            raise PrinterDisconnected("printer closed the connection")
        return data[0]

    def drain(self) -> None:
        sock = self._sock()
        sock.setblocking(False)
        try:
            while True:
                data = sock.recv(64)
                if not data:
                    raise PrinterDisconnected("printer closed the connection")
        except BlockingIOError:
            pass
        except OSError as exc:
            raise PrinterDisconnected(f"printer connection lost: {exc}") from None
        finally:
            sock.setblocking(True)

    def close(self) -> None:
        sock, self.device = self.device, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@functools.cache
def _serial_class() -> type:
    import_escpos()
    import serial
    from escpos.printer import Serial

    class _SerialUrl(Serial):  # type: ignore[misc,valid-type]
        """python-escpos's Serial opens only device paths; this opens any pyserial URL (socket://, loop://,
        rfc2217://) through ``serial_for_url`` and reads status replies one byte at a time."""

        rtscts = False

        def open(self, raise_not_found: bool = True) -> None:
            try:
                self.device = serial.serial_for_url(
                    self.devfile,
                    baudrate=self.baudrate,
                    bytesize=self.bytesize,
                    parity=self.parity,
                    stopbits=self.stopbits,
                    timeout=self.timeout,
                    write_timeout=self.timeout,
                    xonxoff=self.xonxoff,
                    rtscts=self.rtscts,
                    dsrdtr=self.dsrdtr,
                )
            except (ValueError, OSError, serial.SerialException) as exc:
                self.device = None
                raise PrinterUnavailable(f"cannot open serial printer {self.devfile}: {exc}") from None

        def _read(self) -> bytes:
            return self.device.read(1)

        def write_until(self, data: bytes, deadline: float) -> None:
            dev = self.device
            view = memoryview(data)
            while view:
                dev.write_timeout = _deadline_left(deadline)
                try:
                    sent = dev.write(view[:4096])
                except serial.SerialTimeoutException:
                    raise PrinterTimeout("printer stopped accepting data (timeout)") from None
                except (OSError, serial.SerialException) as exc:
                    raise PrinterDisconnected(f"serial printer lost while sending: {exc}") from None
                view = view[sent or 0 :]

        def read_byte(self, timeout: float) -> int | None:
            dev = self.device
            dev.timeout = timeout
            try:
                data = dev.read(1)
            except (OSError, serial.SerialException) as exc:
                raise PrinterDisconnected(f"serial printer lost: {exc}") from None
            return data[0] if data else None

        def close(self) -> None:
            # no flush(): tcdrain() blocks forever on a port nobody reads
            if self._device:
                with contextlib.suppress(Exception):
                    self._device.close()
            self._device = False

        def drain(self) -> None:
            try:
                self.device.reset_input_buffer()
            except (OSError, serial.SerialException) as exc:
                raise PrinterDisconnected(f"serial printer lost: {exc}") from None

    return _SerialUrl


@functools.cache
def _usb_class() -> type:
    import_escpos()
    from escpos.printer import Usb

    class _Usb(Usb):  # type: ignore[misc,valid-type]
        def open(self, raise_not_found: bool = True) -> None:
            try:
                super().open(raise_not_found=True)
            except Exception as exc:  # pyusb raises several types (NoBackendError, USBError, DeviceNotFound)
                self.device = None
                ids = "{idVendor:04x}:{idProduct:04x}".format(**self.usb_args)
                raise PrinterUnavailable(f"cannot open USB printer {ids}: {exc}") from None

        def write_until(self, data: bytes, deadline: float) -> None:
            import usb.core

            for offset in range(0, len(data), 4096):
                left = _deadline_left(deadline)
                try:
                    self.device.write(self.out_ep, data[offset : offset + 4096], int(left * 1000) or 1)
                except usb.core.USBTimeoutError:
                    raise PrinterTimeout("USB printer stopped accepting data (timeout)") from None
                except usb.core.USBError as exc:
                    raise PrinterDisconnected(f"USB printer lost while sending: {exc}") from None

        def read_byte(self, timeout: float) -> int | None:
            import usb.core

            try:
                data = self.device.read(self.in_ep, 16, int(timeout * 1000) or 1)
            except usb.core.USBTimeoutError:
                return None
            except usb.core.USBError as exc:
                raise PrinterDisconnected(f"USB printer lost: {exc}") from None
            return data[-1] if len(data) else None

        def drain(self) -> None:
            with contextlib.suppress(Exception):
                self.read_byte(0.001)

    return _Usb


@functools.cache
def _file_class() -> type:
    import_escpos()
    from escpos.printer import File

    class _File(File):  # type: ignore[misc,valid-type]
        """Appends to the device node or file without blocking forever on a printer that stopped reading."""

        def open(self, raise_not_found: bool = True) -> None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK
            path = Path(self.devfile)
            if not path.exists() and not str(path).startswith("/dev/") and path.parent.is_dir():
                flags |= os.O_CREAT
            try:
                self.device = os.open(self.devfile, flags, 0o644)
            except OSError as exc:
                self.device = None
                raise PrinterUnavailable(f"cannot open printer device {self.devfile}: {exc.strerror}") from None

        def _raw(self, msg: bytes) -> None:
            self.write_until(msg, time.monotonic() + DEFAULT_TIMEOUT_S)

        def write_until(self, data: bytes, deadline: float) -> None:
            fd = self.device
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    _r, writable, _x = select.select([], [fd], [], _deadline_left(deadline))
                    if not writable:
                        raise PrinterTimeout("printer device stopped accepting data (timeout)") from None
                except OSError as exc:
                    code = "disconnected" if exc.errno in (errno.ENODEV, errno.EIO, errno.ENXIO) else None
                    raise PrinterDisconnected(f"printer device write failed: {exc.strerror}", code=code) from None

        def close(self) -> None:
            if self._device not in (False, None):
                with contextlib.suppress(OSError):
                    os.close(self._device)
            self._device = False

    return _File


class PrinterConnection:
    """One open connection: ``write(bytes)`` with a deadline and ``status()`` (the two narrow printer methods).

    ``link`` talks to the device: python-escpos's printer class for serial, USB and file printers, a plain
    socket for TCP ones."""

    def __init__(self, uri: PrinterUri, link: Any, profile: PrinterProfile, *, timeout: float,
                 status_timeout: float) -> None:
        self.uri = uri
        self.link = link
        self.profile = profile
        self.timeout = timeout
        self.status_timeout = status_timeout

    @property
    def supports_status(self) -> bool:
        return self.uri.status_enabled and hasattr(self.link, "read_byte")

    def write(self, data: bytes, *, timeout: float | None = None) -> None:
        """Send ``data``; raises ``PrinterTimeout`` if the printer stops reading before the deadline and
        ``PrinterDisconnected`` if the link goes away."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self.link.write_until(bytes(data), deadline)

    def _ask(self, n: int, timeout: float) -> int | None:
        from escpos.constants import RT_STATUS

        self.link.write_until(RT_STATUS + bytes([n]), time.monotonic() + timeout)
        return self.link.read_byte(timeout)

    def status(self, *, timeout: float | None = None) -> PrinterStatus:
        """DLE EOT 1 (online) then DLE EOT 4 (paper roll). No reply -> unknown. Raises ``PrinterDisconnected``
        if the printer closed the connection."""
        if not self.supports_status:
            return PrinterStatus(None, "unknown", "this connection does not report status")
        t = self.status_timeout if timeout is None else timeout
        self.link.drain()  # a late reply to an earlier query must not answer this one
        try:
            first = self._ask(1, t)
        except PrinterTimeout:
            return PrinterStatus(None, "unknown", "printer is not reading (status request not accepted)")
        if first is None:
            return PrinterStatus(None, "unknown", f"no reply to status request within {t:g}s")
        online = parse_online(first)
        if online is None:
            return PrinterStatus(None, "unknown", f"unexpected status reply 0x{first:02x}")
        try:
            paper_byte = self._ask(4, t)
        except PrinterTimeout:
            paper_byte = None
        paper = parse_paper(paper_byte)
        detail = "" if paper != "unknown" else "no valid reply to paper status request"
        return PrinterStatus(online, paper, detail)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.link.close()

    def __enter__(self) -> PrinterConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _truthy(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


def open_printer(
    uri: str | PrinterUri,
    *,
    profile: PrinterProfile | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    status_timeout: float = DEFAULT_STATUS_TIMEOUT_S,
) -> PrinterConnection:
    """Open a printer connection; raises ``PrinterUriError`` for a bad URI, ``PrinterUnavailable`` if it cannot
    be opened within ``timeout``."""
    parsed = uri if isinstance(uri, PrinterUri) else parse_uri(uri)
    profile = profile or load_profile()
    escpos_profile = profile.escpos_profile()
    opts = parsed.options
    if parsed.scheme == "tcp":
        printer = _TcpLink(parsed.host, parsed.port, timeout=timeout)
    elif parsed.scheme == "serial":
        import serial

        printer = _serial_class()(
            devfile=parsed.target,
            baudrate=int(float(opts.get("baudrate", 9600))),
            bytesize=int(float(opts.get("bytesize", 8))),
            timeout=timeout,
            parity=opts.get("parity", serial.PARITY_NONE).upper()[:1] or serial.PARITY_NONE,
            stopbits=float(opts["stopbits"]) if "stopbits" in opts else serial.STOPBITS_ONE,
            xonxoff=_truthy(opts.get("xonxoff", "0")),
            dsrdtr=_truthy(opts.get("dsrdtr", "0")),
            profile=escpos_profile,
        )
        printer.rtscts = _truthy(opts.get("rtscts", "0"))
    elif parsed.scheme == "usb":
        try:
            import usb.core  # noqa: F401
        except ImportError:
            raise PrinterUnavailable("USB printers need the pyusb package (pip install pyusb)") from None
        kwargs: dict[str, Any] = {"timeout": int(timeout * 1000), "usb_args": {}}
        for key in _USB_OPTIONS:
            if key in opts:
                kwargs[key] = int(opts[key], 0)
        printer = _usb_class()(parsed.vendor_id, parsed.product_id, profile=escpos_profile, **kwargs)
    else:
        printer = _file_class()(devfile=parsed.target, profile=escpos_profile)
    try:
        printer.open()
    except PrinterError:
        raise
    except Exception as exc:  # a library error we did not map: still one typed error for the caller
        raise PrinterUnavailable(f"cannot open printer {parsed}: {exc}") from None
    return PrinterConnection(parsed, printer, profile, timeout=timeout, status_timeout=status_timeout)


def query_status(
    uri: str | PrinterUri,
    *,
    profile: PrinterProfile | None = None,
    timeout: float = DEFAULT_STATUS_TIMEOUT_S,
) -> PrinterStatus:
    """Open, ask, close. Never raises for a printer problem: unreachable printers are ``online=False``."""
    try:
        with open_printer(uri, profile=profile, timeout=max(timeout, 0.5), status_timeout=timeout) as conn:
            return conn.status()
    except PrinterUnavailable as exc:
        return PrinterStatus(False, "unknown", str(exc))
    except PrinterDisconnected as exc:
        return PrinterStatus(False, "unknown", str(exc))


def print_bytes(
    uri: str | PrinterUri,
    data: bytes,
    *,
    profile: PrinterProfile | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Open, send ``data`` within ``timeout``, close."""
    with open_printer(uri, profile=profile, timeout=timeout) as conn:
        conn.write(data, timeout=timeout)
