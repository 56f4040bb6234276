"""EMV contactless read over any ``ApduTransport``: PPSE, application choice, PDOL-driven GPO, READ RECORD.

The flow (EMV Book B / Book 3 as a contactless kernel runs it, without the risk and cryptographic parts that
need a certified kernel):

1. SELECT PPSE ``2PAY.SYS.DDF01``; its directory lists the card's applications with priorities (87).
   A card without PPSE (error status) is tried with the terminal's known AIDs, in order.
2. Candidates = card applications whose AID starts with a supported AID, ordered by priority
   (1 highest, 0 / absent last, card order on ties). SELECT the first that answers 9000.
3. GET PROCESSING OPTIONS with the PDOL (9F38) filled from ``TerminalData``; unknown tags are zero-filled at
   the requested length. Format 1 (``80``: AIP + AFL) and format 2 (``77`` template) answers.
4. READ RECORD every record the AFL lists.

Every card answer goes through the strict TLV parser; anything malformed is ``CardDataError``, an error status
word ``CardStatusError``; nothing else escapes. 61xx/6Cxx are resolved in ``drivers.transport.exchange``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from drivers import tlv
from drivers.cardread import EmvCardRead
from drivers.errors import CardDataError, CardStatusError, NoApplicationError
from drivers.transport import ApduTransport, RApdu, exchange
from protocol.amounts import currency_numeric
from protocol.carddata import luhn_ok, mask_pan, redact

PPSE = b"2PAY.SYS.DDF01"

# Terminal's supported AIDs (RID + PIX), in the order tried when a card has no PPSE.
DEFAULT_AIDS: tuple[str, ...] = (
    "A0000000031010",  # Visa credit/debit
    "A0000000032010",  # Visa Electron
    "A0000000041010",  # Mastercard
    "A0000000043060",  # Maestro
    "A00000002501",  # American Express
    "A0000001523010",  # Discover
    "A0000000651010",  # JCB
    "A000000333010101",  # UnionPay debit
    "A000000333010102",  # UnionPay credit
)

_SCHEME_BY_RID = {
    "A000000003": "visa",
    "A000000004": "mastercard",
    "A000000025": "amex",
    "A000000152": "discover",
    "A000000324": "discover",
    "A000000065": "jcb",
    "A000000333": "unionpay",
}

# Never in the diagnostic dump: PAN, track data, cardholder name, expiry, issuer discretionary data.
SENSITIVE_TAGS = frozenset({0x5A, 0x57, 0x56, 0x5F20, 0x5F24, 0x9F1F, 0x9F20, 0x9F6B, 0x9F0B, 0x9F5D})

# Shown as text in the diagnostic dump: PPSE name, labels, preferred name, language.
_TEXT_TAGS = frozenset({0x84, 0x50, 0x9F12, 0x5F2D})

# Data head office needs for clearing / online authorization of the cryptogram (sealed, never displayed).
CRYPTOGRAM_TAGS = (
    0x9F26, 0x9F27, 0x9F10, 0x9F36, 0x9F37, 0x95, 0x9A, 0x9C, 0x5F2A, 0x9F02, 0x9F03, 0x9F1A, 0x82, 0x9F66,
    0x9F6C, 0x9F6E, 0x5F34, 0x9F33, 0x9F35, 0x84,
)  # fmt: skip

# Of those, the ones the terminal supplies (EMV Book 3 Annex A, source "terminal"): the values the card's cryptogram
# covers are the ones the terminal sent, so a card's own copy of them (a cloned card fixing the unpredictable
# number, or claiming another amount) never replaces them in what head office checks.
TERMINAL_SOURCED_TAGS = frozenset({0x9F37, 0x95, 0x9A, 0x9C, 0x5F2A, 0x9F02, 0x9F03, 0x9F1A, 0x9F66, 0x9F33, 0x9F35,
                                   0x9F21})

# EMV Book 1: application label (50) and preferred name (9F12) are 1-16 characters; the DF name (84) 5-16 bytes.
_MAX_LABEL = 16

# Numeric (n) data elements: padded/truncated on the left, as EMV Book 3 section 5.4 says for DOL filling.
_NUMERIC_TAGS = frozenset({0x9F02, 0x9F03, 0x9A, 0x9F21, 0x5F2A, 0x9F1A, 0x9C, 0x9F15, 0x9F35, 0x5F36})

_MAX_RECORDS = 64


def _bcd(value: int, length: int) -> bytes:
    return bytes.fromhex(f"{value:0{length * 2}d}"[-length * 2 :])


@dataclass(frozen=True)
class TerminalData:
    """What the terminal puts into the GPO (PDOL) data."""

    amount_minor: int = 0
    currency: str = "EUR"
    country_numeric: int = 276
    txn_type: int = 0x00  # 0x00 sale, 0x20 refund
    ttq: bytes = bytes.fromhex("36004000")  # qVSDC + contact + online PIN + signature; CDCVM supported
    terminal_type: int = 0x22  # attended, online with offline capability
    other_amount_minor: int = 0
    capabilities: bytes = bytes.fromhex("E0F8C8")
    additional_capabilities: bytes = bytes.fromhex("6000F0A001")
    merchant_category: int = 5999
    merchant_name: str = "SMARTPOS"
    terminal_id: str = "SMARTPOS"
    supported_aids: tuple[str, ...] = DEFAULT_AIDS
    clock: Callable[[], time.struct_time] = field(default=time.localtime, compare=False, repr=False)

    @functools.cached_property
    def _fixed_values(self) -> dict[int, bytes]:
        # Everything but date, time and the unpredictable number is fixed for this TerminalData: build it once,
        # not inside the latency-critical stretch between SELECT and GPO.
        return {
            0x9F02: _bcd(self.amount_minor, 6),
            0x9F03: _bcd(self.other_amount_minor, 6),
            0x9F1A: _bcd(self.country_numeric, 2),
            0x5F2A: _bcd(currency_numeric(self.currency), 2),
            0x9C: bytes([self.txn_type & 0xFF]),  # already BCD as written: 0x00 sale, 0x20 refund
            0x9F66: self.ttq,
            0x9F35: bytes([self.terminal_type]),
            0x95: bytes(5),  # TVR: nothing flagged before the card is read
            0x9F33: self.capabilities,
            0x9F40: self.additional_capabilities,
            0x9F15: _bcd(self.merchant_category, 2),
            0x9F4E: self.merchant_name.encode("ascii", "replace"),
            0x9F1C: self.terminal_id.encode("ascii", "replace")[:8].ljust(8, b" "),
        }

    def values(self, unpredictable_number: bytes) -> dict[int, bytes]:
        now = self.clock()
        out = dict(self._fixed_values)
        out[0x9A] = bytes(((now.tm_year % 100 // 10) << 4 | now.tm_year % 10, (now.tm_mon // 10) << 4 | now.tm_mon % 10,
                           (now.tm_mday // 10) << 4 | now.tm_mday % 10))  # fmt: skip
        out[0x9F21] = bytes(((v // 10) << 4 | v % 10) for v in (now.tm_hour, now.tm_min, now.tm_sec))
        out[0x9F37] = unpredictable_number
        return out


def build_dol_data(dol: Sequence[tuple[int, int]], values: dict[int, bytes]) -> bytes:
    """Concatenate each requested tag's value at the requested length; unknown tags are zero-filled."""
    out = bytearray()
    for tag, length in dol:
        value = values.get(tag)
        if value is None:
            out += bytes(length)
        elif tag in _NUMERIC_TAGS:
            out += value[-length:].rjust(length, b"\x00") if length else b""
        else:
            out += value[:length].ljust(length, b"\x00")
    return bytes(out)


def scheme_for(aid: str, pan: str) -> str:
    scheme = _SCHEME_BY_RID.get(aid[:10].upper())
    if scheme:
        return scheme
    if pan.startswith("4"):
        return "visa"
    if pan[:2] in {"51", "52", "53", "54", "55"} or 2221 <= int(pan[:4] or 0) <= 2720:
        return "mastercard"
    if pan[:2] in {"34", "37"}:
        return "amex"
    if pan.startswith("6011") or pan.startswith("65") or 644 <= int(pan[:3] or 0) <= 649:
        return "discover"
    if 3528 <= int(pan[:4] or 0) <= 3589:
        return "jcb"
    if pan.startswith("62"):
        return "unionpay"
    return "other"


@dataclass(frozen=True)
class _Candidate:
    aid: bytes
    label: str
    priority: int  # 1..15, 16 = none
    order: int


def _command(cla: int, ins: int, p1: int, p2: int, data: bytes | None = None) -> bytes:
    if data is None:
        return bytes([cla, ins, p1, p2, 0x00])
    if len(data) > 255:
        raise CardDataError("command data too long for a short APDU")
    return bytes([cla, ins, p1, p2, len(data)]) + data + b"\x00"


def _check(resp: RApdu, what: str) -> bytes:
    if resp.sw != 0x9000:
        raise CardStatusError(f"card refused {what}", sw=resp.sw)
    return resp.data


def _ascii(value: bytes | None) -> str | None:
    if value is None:
        return None
    text = value.decode("ascii", "replace")
    if not text.isprintable():
        text = "".join(c if c.isprintable() and c.isascii() else "?" for c in text)
    return text.replace("\ufffd", "?").strip()


# SELECT answers that mean "not this application here": try the next one, and with none left the card has no
# payment application (read as a UID card): 6Axx not found, 62xx blocked or invalidated, 69xx not usable now,
# 6Dxx / 6Exx a card that knows no SELECT by name at all (transit and access cards). Others are a faulty card.
_NOT_THIS_APPLICATION = (0x6A, 0x62, 0x69, 0x6D, 0x6E)
_MAX_CANDIDATES = 8


def _ppse_candidates(transport: ApduTransport, collected: list[tuple[str, list[tlv.Tlv]]]) -> list[_Candidate] | None:
    resp = exchange(transport, _command(0x00, 0xA4, 0x04, 0x00, PPSE))
    if resp.sw != 0x9000:
        return None  # no PPSE: fall back to the terminal's AID list
    nodes = tlv.parse(resp.data)
    collected.append(("PPSE", nodes))
    out: list[_Candidate] = []
    for i, entry in enumerate(tlv.find_all(nodes, 0x61)):
        fields = tlv.primitives(entry.children or ())
        aid = fields.get(0x4F)
        if not aid or not 5 <= len(aid) <= 16:
            continue
        prio_raw = fields.get(0x87)
        prio = (prio_raw[0] & 0x0F) if prio_raw else 0
        out.append(_Candidate(aid, _ascii(fields.get(0x50)) or "", prio or 16, i))
    return out


def _afl_entries(afl: bytes) -> list[tuple[int, int]]:
    if len(afl) % 4:
        raise CardDataError("application file locator has a wrong length")
    records: list[tuple[int, int]] = []
    for i in range(0, len(afl), 4):
        sfi, first, last = afl[i] >> 3, afl[i + 1], afl[i + 2]
        if afl[i] & 0x07 or not 1 <= sfi <= 30 or first == 0 or last < first:
            raise CardDataError("application file locator entry is invalid")
        records.extend((sfi, n) for n in range(first, last + 1))
        if len(records) > _MAX_RECORDS:
            raise CardDataError("application file locator lists too many records")
    return records


def _digits(value: bytes) -> str:
    text = value.hex().upper().rstrip("F")
    if not text.isdigit():
        raise CardDataError("card number field is not numeric")
    return text


def read_card(
    transport: ApduTransport,
    td: TerminalData,
    *,
    reader: str,
    supported_aids: Sequence[str] | None = None,
    detected_at: float | None = None,
) -> EmvCardRead:
    """Run the contactless EMV read. Raises ``NoApplicationError`` when the card has no supported application
    (the caller may then treat it as a UID-only card), other ``CardError`` subclasses on bad reads."""
    detected = time.monotonic() if detected_at is None else detected_at
    supported = [bytes.fromhex(a) for a in (supported_aids if supported_aids is not None else td.supported_aids)]
    collected: list[tuple[str, list[tlv.Tlv]]] = []

    listed = _ppse_candidates(transport, collected)
    if listed is None:
        candidates = [_Candidate(aid, "", 16, i) for i, aid in enumerate(supported)]
    else:
        candidates = [c for c in listed if any(c.aid.startswith(s) for s in supported)]
        candidates.sort(key=lambda c: (c.priority, c.order))
        # Each listed application once, and only the first few: a directory of 200 entries (hostile or broken)
        # must not cost 200 SELECTs while the customer holds the card to the reader.
        unique: dict[bytes, _Candidate] = {}
        for cand in candidates:
            unique.setdefault(cand.aid, cand)
        candidates = list(unique.values())[:_MAX_CANDIDATES]
    if not candidates:
        raise NoApplicationError("no supported payment application on the card")

    fci: list[tlv.Tlv] | None = None
    chosen: _Candidate | None = None
    for cand in candidates:
        resp = exchange(transport, _command(0x00, 0xA4, 0x04, 0x00, cand.aid))
        if resp.sw == 0x9000:
            fci = tlv.parse(resp.data)
            chosen = cand
            break
        if resp.sw >> 8 not in _NOT_THIS_APPLICATION:
            raise CardStatusError("card refused SELECT of the application", sw=resp.sw)
    if fci is None or chosen is None:
        raise NoApplicationError("no supported payment application answered")
    collected.append(("SELECT", fci))
    fci_fields = tlv.primitives(fci)
    aid = fci_fields.get(0x84) or chosen.aid
    if not 5 <= len(aid) <= 16 or not aid.startswith(chosen.aid[:5]):
        raise CardDataError("the application's DF name does not match the application selected")

    un = os.urandom(4)
    terminal_values = td.values(un)
    pdol_raw = fci_fields.get(0x9F38, b"")
    pdol = tlv.parse_dol(pdol_raw) if pdol_raw else []
    pdol_data = build_dol_data(pdol, terminal_values)
    gpo_body = tlv.encode(0x83, pdol_data)
    gpo = tlv.parse(_check(exchange(transport, _command(0x80, 0xA8, 0x00, 0x00, gpo_body)), "GET PROCESSING OPTIONS"))
    collected.append(("GPO", gpo))
    if len(gpo) != 1 or gpo[0].tag not in (0x77, 0x80):
        raise CardDataError("GET PROCESSING OPTIONS answer is not a response template")
    if gpo[0].tag == 0x80:
        if len(gpo[0].value) < 2:
            raise CardDataError("GET PROCESSING OPTIONS format 1 answer too short")
        data: dict[int, bytes] = {0x82: gpo[0].value[:2], 0x94: gpo[0].value[2:]}
    else:
        data = tlv.primitives(gpo)
    if 0x82 not in data:
        raise CardDataError("card did not return its application interchange profile")

    for sfi, number in _afl_entries(data.get(0x94, b"")):
        raw = _check(exchange(transport, _command(0x00, 0xB2, number, (sfi << 3) | 0x04)), "READ RECORD")
        record = tlv.parse(raw)
        if sfi <= 10 and (len(record) != 1 or record[0].tag != 0x70):
            raise CardDataError("record is not a record template")
        collected.append((f"RECORD {sfi}/{number}", record))
        for tag, value in tlv.primitives(record).items():
            data.setdefault(tag, value)

    return _result(
        data, fci_fields, chosen, aid, pdol, terminal_values, collected, reader=reader, detected=detected,
        pdol_data=pdol_data,
    )


def _result(
    data: dict[int, bytes],
    fci_fields: dict[int, bytes],
    chosen: _Candidate,
    aid: bytes,
    pdol: list[tuple[int, int]],
    terminal_values: dict[int, bytes],
    collected: list[tuple[str, list[tlv.Tlv]]],
    *,
    reader: str,
    detected: float,
    pdol_data: bytes,
) -> EmvCardRead:
    track2_raw = data.get(0x57)
    track2 = track2_raw.hex().upper().rstrip("F") if track2_raw else None
    if track2 is not None and ("D" not in track2 or not track2.replace("D", "").isdigit()):
        raise CardDataError("track 2 equivalent data is malformed")
    if 0x5A in data:
        pan = _digits(data[0x5A])
        if track2 is not None and track2.split("D", 1)[0] != pan:
            # The card number shown and tokenised must be the one head office clears (track 2 in the envelope).
            raise CardDataError("the card's PAN and its track 2 data name different cards")
    elif track2 is not None:
        pan = track2.split("D", 1)[0]
    else:
        raise CardDataError("card returned no PAN")
    if not 12 <= len(pan) <= 19 or not luhn_ok(pan):
        raise CardDataError("card number fails the length or check-digit test")
    if 0x5F24 in data:
        expiry_raw = data[0x5F24].hex()
        expiry = expiry_raw[:4]
    elif track2 is not None:
        expiry = track2.split("D", 1)[1][:4]
    else:
        raise CardDataError("card returned no expiry date")
    if len(expiry) != 4 or not expiry.isdigit() or not 1 <= int(expiry[2:]) <= 12:
        raise CardDataError("card expiry date is malformed")
    if track2 is not None and 0x5F24 in data and track2.split("D", 1)[1][:4] != expiry:
        raise CardDataError("the card's expiry date and its track 2 data disagree")

    aid_hex = aid.hex().upper()
    label = (_ascii(fci_fields.get(0x50)) or chosen.label)[:_MAX_LABEL] or aid_hex
    preferred = (_ascii(fci_fields.get(0x9F12)) or "")[:_MAX_LABEL] or None
    scheme = scheme_for(aid_hex, pan)
    ffi = data.get(0x9F6E)
    wallet = 0x9F19 in data or (scheme == "visa" and ffi is not None and len(ffi) >= 1 and ffi[0] & 0x1F != 0)

    # The terminal's values as the card got them in the GPO (padded or cut to the length its PDOL asked for): the
    # bytes its cryptogram covers, which head office's check must rebuild.
    crypt: dict[str, str] = {}
    pos = 0
    for tag, length in pdol:
        if tag in terminal_values:
            crypt[tlv.tag_hex(tag)] = pdol_data[pos:pos + length].hex().upper()
        pos += length
    crypt["84"] = aid_hex
    for tag in CRYPTOGRAM_TAGS:
        if tag in data and tag not in TERMINAL_SOURCED_TAGS:
            crypt[tlv.tag_hex(tag)] = data[tag].hex().upper()
    atc_raw = data.get(0x9F36)
    atc = int.from_bytes(atc_raw, "big") if atc_raw else None

    def render_dump() -> str:
        return redact(
            "\n".join(
                f"{name}:\n{tlv.dump(nodes, redact_tags=SENSITIVE_TAGS, text_tags=_TEXT_TAGS, indent=1)}"
                for name, nodes in collected
            )
        )

    return EmvCardRead(
        reader=reader,
        detected_at=detected,
        read_at=time.monotonic(),
        scheme=scheme,
        masked_pan=mask_pan(pan),
        pan_last4=pan[-4:],
        aid=aid_hex,
        label=label,
        preferred_name=preferred,
        track2_present=track2 is not None,
        atc=atc,
        cryptogram=crypt,
        wallet=wallet,
        redacted_tlv=render_dump,  # type: ignore[arg-type]  # rendered on first read (see cardread)
        pan=pan,
        expiry=expiry,
        track2=track2,
    )
