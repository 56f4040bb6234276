"""An NFC Forum tag with an NDEF message (member number, coupon link) for nfcpy readers on the ``udp`` driver.

Three tag types, all read-only:

=========  ================================================================================================
``type4``  ISO-DEP Type 4A tag (NFC Forum T4T 2.0): NDEF application ``D2760000850101``, capability container
           ``E103``, NDEF file ``E104``; served by the ISO-DEP target in ``nfc_target.py``. Default: found by
           the reader's first poll (106A).
``type3``  FeliCa Type 3 tag (system code ``12FC``) with nfcpy's own ``Type3TagEmulation``; the reader polls
           212F after 106A, so on the ``udp`` driver it is found about 1 s later.
``type2``  Type 2 tag (NFC Forum T2T, e.g. NTAG/Ultralight-like memory): READ of 4 pages, NDEF message TLV
           from page 4, capability container in page 3; any other command gets a NAK.
=========  ================================================================================================

    run_tag([NdefRecord("text", "MEMBER-0042", "en")], 54322, taps=1)   # or: smartpos sim tag --text ...
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from drivers.cardread import NdefRecord
from drivers.ndef import encode_records
from drivers.simulators.nfc_target import (
    PortInUseError,
    TapOutcome,
    import_nfc,
    listen_once,
    open_listener,
    serve_isodep,
)

__all__ = ["TAG_TYPES", "PortInUseError", "Type4NdefApp", "run_tag"]

TAG_TYPES = ("type4", "type3", "type2")
NDEF_AID = bytes.fromhex("D2760000850101")
CC_FILE = b"\xe1\x03"
NDEF_FILE = b"\xe1\x04"
DEFAULT_UID = bytes.fromhex("04A1B2C3D4E5F6")  # 7-byte NXP-style UID
DEFAULT_T2_UID = bytes.fromhex("05A1B2C3D4E5F6")  # not NXP (04): nfcpy would probe NXP-only commands first
DEFAULT_IDM = bytes.fromhex("02FE5350534D4E44")  # Type 3 IDm ("SPSMND"); 02FE: an NFC Forum tag, not NFC-DEP
# PMm: IC code FF (no Sony product, so nfcpy treats it as a plain Type 3 tag); response-time bytes FF.
DEFAULT_PMM = bytes.fromhex("00FFFFFFFFFFFFFF")

_SW_OK = b"\x90\x00"
_SW_NOT_FOUND = b"\x6a\x82"
_SW_WRONG_P1P2 = b"\x6b\x00"
_SW_NOT_ALLOWED = b"\x69\x86"
_SW_SECURITY = b"\x69\x82"
_SW_INS = b"\x6d\x00"
_SW_CLA = b"\x6e\x00"


class Type4NdefApp:
    """APDU side of a read-only NFC Forum Type 4 tag holding ``message`` (NDEF bytes)."""

    MAX_LE = 0xFF  # keeps every read in one short APDU

    def __init__(self, message: bytes) -> None:
        if len(message) > 0xFFFE - 2:
            raise ValueError("NDEF message too large for a Type 4 tag file")
        self.ndef_file = struct.pack(">H", len(message)) + message
        size = max(len(self.ndef_file), 2)
        control = b"\x04\x06" + NDEF_FILE + struct.pack(">H", size) + b"\x00\xff"  # read: free, write: never
        self.cc_file = struct.pack(">HBHH", 15, 0x20, self.MAX_LE, self.MAX_LE) + control
        self.reset()

    def reset(self) -> None:
        self.app_selected = False
        self.file: bytes | None = None

    def process(self, apdu: bytes) -> bytes:
        if len(apdu) < 4:
            return b"\x67\x00"
        cla, ins, p1, p2 = apdu[:4]
        if cla != 0x00:
            return _SW_CLA
        body = apdu[5 : 5 + apdu[4]] if len(apdu) > 5 else b""
        if ins == 0xA4 and p1 == 0x04:
            self.app_selected = body == NDEF_AID
            self.file = None
            return _SW_OK if self.app_selected else _SW_NOT_FOUND
        if ins == 0xA4 and p1 == 0x00:
            if not self.app_selected:
                return _SW_NOT_FOUND
            self.file = {CC_FILE: self.cc_file, NDEF_FILE: self.ndef_file}.get(body)
            return _SW_OK if self.file is not None else _SW_NOT_FOUND
        if ins == 0xB0:
            if self.file is None:
                return _SW_NOT_ALLOWED
            offset = (p1 << 8) | p2
            le = apdu[4] if len(apdu) == 5 else 0
            if offset > len(self.file):
                return _SW_WRONG_P1P2
            return self.file[offset : offset + (le or 256)] + _SW_OK
        if ins == 0xD6:
            return _SW_SECURITY  # read-only tag
        return _SW_INS


def run_tag(
    records: Sequence[NdefRecord],
    udp_port: int,
    taps: int | None = None,
    stop: threading.Event | None = None,
    *,
    tag_type: str = "type4",
    uid: bytes | None = None,
    gap: float = 0.0,
    on_tap: Callable[[int, TapOutcome], None] | None = None,
) -> int:
    """Serve a tag holding ``records`` on ``udp:127.0.0.1:udp_port`` for ``taps`` taps (``None``: until ``stop``).

    Blocks; prints nothing; returns the number of taps served. Raises ``PortInUseError`` (an ``OSError``) when
    another process holds the port, ``ValueError`` for records that cannot be encoded or an unknown tag type.
    """
    if tag_type not in TAG_TYPES:
        raise ValueError(f"unknown tag type {tag_type!r} (one of {', '.join(TAG_TYPES)})")
    message = encode_records(records)
    stop = stop or threading.Event()
    if tag_type == "type4":
        app = Type4NdefApp(message)

        def handler_for_tap(n: int) -> Callable[[bytes], bytes]:
            app.reset()
            return app.process

        return serve_isodep(
            handler_for_tap, udp_port, uid=uid or DEFAULT_UID, taps=taps, stop=stop, gap=gap, on_tap=on_tap
        )
    if tag_type == "type2":
        return _run_type2(message, udp_port, taps=taps, stop=stop, uid=uid or DEFAULT_T2_UID, gap=gap, on_tap=on_tap)
    return _run_type3(message, udp_port, taps=taps, stop=stop, idm=uid or DEFAULT_IDM, gap=gap, on_tap=on_tap)


# -- Type 3 -------------------------------------------------------------------------------------------------------
def type3_blocks(message: bytes) -> list[bytes]:
    """Attribute block (NFC Forum T3T 1.0) followed by the message in 16-byte blocks."""
    data_blocks = (len(message) + 15) // 16
    nbr, nbw, nmaxb = 4, 0, max(data_blocks, 1)
    attr = bytearray(struct.pack(">BBBH", 0x10, nbr, nbw, nmaxb)) + bytes(4)
    attr += bytes([0x00, 0x00]) + struct.pack(">I", len(message))[1:]  # WriteF done, RWFlag read-only, Ln
    attr += struct.pack(">H", sum(attr))
    padded = message + bytes(-len(message) % 16)
    return [bytes(attr)] + [padded[i : i + 16] for i in range(0, len(padded), 16)]


def _run_type3(
    message: bytes,
    udp_port: int,
    *,
    taps: int | None,
    stop: threading.Event,
    idm: bytes,
    gap: float,
    on_tap: Callable[[int, TapOutcome], None] | None,
    idle: float = 2.0,
) -> int:
    """Type 3 tag: nfcpy's ``Type3TagEmulation`` answers every frame, polls included (see ``bind_port``)."""
    nfc = import_nfc()
    if len(idm) != 8:
        raise ValueError("a Type 3 IDm is 8 bytes")
    blocks = type3_blocks(message)

    def read_block(number: int, rb: int, re: int) -> bytes | None:
        return blocks[number] if 0 <= number < len(blocks) else None

    clf = open_listener(udp_port)
    device = clf.device
    served = 0
    try:
        if not device.bind_port():
            raise PortInUseError(udp_port)
        target = nfc.clf.LocalTarget("212F")
        target.sensf_res = bytearray(b"\x01" + idm + DEFAULT_PMM + b"\x12\xfc")
        target.tt3_cmd = bytearray()
        emulation = nfc.tag.tt3.Type3TagEmulation(clf, target)
        emulation.add_service(0x0009, read_block, None)
        emulation.add_service(0x000B, read_block, None)
        reader: tuple[str, int] | None = None  # the polling reader of the current activation
        commands, last_rx = 0, time.monotonic()

        def end_tap(ended: str) -> None:
            nonlocal served, reader, commands
            if reader is not None and commands:
                if on_tap is not None:
                    on_tap(served, TapOutcome(commands, ended))
                served += 1
                if gap > 0 and (taps is None or served < taps):
                    stop.wait(gap)
            reader, commands = None, 0

        while not stop.is_set() and (taps is None or served < taps):
            try:
                brty, frame, addr = device.recv_frame(0.2, "212F")
            except nfc.clf.BrokenLinkError:
                end_tap("rf_off")
                continue
            except nfc.clf.TimeoutError:
                if reader is not None and time.monotonic() - last_rx > idle:
                    end_tap("idle")
                continue
            except nfc.clf.CommunicationError:
                continue
            last_rx = time.monotonic()
            if not frame or frame[0] != len(frame) or len(frame) < 2:
                continue
            if frame[1] == 0x00:  # polling: a (new) activation by this reader
                if addr != reader:
                    end_tap("repoll")
                    reader = addr
            else:
                commands += 1
            try:
                response = emulation.process_command(bytearray(frame))
            except (IndexError, ValueError):
                response = None  # a malformed command gets silence, as from a real tag
            if response is not None:
                device.send_frame(brty, bytes(response), addr)
    finally:
        clf.close()
    return served


def _serve_frames(
    nfc: Any,
    clf: Any,
    first: bytes,
    respond: Callable[[bytes], bytes | None],
    is_repoll: Callable[[bytes], bool],
    *,
    stop: threading.Event,
    idle: float,
) -> TapOutcome:
    """Answer the reader's commands (first one given) until field off, a new poll, silence or ``stop``."""
    commands = 1
    response = respond(first)
    last_rx = time.monotonic()
    while not stop.is_set():
        try:
            command = clf.exchange(response, 0.2)
        except nfc.clf.BrokenLinkError:
            return TapOutcome(commands, "rf_off")
        except nfc.clf.TimeoutError:
            response = None
            if time.monotonic() - last_rx > idle:
                return TapOutcome(commands, "idle")
            continue
        except nfc.clf.CommunicationError:
            response = None
            continue
        if command is None:
            return TapOutcome(commands, "rf_off")
        last_rx = time.monotonic()
        command = bytes(command)
        if is_repoll(command):
            return TapOutcome(commands, "repoll")
        commands += 1
        response = respond(command)
    return TapOutcome(commands, "stopped")


# -- Type 2 -------------------------------------------------------------------------------------------------------
def type2_memory(uid: bytes, message: bytes) -> bytes:
    """Tag memory: UID/BCC/lock pages, capability container (read-only), NDEF message TLV, terminator TLV."""
    if len(uid) != 7:
        raise ValueError("a Type 2 tag UID is 7 bytes")
    bcc0 = 0x88 ^ uid[0] ^ uid[1] ^ uid[2]
    bcc1 = uid[3] ^ uid[4] ^ uid[5] ^ uid[6]
    header = uid[:3] + bytes([bcc0]) + uid[3:7] + bytes([bcc1, 0x48, 0xFF, 0xFF])  # lock bytes: all locked
    tlv = b"\x03" + (bytes([len(message)]) if len(message) < 0xFF else b"\xff" + struct.pack(">H", len(message)))
    data = tlv + message + b"\xfe"
    data += bytes(-len(data) % 8)
    if len(data) // 8 > 0xFF:
        raise ValueError("NDEF message too large for a Type 2 tag")
    cc = bytes([0xE1, 0x10, len(data) // 8, 0x0F])  # NDEF 1.0, data area size / 8, no write access
    return header + cc + data


def _run_type2(
    message: bytes,
    udp_port: int,
    *,
    taps: int | None,
    stop: threading.Event,
    uid: bytes,
    gap: float,
    on_tap: Callable[[int, TapOutcome], None] | None,
    idle: float = 2.0,
) -> int:
    nfc = import_nfc()
    memory = type2_memory(uid, message)

    def respond(command: bytes) -> bytes | None:
        if len(command) == 2 and command[0] == 0x30:  # READ: 4 pages (16 bytes), rolling over at the end
            start = command[1] * 4
            if start >= len(memory):
                return b"\x00"  # NAK: invalid page
            return (memory + memory)[start : start + 16]
        return b"\x00"  # NAK for anything else (writes included: the tag is read-only)

    def is_repoll(command: bytes) -> bool:
        return command in (b"\x26", b"\x52")

    clf = open_listener(udp_port)
    served = 0
    try:
        target = nfc.clf.LocalTarget("106A")
        target.sens_res = bytearray.fromhex("4400")
        target.sdd_res = bytearray(uid)
        target.sel_res = bytearray.fromhex("00")
        while not stop.is_set() and (taps is None or served < taps):
            activated = listen_once(clf, target, udp_port, 0.5)
            if activated is None or stop.is_set() or not activated.tt2_cmd:
                continue
            outcome = _serve_frames(nfc, clf, bytes(activated.tt2_cmd), respond, is_repoll, stop=stop, idle=idle)
            if on_tap is not None:
                on_tap(served, outcome)
            served += 1
            if gap > 0 and (taps is None or served < taps):
                stop.wait(gap)
    finally:
        clf.close()
    return served
