"""Decode an ESC/POS byte stream into printed lines and events, the way a printer reads it.

Used by the virtual printer and by tests to assert on what was printed. The decoder is incremental (bytes may
arrive in any chunking) and parses every length-prefixed command (raster images, ``GS ( k`` 2D codes,
``GS ( L`` graphics, column images, barcodes) as a whole, so ``10 04`` inside their payload is data, never a
status query. Unknown ``ESC``/``GS``/``FS`` commands are skipped without losing sync on text.

Supported: text with codepages (``ESC t``), bold (``ESC E``, ``ESC !``), underline, sizes (``GS !``, ``ESC !``),
alignment (``ESC a``), feeds (``LF``, ``ESC d``, ``ESC J``), cut (``GS V``), native QR (``GS ( k``), raster
images (``GS v 0``, ``GS ( L``, ``ESC *``), barcodes (``GS k``), drawer kick (``ESC p``), init (``ESC @``),
real-time status requests (``DLE EOT n``) and other real-time commands (``DLE ENQ``, ``DLE DC4``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

ESC, GS, FS, DLE = 0x1B, 0x1D, 0x1C, 0x10
LF, CR, HT, FF = 0x0A, 0x0D, 0x09, 0x0C

_ALIGN = {0: "left", 1: "center", 2: "right", 48: "left", 49: "center", 50: "right"}

# ESC <cmd> with a fixed number of parameter bytes.
_ESC_FIXED = {
    ord("@"): 0, ord("!"): 1, ord("E"): 1, ord("-"): 1, ord("a"): 1, ord("t"): 1, ord("M"): 1, ord("G"): 1,
    ord("{"): 1, ord("2"): 0, ord("3"): 1, ord("+"): 1, ord("A"): 1, ord("d"): 1, ord("J"): 1, ord("e"): 1,
    ord("p"): 3, ord("R"): 1, ord("V"): 1, ord("U"): 1, ord(" "): 1, ord("$"): 2, ord("\\"): 2, ord("="): 1,
    ord("r"): 1, ord("i"): 0, ord("m"): 0, ord("<"): 0, ord("%"): 1, ord("?"): 1, ord("K"): 1, ord("L"): 0,
    ord("S"): 0, ord("T"): 1, ord("W"): 8, ord("B"): 2, ord("f"): 2, ord("u"): 1, ord("v"): 0,
}
# GS <cmd> with a fixed number of parameter bytes.
_GS_FIXED = {
    ord("!"): 1, ord("B"): 1, ord("b"): 1, ord("|"): 1, ord("H"): 1, ord("h"): 1, ord("w"): 1, ord("f"): 1,
    ord("a"): 1, ord("r"): 1, ord("I"): 1, ord("L"): 2, ord("W"): 2, ord("P"): 2, ord("$"): 2, ord("\\"): 2,
    ord("^"): 3, ord(":"): 0, ord("*"): 2, ord("/"): 1, ord("E"): 1, ord("T"): 1, ord("g"): 2, ord("Z"): 1,
}
_FS_FIXED = {ord("&"): 0, ord("."): 0, ord("!"): 1, ord("-"): 1, ord("W"): 1, ord("S"): 2, ord("C"): 1}


@dataclass(frozen=True)
class Line:
    text: str
    bold: bool = False
    width: int = 1
    height: int = 1
    align: str = "left"
    underline: bool = False
    kind: str = "line"


@dataclass(frozen=True)
class Qr:
    content: str
    size: int = 3
    ec: str = "L"
    kind: str = "qr"


@dataclass(frozen=True)
class Barcode:
    symbology: int
    content: str
    kind: str = "barcode"


@dataclass(frozen=True)
class Image:
    width: int  # pixels
    height: int
    raster: bytes = field(repr=False)  # 1 bit per pixel, rows of ceil(width / 8) bytes, 1 = black
    align: str = "left"
    kind: str = "image"


@dataclass(frozen=True)
class Cut:
    partial: bool = False
    kind: str = "cut"


@dataclass(frozen=True)
class Drawer:
    pin: int
    kind: str = "drawer"


@dataclass(frozen=True)
class Feed:
    lines: int
    kind: str = "feed"


@dataclass(frozen=True)
class StatusRequest:
    """``DLE EOT n``: the printer must answer one status byte at once (n: 1 printer, 2 offline, 3 error, 4 paper)."""

    n: int
    kind: str = "status_request"


@dataclass(frozen=True)
class Realtime:
    """Other real-time commands (``DLE ENQ``, ``DLE DC4``) that need no answer."""

    command: bytes
    kind: str = "realtime"


@dataclass(frozen=True)
class Init:
    kind: str = "init"


@dataclass(frozen=True)
class Unknown:
    command: bytes
    kind: str = "unknown"


Event = Line | Qr | Barcode | Image | Cut | Drawer | Feed | StatusRequest | Realtime | Init | Unknown


class _NeedMore(Exception):
    """The buffer ends inside a command; wait for more bytes."""


@functools.cache
def _codepage_table(slot: int) -> tuple[str, ...] | None:
    """The 128 characters of codepage ``slot`` (bytes 0x80-0xFF) per the Epson slot numbering that python-escpos's
    printer database (escpos-printer-db) records; None when the slot is unknown."""
    from drivers.printer import import_escpos

    import_escpos()
    from escpos.capabilities import get_profile
    from escpos.codepages import CodePages

    name = get_profile("default").codePages.get(str(slot))
    if not name:
        return None
    try:
        data = CodePages.get_encoding(name)
    except KeyError:
        return None
    if "data" in data:
        chars = tuple("".join(data["data"]))
        return chars if len(chars) == 128 else None
    if "python_encode" in data:
        return tuple(bytes([b]).decode(data["python_encode"], errors="replace") for b in range(128, 256))
    return None


def decode_bytes(data: bytes, slot: int) -> str:
    table = _codepage_table(slot)
    out = []
    for b in data:
        if b < 0x80:
            out.append(chr(b))
        elif table is None:
            out.append("\ufffd")
        else:
            out.append(table[b - 0x80])
    return "".join(out)


@dataclass
class _Style:
    bold: bool = False
    underline: bool = False
    width: int = 1
    height: int = 1
    align: str = "left"
    codepage: int = 0
    kanji: bool = False  # FS & : two-byte GB18030/Shift-JIS text mode (some Asian-market printers)
    esc_bang: int = 0


class EscposDecoder:
    """Feed bytes as they arrive; get the events that completed. Keeps state (style, codepage, QR store)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._style = _Style()
        self._line: list[tuple[bytes, int, bool]] = []  # (raw bytes, codepage, kanji)
        self._line_style: _Style | None = None
        self._qr_store = b""
        self._qr_size = 3
        self._qr_ec = "L"
        self._graphics: bytes | None = None
        self.bytes_seen = 0

    # -- public -----------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        self.bytes_seen += len(data)
        events: list[Event] = []
        pos = 0
        buf = self._buf
        n = len(buf)
        while pos < n:
            try:
                pos = self._step(buf, pos, events)
            except _NeedMore:
                break
        del self._buf[:pos]
        return events

    def flush(self) -> list[Event]:
        """End of stream: the pending partial line (printers print it on the next feed; we report it)."""
        events: list[Event] = []
        self._end_line(events, force=False)
        return events

    @property
    def pending(self) -> int:
        """Bytes held because they end inside an unfinished command."""
        return len(self._buf)

    # -- parsing --------------------------------------------------------------------------------------
    @staticmethod
    def _need(buf: bytearray, pos: int, count: int) -> None:
        if pos + count > len(buf):
            raise _NeedMore

    def _step(self, buf: bytearray, pos: int, events: list[Event]) -> int:
        b = buf[pos]
        if b == LF:
            self._end_line(events, force=True)
            return pos + 1
        if b == CR:
            return pos + 1
        if b == FF:
            self._end_line(events, force=False)
            events.append(Feed(1))
            return pos + 1
        if b == HT:
            self._add_text(b"    ")
            return pos + 1
        if b == ESC:
            return self._esc(buf, pos, events)
        if b == GS:
            return self._gs(buf, pos, events)
        if b == FS:
            return self._fs(buf, pos, events)
        if b == DLE:
            return self._dle(buf, pos, events)
        if b < 0x20 or b == 0x7F:
            return pos + 1  # other control bytes (BEL, NUL...) print nothing
        # a run of printable bytes
        end = pos + 1
        n = len(buf)
        while end < n and ((buf[end] >= 0x20 and buf[end] != 0x7F) or buf[end] >= 0x80):
            end += 1
        if self._style.kanji:
            # keep two-byte characters whole
            if (end - pos) % 2 and any(x >= 0x80 for x in buf[pos:end]) and end == n:
                end -= 1
                if end == pos:
                    raise _NeedMore
        self._add_text(bytes(buf[pos:end]))
        return end

    def _add_text(self, raw: bytes) -> None:
        if self._line_style is None:
            self._line_style = _Style(**vars(self._style))
        elif self._style.bold:
            self._line_style.bold = True
        self._line.append((raw, self._style.codepage, self._style.kanji))

    def _end_line(self, events: list[Event], *, force: bool) -> None:
        if not self._line and not force:
            return
        style = self._line_style or self._style
        parts = []
        for raw, slot, kanji in self._line:
            parts.append(raw.decode("gb18030", errors="replace") if kanji else decode_bytes(raw, slot))
        events.append(Line("".join(parts), style.bold, style.width, style.height, style.align, style.underline))
        self._line = []
        self._line_style = None

    def _esc(self, buf: bytearray, pos: int, events: list[Event]) -> int:
        self._need(buf, pos, 2)
        cmd = buf[pos + 1]
        st = self._style
        if cmd == ord("*"):  # column-format image: ESC * m nL nH data
            self._need(buf, pos, 5)
            m, width = buf[pos + 2], buf[pos + 3] | buf[pos + 4] << 8
            size = width * (3 if m in (32, 33) else 1)
            self._need(buf, pos, 5 + size)
            self._end_line(events, force=False)
            events.append(_column_image(bytes(buf[pos + 5 : pos + 5 + size]), width, m in (32, 33), st.align))
            return pos + 5 + size
        if cmd == ord("D"):  # tab positions, NUL terminated
            end = buf.find(b"\x00", pos + 2)
            if end < 0:
                if len(buf) - pos > 40:
                    return pos + 2
                raise _NeedMore
            return end + 1
        if cmd == ord("("):  # ESC ( X pL pH data
            self._need(buf, pos, 5)
            size = buf[pos + 3] | buf[pos + 4] << 8
            self._need(buf, pos, 5 + size)
            return pos + 5 + size
        if cmd == ord("c"):  # ESC c 3/4/5 n, ESC c 0/1 n
            self._need(buf, pos, 4)
            return pos + 4
        count = _ESC_FIXED.get(cmd)
        if count is None:
            events.append(Unknown(bytes(buf[pos : pos + 2])))
            return pos + 2
        self._need(buf, pos, 2 + count)
        args = buf[pos + 2 : pos + 2 + count]
        if cmd == ord("@"):
            self._end_line(events, force=False)
            self._style = _Style()
            events.append(Init())
        elif cmd == ord("E"):
            st.bold = bool(args[0] & 1)
        elif cmd == ord("G"):
            st.bold = bool(args[0] & 1) or st.bold
        elif cmd == ord("-"):
            st.underline = args[0] in (1, 2, 49, 50)
        elif cmd == ord("!"):
            st.bold = bool(args[0] & 0x08)
            st.height = 2 if args[0] & 0x10 else 1
            st.width = 2 if args[0] & 0x20 else 1
            st.underline = bool(args[0] & 0x80)
        elif cmd == ord("a"):
            st.align = _ALIGN.get(args[0], st.align)
        elif cmd == ord("t"):
            st.codepage = args[0]
        elif cmd == ord("d") or cmd == ord("e"):
            self._end_line(events, force=False)
            if args[0]:
                events.append(Feed(args[0]))
        elif cmd == ord("J"):
            self._end_line(events, force=False)
        elif cmd == ord("p"):
            events.append(Drawer(2 if args[0] in (0, 48) else 5))
        elif cmd in (ord("i"), ord("m")):
            self._end_line(events, force=False)
            events.append(Cut(partial=cmd == ord("m")))
        return pos + 2 + count

    def _gs(self, buf: bytearray, pos: int, events: list[Event]) -> int:
        self._need(buf, pos, 2)
        cmd = buf[pos + 1]
        st = self._style
        if cmd == ord("v"):  # GS v 0 m xL xH yL yH data
            self._need(buf, pos, 8)
            wbytes = buf[pos + 4] | buf[pos + 5] << 8
            height = buf[pos + 6] | buf[pos + 7] << 8
            size = wbytes * height
            self._need(buf, pos, 8 + size)
            self._end_line(events, force=False)
            events.append(Image(wbytes * 8, height, bytes(buf[pos + 8 : pos + 8 + size]), st.align))
            return pos + 8 + size
        if cmd == ord("("):  # GS ( X pL pH data
            self._need(buf, pos, 5)
            fn_group = buf[pos + 2]
            size = buf[pos + 3] | buf[pos + 4] << 8
            self._need(buf, pos, 5 + size)
            body = bytes(buf[pos + 5 : pos + 5 + size])
            if fn_group == ord("k"):
                self._two_d(body, events)
            elif fn_group == ord("L"):
                self._graphics_cmd(body, events)
            return pos + 5 + size
        if cmd == ord("8"):  # GS 8 L p1 p2 p3 p4 data (large graphics)
            self._need(buf, pos, 7)
            size = int.from_bytes(buf[pos + 3 : pos + 7], "little")
            self._need(buf, pos, 7 + size)
            self._graphics_cmd(bytes(buf[pos + 7 : pos + 7 + size]), events)
            return pos + 7 + size
        if cmd == ord("V"):  # GS V m [n]
            self._need(buf, pos, 3)
            m = buf[pos + 2]
            length = 4 if m in (65, 66, 97, 98, 103, 104) else 3
            self._need(buf, pos, length)
            self._end_line(events, force=False)
            events.append(Cut(partial=m in (1, 49, 66, 98, 104)))
            return pos + length
        if cmd == ord("k"):  # barcode
            self._need(buf, pos, 3)
            m = buf[pos + 2]
            if m <= 6:
                end = buf.find(b"\x00", pos + 3)
                if end < 0:
                    if len(buf) - pos > 300:
                        return pos + 3
                    raise _NeedMore
                self._end_line(events, force=False)
                events.append(Barcode(m, bytes(buf[pos + 3 : end]).decode("latin-1")))
                return end + 1
            self._need(buf, pos, 4)
            size = buf[pos + 3]
            self._need(buf, pos, 4 + size)
            self._end_line(events, force=False)
            events.append(Barcode(m, bytes(buf[pos + 4 : pos + 4 + size]).decode("latin-1")))
            return pos + 4 + size
        count = _GS_FIXED.get(cmd)
        if count is None:
            events.append(Unknown(bytes(buf[pos : pos + 2])))
            return pos + 2
        self._need(buf, pos, 2 + count)
        if cmd == ord("!"):
            n = buf[pos + 2]
            st.width = (n >> 4 & 0x07) + 1
            st.height = (n & 0x07) + 1
        return pos + 2 + count

    def _fs(self, buf: bytearray, pos: int, events: list[Event]) -> int:
        self._need(buf, pos, 2)
        cmd = buf[pos + 1]
        if cmd == ord("("):
            self._need(buf, pos, 5)
            size = buf[pos + 3] | buf[pos + 4] << 8
            self._need(buf, pos, 5 + size)
            return pos + 5 + size
        count = _FS_FIXED.get(cmd)
        if count is None:
            events.append(Unknown(bytes(buf[pos : pos + 2])))
            return pos + 2
        self._need(buf, pos, 2 + count)
        if cmd == ord("&"):
            self._style.kanji = True
        elif cmd == ord("."):
            self._style.kanji = False
        return pos + 2 + count

    def _dle(self, buf: bytearray, pos: int, events: list[Event]) -> int:
        self._need(buf, pos, 2)
        cmd = buf[pos + 1]
        if cmd == 0x04:  # DLE EOT n
            self._need(buf, pos, 3)
            events.append(StatusRequest(buf[pos + 2]))
            return pos + 3
        if cmd == 0x05:  # DLE ENQ n
            self._need(buf, pos, 3)
            events.append(Realtime(bytes(buf[pos : pos + 3])))
            return pos + 3
        if cmd == 0x14:  # DLE DC4 fn ... (fn 1, 2: 5 bytes; others 3+)
            self._need(buf, pos, 3)
            length = 5 if buf[pos + 2] in (1, 2, 7, 8) else 3
            self._need(buf, pos, length)
            events.append(Realtime(bytes(buf[pos : pos + length])))
            return pos + length
        return pos + 1  # a lone DLE prints nothing

    def _two_d(self, body: bytes, events: list[Event]) -> None:
        if len(body) < 2 or body[0] != 49:  # cn 49 = QR code
            return
        fn = body[1]
        if fn == 67 and len(body) >= 3:
            self._qr_size = body[2]
        elif fn == 69 and len(body) >= 3:
            self._qr_ec = {48: "L", 49: "M", 50: "Q", 51: "H"}.get(body[2], "L")
        elif fn == 80:
            self._qr_store = body[3:]
        elif fn == 81:
            self._end_line(events, force=False)
            events.append(Qr(self._qr_store.decode("utf-8", errors="replace"), self._qr_size, self._qr_ec))

    def _graphics_cmd(self, body: bytes, events: list[Event]) -> None:
        if len(body) < 2:
            return
        fn = body[1]
        if fn in (ord("p"), 112) and len(body) >= 10:
            self._graphics = body
        elif fn in (ord("2"), 50) and self._graphics is not None:
            g = self._graphics
            width, height = g[6] | g[7] << 8, g[8] | g[9] << 8
            self._end_line(events, force=False)
            events.append(Image(((width + 7) // 8) * 8, height, g[10:], self._style.align))
            self._graphics = None


def _column_image(data: bytes, width: int, tall: bool, align: str) -> Image:
    """ESC * column data (8 or 24 dots high, one byte per 8 vertical dots) to raster rows."""
    dots = 24 if tall else 8
    per_col = dots // 8
    wbytes = (width + 7) // 8
    rows = bytearray(wbytes * dots)
    for x in range(width):
        for k in range(per_col):
            byte = data[x * per_col + k]
            for bit in range(8):
                if byte & (0x80 >> bit):
                    y = k * 8 + bit
                    rows[y * wbytes + x // 8] |= 0x80 >> (x % 8)
    return Image(wbytes * 8, dots, bytes(rows), align)


def decode(data: bytes) -> list[Event]:
    """Decode a whole byte string (tests, previews)."""
    decoder = EscposDecoder()
    return decoder.feed(data) + decoder.flush()


def split_receipts(events: Iterable[Event]) -> list[list[Event]]:
    """Group events into receipts: each cut ends one. Status requests and init are not part of a receipt."""
    receipts: list[list[Event]] = []
    current: list[Event] = []
    for event in events:
        if isinstance(event, StatusRequest | Realtime | Init):
            continue
        current.append(event)
        if isinstance(event, Cut):
            receipts.append(current)
            current = []
    if any(not isinstance(e, Feed) for e in current):
        receipts.append(current)
    return receipts


def events_text(events: Iterable[Event], columns: int = 42) -> str:
    """Plain-text rendering of decoded events (what a person would read on the paper)."""
    out: list[str] = []
    for event in events:
        if isinstance(event, Line):
            text = event.text
            room = max(1, columns // max(1, event.width))
            if event.align == "center":
                text = text.center(room).rstrip()
            elif event.align == "right":
                text = text.rjust(room)
            out.append(text)
        elif isinstance(event, Qr):
            out.append(f"[QR {event.content}]")
        elif isinstance(event, Barcode):
            out.append(f"[BARCODE {event.content}]")
        elif isinstance(event, Image):
            out.append(f"[IMAGE {event.width}x{event.height}]")
        elif isinstance(event, Feed):
            out.extend([""] * min(event.lines, 2))
        elif isinstance(event, Cut):
            out.append("--- cut ---" if not event.partial else "--- partial cut ---")
        elif isinstance(event, Drawer):
            out.append(f"[DRAWER pin {event.pin}]")
    return "\n".join(out) + "\n"


def image_to_pil(image: Image) -> object:
    """The raster of an ``Image`` event as a Pillow 1-bit image (black = printed dot)."""
    from PIL import Image as PILImage
    from PIL import ImageOps

    wbytes = (image.width + 7) // 8
    raw = image.raster[: wbytes * image.height].ljust(wbytes * image.height, b"\x00")
    im = PILImage.frombytes("1", (wbytes * 8, image.height), raw)
    return ImageOps.invert(im.convert("L")).convert("1")


def events_png(events: Iterable[Event], path: str, width_px: int = 576) -> None:
    """Draw decoded events as the paper would look (text in a monospace font, images, QR codes)."""
    import qrcode
    from PIL import Image as PILImage

    from drivers.textimage import CELL_H, text_image

    strips: list[PILImage.Image] = []
    for event in events:
        if isinstance(event, Line):
            strips.append(text_image(event.text, width_px, align=event.align, scale_w=event.width,
                                     scale_h=event.height, bold=event.bold).convert("L"))
        elif isinstance(event, Image):
            im = image_to_pil(event).convert("L")
            strip = PILImage.new("L", (width_px, im.height), 255)
            x = {"center": (width_px - im.width) // 2, "right": width_px - im.width}.get(event.align, 0)
            strip.paste(im, (max(0, x), 0))
            strips.append(strip)
        elif isinstance(event, Qr):
            qr = qrcode.QRCode(box_size=max(1, event.size), border=1)
            qr.add_data(event.content)
            qr.make(fit=True)
            im = qr.make_image().get_image().convert("L")
            strip = PILImage.new("L", (width_px, im.height), 255)
            strip.paste(im, ((width_px - im.width) // 2, 0))
            strips.append(strip)
        elif isinstance(event, Feed):
            strips.append(PILImage.new("L", (width_px, CELL_H * min(event.lines, 3)), 255))
        elif isinstance(event, Cut):
            strip = PILImage.new("L", (width_px, 12), 255)
            for x in range(0, width_px, 12):
                strip.paste(0, (x, 5, x + 6, 7))
            strips.append(strip)
    height = sum(s.height for s in strips) or 1
    page = PILImage.new("L", (width_px, height), 255)
    y = 0
    for s in strips:
        page.paste(s, (0, y))
        y += s.height
    page.save(path, format="PNG")
