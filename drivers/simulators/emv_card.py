"""A virtual contactless EMV card (or HCE phone, or UID-only card) that answers command APDUs.

Shared by the vpcd card client (``drivers/simulators/vpcd.py``, PC/SC path) and the nfcpy ISO-DEP phone emulator
(``drivers/simulators/nfc_phone.py``): both feed it APDUs with ``process(apdu) -> response``.

It is a simulator for development and tests, not a card implementation: it follows the message flow of a
contactless kernel (PPSE, SELECT, GPO checked against the PDOL, READ RECORD over the AFL it announces) with
data from a readable profile file (``profiles/*.toml``), test PANs only. The application cryptogram is an HMAC
over the GPO data so it changes with the unpredictable number, as real ones do, but it proves nothing.

Bad-card modes (``mode=``) for the failure tests:

=============== =========================================================================================
``bad-tlv``     first READ RECORD answers a record whose TLV is malformed (indefinite length)
``wrong-length`` first READ RECORD answers a template whose length claims more bytes than it sends
``error-sw``    GPO answers ``6985`` (conditions of use not satisfied)
``drop``        first READ RECORD raises ``SimulatedDrop``: the transport drops the card (removed mid-read)
``t0``          T=0 behaviour: case-4 answers come as ``61xx`` + GET RESPONSE, a wrong Le gets ``6Cxx``
``no-ppse``     no PPSE: SELECT 2PAY.SYS.DDF01 answers ``6A82``, the reader must try its known AIDs
=============== =========================================================================================
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from drivers import tlv
from drivers.errors import CardRemovedError
from drivers.transport import RApdu, split_response

PPSE_NAME = b"2PAY.SYS.DDF01"
PROFILES_DIR = Path(__file__).parent / "profiles"
MODES = ("bad-tlv", "wrong-length", "error-sw", "drop", "t0", "no-ppse")

# ATR a PC/SC reader builds for an ISO 14443-4 card without historical bytes (PC/SC part 3), and a T=0 ATR.
ATR_CONTACTLESS = "3B80800101"
ATR_T0 = "3B021450"

SW_OK = b"\x90\x00"
SW_WRONG_LENGTH = b"\x67\x00"
SW_CONDITIONS = b"\x69\x85"
SW_NOT_FOUND = b"\x6a\x82"
SW_RECORD_NOT_FOUND = b"\x6a\x83"
SW_WRONG_P1P2 = b"\x6a\x86"
SW_DATA_NOT_FOUND = b"\x6a\x88"
SW_INS_UNKNOWN = b"\x6d\x00"
SW_CLA_UNKNOWN = b"\x6e\x00"


class SimulatedDrop(Exception):
    """Raised by ``process`` in ``drop`` mode: the transport must drop the card now (close the socket)."""


@dataclass(frozen=True)
class Record:
    sfi: int
    number: int
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Application:
    aid: bytes
    label: str
    priority: int | None
    preferred_name: str | None
    pdol: bytes
    aip: bytes
    gpo_template: int  # 0x77 (format 2) or 0x80 (format 1)
    gpo_tags: tuple[str, ...]
    records: tuple[Record, ...]
    values: dict[str, str]  # literal tag hex -> value hex

    def afl(self) -> bytes:
        """AFL entries (SFI, first, last, records for offline auth) grouping consecutive records per SFI."""
        out = bytearray()
        by_sfi: dict[int, list[int]] = {}
        for rec in self.records:
            by_sfi.setdefault(rec.sfi, []).append(rec.number)
        for sfi, numbers in by_sfi.items():
            numbers.sort()
            start = prev = numbers[0]
            for n in [*numbers[1:], None]:
                if n is not None and n == prev + 1:
                    prev = n
                    continue
                out += bytes([sfi << 3, start, prev, 0])
                if n is not None:
                    start = prev = n
        return bytes(out)


@dataclass(frozen=True)
class CardProfile:
    name: str
    description: str
    atr: bytes
    uid: bytes
    ppse: bool
    pan: str
    expiry: str  # YYMM
    effective: str | None
    cardholder: str | None
    pan_sequence: str | None
    service_code: str
    atc: int
    issuer_country: str | None
    applications: tuple[Application, ...] = field(default=())


def _hex(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"profile: {where} must be a hex string")
    try:
        return bytes.fromhex(value.replace(" ", ""))
    except ValueError as exc:
        raise ValueError(f"profile: {where} is not valid hex") from exc


def _parse_profile(data: dict, source: str) -> CardProfile:
    try:
        return _build_profile(data, source)
    except KeyError as exc:
        raise ValueError(f"profile {source}: missing {exc}") from exc
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"profile {source}: malformed ({exc})") from exc


def _build_profile(data: dict, source: str) -> CardProfile:
    card = data.get("card", {})
    apps = []
    for i, app in enumerate(data.get("applications", [])):
        apps.append(
            Application(
                aid=_hex(app["aid"], f"applications[{i}].aid"),
                label=app.get("label", ""),
                priority=app.get("priority"),
                preferred_name=app.get("preferred_name"),
                pdol=_hex(app.get("pdol", ""), f"applications[{i}].pdol"),
                aip=_hex(app.get("aip", "0000"), f"applications[{i}].aip"),
                gpo_template=int(app.get("gpo_template", "77"), 16),
                gpo_tags=tuple(app.get("gpo_tags", [])),
                records=tuple(
                    Record(int(r["sfi"]), int(r["number"]), tuple(r.get("tags", [])))
                    for r in app.get("records", [])
                ),
                values={k.upper(): v for k, v in app.get("values", {}).items()},
            )
        )
    return CardProfile(
        name=data.get("name", source),
        description=data.get("description", ""),
        atr=_hex(data.get("atr", ATR_CONTACTLESS), "atr"),
        uid=_hex(data.get("uid", "04000000000000"), "uid"),
        ppse=bool(data.get("ppse", True)),
        pan=str(card.get("pan", "")),
        expiry=str(card.get("expiry", "")),
        effective=card.get("effective"),
        cardholder=card.get("cardholder"),
        pan_sequence=card.get("pan_sequence"),
        service_code=str(card.get("service_code", "201")),
        atc=int(card.get("atc", 1)),
        issuer_country=card.get("issuer_country"),
        applications=tuple(apps),
    )


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def load_profile(name_or_path: str | Path) -> CardProfile:
    """Load a shipped profile by name (``visa``, ``mastercard``, ``phone``, ``uid``) or a TOML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ValueError(f"unknown card profile {name_or_path!r} (shipped: {', '.join(profile_names())})")
    with path.open("rb") as fh:
        try:
            data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"profile {path.name}: {exc}") from exc
    return _parse_profile(data, path.stem)


def _bcd(digits: str) -> bytes:
    if len(digits) % 2:
        digits += "F"
    return bytes.fromhex(digits)


class VirtualEmvCard:
    """Answers APDUs like a contactless card described by ``profile``. One instance = one card; ``reset()`` on
    power-on (the vpcd client calls it on every new tap)."""

    def __init__(self, profile: CardProfile | str | Path, *, mode: str | None = None) -> None:
        self.profile = profile if isinstance(profile, CardProfile) else load_profile(profile)
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown card mode {mode!r} (one of {', '.join(MODES)})")
        self.mode = mode
        self.atc = self.profile.atc
        self.reset()

    @property
    def atr(self) -> bytes:
        return bytes.fromhex(ATR_T0) if self.mode == "t0" else self.profile.atr

    def reset(self) -> None:
        self._selected: Application | None = None
        self._gpo_data: bytes | None = None
        self._pending: bytes = b""
        self._records_read = 0

    # -- computed data objects ---------------------------------------------------------------------------------
    def _value(self, app: Application, tag: str) -> bytes | None:
        p = self.profile
        if tag in app.values:
            return _hex(app.values[tag], f"values.{tag}")
        if tag == "5A":
            return _bcd(p.pan)
        if tag == "5F24":
            yy, mm = int(p.expiry[:2]), int(p.expiry[2:4])
            last = calendar.monthrange(2000 + yy, mm)[1]
            return bytes.fromhex(f"{p.expiry}{last:02d}")
        if tag == "5F25" and p.effective:
            return bytes.fromhex(f"{p.effective}01")
        if tag == "57":
            return _bcd(f"{p.pan}D{p.expiry}{p.service_code}0000000000000")
        if tag == "5F20" and p.cardholder:
            return p.cardholder.encode("ascii")
        if tag == "5F34" and p.pan_sequence:
            return bytes.fromhex(p.pan_sequence)
        if tag == "5F28" and p.issuer_country:
            return bytes.fromhex(p.issuer_country)
        if tag == "9F36":
            return self.atc.to_bytes(2, "big")
        if tag == "9F27":
            return b"\x80"  # ARQC: go online
        if tag == "9F26":
            msg = (self._gpo_data or b"") + self.atc.to_bytes(2, "big")
            return hmac.new(p.name.encode(), msg, hashlib.sha256).digest()[:8]
        if tag == "82":
            return app.aip
        if tag == "94":
            return app.afl()
        return None

    def _objects(self, app: Application, tags: tuple[str, ...]) -> bytes:
        out = bytearray()
        for tag in tags:
            value = self._value(app, tag.upper())
            if value is not None:
                out += tlv.encode(int(tag, 16), value)
        return bytes(out)

    # -- command handling --------------------------------------------------------------------------------------
    def process(self, apdu: bytes) -> bytes:
        """Answer one command APDU with response data + SW1 SW2. Never raises, except ``SimulatedDrop``."""
        apdu = bytes(apdu)
        if len(apdu) < 4:
            return SW_WRONG_LENGTH
        cla, ins, p1, p2 = apdu[:4]
        body, le = b"", None
        if len(apdu) == 5:
            le = apdu[4]
        elif len(apdu) > 5:
            lc = apdu[4]
            if len(apdu) not in (5 + lc, 6 + lc):
                return SW_WRONG_LENGTH
            body = apdu[5 : 5 + lc]
            if len(apdu) == 6 + lc:
                le = apdu[-1]

        if self.mode == "t0" and (cla, ins) == (0x00, 0xC0):
            return self._get_response(le)
        if (cla, ins, p1, p2) == (0xFF, 0xCA, 0x00, 0x00):
            # PC/SC GET DATA (UID): answered by the reader itself on real hardware.
            return self.profile.uid + SW_OK
        if cla not in (0x00, 0x80):
            return SW_CLA_UNKNOWN
        if (cla, ins) == (0x00, 0xA4):
            resp = self._select(p1, body)
        elif (cla, ins) == (0x80, 0xA8):
            resp = self._gpo(body)
        elif (cla, ins) == (0x00, 0xB2):
            resp = self._read_record(p1, p2)
        elif (cla, ins) == (0x80, 0xCA):
            resp = self._get_data(p1, p2)
        else:
            return SW_INS_UNKNOWN
        return self._t0(resp, case4=bool(body), le=le) if self.mode == "t0" else resp

    def _t0(self, resp: bytes, *, case4: bool, le: int | None) -> bytes:
        data, sw = resp[:-2], resp[-2:]
        if sw != SW_OK or not data:
            return resp
        if case4:
            self._pending = data
            return bytes([0x61, min(len(data), 255)])
        if le is not None and le != (len(data) & 0xFF):
            return bytes([0x6C, len(data) & 0xFF])
        return resp

    def _get_response(self, le: int | None) -> bytes:
        if not self._pending:
            return b"\x69\x85"
        n = le if le else 256
        chunk, self._pending = self._pending[:n], self._pending[n:]
        if self._pending:
            return chunk + bytes([0x61, min(len(self._pending), 255)])
        return chunk + SW_OK

    def _select(self, p1: int, name: bytes) -> bytes:
        if p1 != 0x04:
            return SW_WRONG_P1P2
        self._selected = None
        self._gpo_data = None
        apps = self.profile.applications
        if name == PPSE_NAME:
            if not self.profile.ppse or self.mode == "no-ppse" or not apps:
                return SW_NOT_FOUND
            entries = bytearray()
            for app in apps:
                inner = tlv.encode(0x4F, app.aid) + tlv.encode(0x50, app.label.encode("ascii"))
                if app.priority is not None:
                    inner += tlv.encode(0x87, bytes([app.priority]))
                entries += tlv.encode(0x61, inner)
            fci = tlv.encode(0x84, PPSE_NAME) + tlv.encode(0xA5, tlv.encode(0xBF0C, bytes(entries)))
            return tlv.encode(0x6F, fci) + SW_OK
        for app in apps:
            # Partial selection by AID prefix, as ISO 7816-4 allows and cards implement.
            if name and app.aid.startswith(name):
                self._selected = app
                prop = tlv.encode(0x50, app.label.encode("ascii"))
                if app.priority is not None:
                    prop += tlv.encode(0x87, bytes([app.priority]))
                if app.pdol:
                    prop += tlv.encode(0x9F38, app.pdol)
                prop += tlv.encode(0x5F2D, b"en")
                if app.preferred_name:
                    prop += tlv.encode(0x9F11, b"\x01") + tlv.encode(0x9F12, app.preferred_name.encode("ascii"))
                fci = tlv.encode(0x84, app.aid) + tlv.encode(0xA5, prop)
                return tlv.encode(0x6F, fci) + SW_OK
        return SW_NOT_FOUND

    def _gpo(self, body: bytes) -> bytes:
        app = self._selected
        if app is None:
            return SW_CONDITIONS
        if self.mode == "error-sw":
            return SW_CONDITIONS
        if len(body) < 2 or body[0] != 0x83 or body[1] != len(body) - 2:
            return SW_WRONG_LENGTH
        expected = sum(length for _, length in tlv.parse_dol(app.pdol)) if app.pdol else 0
        if body[1] != expected:
            return SW_WRONG_LENGTH
        self._gpo_data = body[2:]
        self.atc = (self.atc + 1) & 0xFFFF
        if app.gpo_template == 0x80:
            return tlv.encode(0x80, app.aip + app.afl()) + SW_OK
        return tlv.encode(0x77, self._objects(app, app.gpo_tags or ("82", "94"))) + SW_OK

    def _read_record(self, number: int, p2: int) -> bytes:
        app = self._selected
        if app is None or self._gpo_data is None:
            return SW_CONDITIONS
        if p2 & 0x07 != 0x04:
            return SW_WRONG_P1P2
        sfi = p2 >> 3
        for rec in app.records:
            if rec.sfi == sfi and rec.number == number:
                self._records_read += 1
                first = self._records_read == 1
                body = self._objects(app, rec.tags)
                if first and self.mode == "drop":
                    raise SimulatedDrop
                if first and self.mode == "bad-tlv":
                    return b"\x70\x80" + body + b"\x00\x00" + SW_OK
                if first and self.mode == "wrong-length":
                    return bytes([0x70, len(body) + 7]) + body + SW_OK
                return tlv.encode(0x70, body) + SW_OK
        return SW_RECORD_NOT_FOUND

    def _get_data(self, p1: int, p2: int) -> bytes:
        if (p1, p2) == (0x9F, 0x36):
            return tlv.encode(0x9F36, self.atc.to_bytes(2, "big")) + SW_OK
        return SW_DATA_NOT_FOUND


class InProcessCard:
    """``ApduTransport`` straight onto a ``VirtualEmvCard``, for unit tests of the pure EMV flow (no stack)."""

    def __init__(self, card: VirtualEmvCard) -> None:
        self.card = card
        self.apdus: list[bytes] = []

    def transmit(self, apdu: bytes) -> RApdu:
        self.apdus.append(bytes(apdu))
        try:
            raw = self.card.process(apdu)
        except SimulatedDrop as exc:
            raise CardRemovedError("card removed during the read") from exc
        return split_response(raw)
