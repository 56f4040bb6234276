"""Receipts: the model, layouts as pure functions, and three renderers over the same layout (text, ESC/POS, PNG).

``layout(model, columns)`` turns a ``ReceiptModel`` into a list of elements (text lines already wrapped to the
paper, QR codes, feeds, cuts). ``render_text`` and ``render_escpos`` only walk that list, so the preview and
the paper cannot disagree. Card data: a receipt carries the last 4 digits of the PAN and nothing else of it;
the model refuses more. Expiry dates are not part of the model at all.

Text that the printer's codepages cannot encode (CJK, mixed scripts) is printed as an image of that line, and so is
Arabic script (its letters must be joined, which no codepage does); everything else is encoded in one of the
profile's codepages (``ESC t``), chosen per line. Printers lay characters down left to right: a line with Hebrew is
put in visual order (Unicode bidirectional algorithm) before it is encoded; lines are wrapped in logical order.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from protocol.amounts import format_amount, validate_amount, validate_currency
from protocol.errors import ValidationError

KINDS = ("sale", "refund", "void", "settlement", "test")
COPIES = ("customer", "merchant")
ENTRY_MODES = {"contactless": "Contactless", "nfc_tag": "NFC tag", "card_uid": "Card UID"}
CVM_TEXT = {"none": "No cardholder verification", "signature": "Signature", "cdcvm": "Verified on device",
            "pin": "PIN verified"}

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean_text(value: object) -> str:
    """Printable text only: control bytes in merchant names or references must never reach the printer as
    commands (``ESC``, ``DLE EOT``...)."""
    return _CONTROL.sub(" ", str(value)).strip() if value is not None else ""


# -- model ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Merchant:
    name: str
    address: tuple[str, ...] = ()
    merchant_id: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Merchant:
        data = data or {}
        address = data.get("address") or data.get("address_lines") or ()
        if isinstance(address, str):
            address = tuple(line for line in address.splitlines() if line.strip())
        return cls(clean_text(data.get("name") or ""), tuple(clean_text(a) for a in address),
                   clean_text(data.get("id") or data.get("merchant_id") or ""))


@dataclass(frozen=True)
class TxnInfo:
    type: str  # sale | refund | void
    amount_minor: int
    currency: str
    sequence: int
    batch: int
    uuid: str
    scheme: str = ""
    label: str = ""
    aid: str = ""
    pan_last4: str = ""
    entry_mode: str = "contactless"
    auth_mode: str = "online"  # online | offline
    auth_code: str = ""
    local_reference: str = ""  # shown with OFFLINE approvals
    reference: str = ""  # the POS front end's reference
    atc: str = ""
    tvr: str = ""
    cvm: str = "none"
    original_sequence: int | None = None  # void: the sequence of the voided sale or refund
    original_type: str = "sale"  # void: what it voids (a void of a refund gives the money back to the shop)
    voided_by_sequence: int | None = None  # a sale or refund voided since (its reprint says so)

    def __post_init__(self) -> None:
        if self.type not in ("sale", "refund", "void"):
            raise ValidationError("invalid_receipt", f"transaction type must be sale/refund/void, not {self.type!r}")
        validate_amount(self.amount_minor)
        validate_currency(self.currency)
        # A closed-loop UID card has a hex identifier, not a PAN: its last 4 hex digits stand in the same place.
        last4 = r"[0-9A-F]{4}" if self.scheme == "uid" else r"[0-9]{4}"
        if self.pan_last4 and not re.fullmatch(last4, self.pan_last4):
            raise ValidationError("invalid_receipt", "a receipt carries the last 4 digits of the card number only")
        if self.auth_mode not in ("online", "offline"):
            raise ValidationError("invalid_receipt", f"auth_mode must be online or offline, not {self.auth_mode!r}")


@dataclass(frozen=True)
class SettlementRow:
    scheme: str
    currency: str
    sale_count: int = 0
    sale_amount: int = 0
    refund_count: int = 0
    refund_amount: int = 0
    void_count: int = 0
    void_amount: int = 0
    net_amount: int | None = None  # None: sales - refunds - voids

    @property
    def net(self) -> int:
        if self.net_amount is not None:
            return self.net_amount
        return self.sale_amount - self.refund_amount - self.void_amount


@dataclass(frozen=True)
class SettlementInfo:
    batch: int
    rows: tuple[SettlementRow, ...]
    opened_at: str = ""
    closed_at: str = ""
    balanced: bool | None = None  # None: head office has not confirmed yet
    differences: tuple[str, ...] = ()


@dataclass(frozen=True)
class TestInfo:
    profile: str
    model: str
    columns: int
    width_px: int
    native_qr: bool
    codepages: tuple[str, ...]
    status_before: str = ""


@dataclass(frozen=True)
class ReceiptModel:
    kind: str
    merchant: Merchant
    terminal_id: str
    when: str  # ISO 8601 with offset; printed as given (the daemon passes local time)
    copy: str | None = None
    txn: TxnInfo | None = None
    settlement: SettlementInfo | None = None
    test: TestInfo | None = None
    reprint: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValidationError("invalid_receipt", f"receipt kind must be one of {', '.join(KINDS)}")
        if self.kind in ("sale", "refund", "void"):
            if self.txn is None or self.txn.type != self.kind:
                raise ValidationError("invalid_receipt", f"a {self.kind} receipt needs a {self.kind} transaction")
            if self.copy not in COPIES:
                raise ValidationError("invalid_receipt", "a transaction receipt is a customer or a merchant copy")
        if self.kind == "settlement" and self.settlement is None:
            raise ValidationError("invalid_receipt", "a settlement report needs batch totals")
        if self.kind == "test" and self.test is None:
            raise ValidationError("invalid_receipt", "a test page needs the printer profile")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReceiptModel:
        """Inverse of ``to_dict`` (print-job payloads are stored as JSON)."""
        try:
            merchant = data["merchant"]
            txn = data.get("txn")
            settlement = data.get("settlement")
            test = data.get("test")
            return cls(
                kind=data["kind"],
                merchant=Merchant(
                    merchant["name"], tuple(merchant.get("address") or ()), merchant.get("merchant_id", "")
                ),
                terminal_id=data["terminal_id"],
                when=data["when"],
                copy=data.get("copy"),
                txn=TxnInfo(**_known(TxnInfo, txn)) if txn else None,
                settlement=SettlementInfo(
                    **{
                        **_known(SettlementInfo, settlement),
                        "rows": tuple(SettlementRow(**_known(SettlementRow, r)) for r in settlement.get("rows", ())),
                        "differences": tuple(settlement.get("differences") or ()),
                    }
                )
                if settlement
                else None,
                test=TestInfo(**{**_known(TestInfo, test), "codepages": tuple(test.get("codepages") or ())})
                if test
                else None,
                reprint=bool(data.get("reprint", False)),
            )
        except (KeyError, TypeError) as exc:
            raise ValidationError("invalid_receipt", f"receipt payload is incomplete: {exc}") from None


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _get(txn: object, *names: str, default: Any = None) -> Any:
    for name in names:
        if isinstance(txn, Mapping):
            if name in txn and txn[name] is not None:
                return txn[name]
        elif getattr(txn, name, None) is not None:
            return getattr(txn, name)
    return default


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat(timespec="seconds")
    return str(value) if value else datetime.now(UTC).isoformat(timespec="seconds")


def txn_info_from_record(txn: object) -> TxnInfo:
    """Build the receipt's transaction part from a recorded transaction (a mapping or an object with the queue's
    field names). Takes the last 4 digits from the masked PAN; never looks at anything else of the card number."""
    auth = _get(txn, "auth", "authorization", default={}) or {}
    if not isinstance(auth, Mapping):
        auth = {"mode": getattr(auth, "mode", None), "code": getattr(auth, "code", None)}
    masked = str(_get(txn, "masked_pan", default="") or "")
    last4 = str(_get(txn, "pan_last4", "last4", default="") or (masked[-4:] if len(masked) >= 4 else ""))
    emv = _get(txn, "emv", "card", default={}) or {}
    auth_mode = str(_get(txn, "auth_mode", default=None) or auth.get("mode") or auth.get("type") or "online")
    sequence = int(_get(txn, "sequence", default=0))
    batch = int(_get(txn, "batch", "batch_number", "batch_no", default=0))
    code = clean_text(_get(txn, "auth_code", default=None) or auth.get("code") or "")
    return TxnInfo(
        type=str(_get(txn, "type", "txn_type")),
        amount_minor=int(_get(txn, "amount_minor")),
        currency=str(_get(txn, "currency")),
        sequence=sequence,
        batch=batch,
        uuid=str(_get(txn, "uuid", "id", default="")),
        scheme=clean_text(_get(txn, "scheme", default="")),
        label=clean_text(_get(txn, "label", "application_label", default="")),
        aid=clean_text(_get(txn, "aid", default="")),
        pan_last4=last4,
        entry_mode=str(_get(txn, "entry_mode", default="contactless")),
        auth_mode="offline" if auth_mode == "offline" else "online",
        auth_code=code,
        local_reference=clean_text(_get(txn, "local_reference", default="") or ""),
        reference=clean_text(_get(txn, "reference", default="") or ""),
        atc=clean_text(_get(txn, "atc", default=None) or (emv.get("atc") if isinstance(emv, Mapping) else "") or ""),
        tvr=clean_text(_get(txn, "tvr", default=None) or (emv.get("tvr") if isinstance(emv, Mapping) else "") or ""),
        cvm=str(_get(txn, "cvm", default="none")),
        original_sequence=_get(txn, "original_sequence", "void_of_sequence", default=None),
        original_type="refund" if _get(txn, "original_type", default="sale") == "refund" else "sale",
        voided_by_sequence=_get(txn, "voided_by_sequence", default=None),
    )


def in_zone(iso: str, tz: tzinfo | None) -> str:
    """``iso`` (UTC as stored) as the shop's time: in ``tz``, or the system's local time when ``tz`` is None."""
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(tz).isoformat(timespec="seconds")


def receipt_for_transaction(txn: object, *, merchant: Mapping[str, Any] | Merchant, terminal_id: str, copy: str,
                            reprint: bool = False, tz: tzinfo | None = UTC) -> ReceiptModel:
    """``tz``: the zone receipt times are printed in (None: the system's local time, as the daemon prints)."""
    info = txn_info_from_record(txn)
    when = in_zone(_iso(_get(txn, "created_at", "recorded_at", "timestamp", "approved_at", default=None)), tz)
    m = merchant if isinstance(merchant, Merchant) else Merchant.from_dict(merchant)
    return ReceiptModel(info.type, m, clean_text(terminal_id), when, copy=copy, txn=info, reprint=reprint)


# -- layout -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextLine:
    text: str
    align: str = "left"
    bold: bool = False
    double: bool = False  # double width and height


@dataclass(frozen=True)
class QrCode:
    content: str


@dataclass(frozen=True)
class Feed:
    lines: int = 1


@dataclass(frozen=True)
class CutPaper:
    pass


Element = TextLine | QrCode | Feed | CutPaper


def display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def wrap(text: str, width: int) -> list[str]:
    """Greedy word wrap by display width (CJK counts 2); words longer than a line are split, never cut off."""
    text = clean_text(text)
    if not text:
        return [""]
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if display_width(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        for ch in word:
            if display_width(current + ch) > width:
                lines.append(current)
                current = ""
            current += ch
    if current or not lines:
        lines.append(current)
    return lines


def _lines(text: str, columns: int, *, align: str = "left", bold: bool = False, double: bool = False) -> list[TextLine]:
    width = columns // 2 if double else columns
    return [TextLine(part, align, bold, double) for part in wrap(text, width)]


def _pair(left: str, right: str, columns: int, *, bold: bool = False) -> list[TextLine]:
    left, right = clean_text(left), clean_text(right)
    gap = columns - display_width(left) - display_width(right)
    if gap >= 1:
        return [TextLine(left + " " * gap + right, bold=bold)]
    return [*_lines(left, columns, bold=bold), *(TextLine(p, "right", bold) for p in wrap(right, columns))]


def _rule(columns: int, char: str = "-") -> TextLine:
    return TextLine(char * columns)


def _when(iso: str) -> str:
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        return clean_text(iso)
    offset = dt.strftime("%z")
    zone = "UTC" if offset in ("+0000", "") else f"{offset[:3]}:{offset[3:]}"
    return f"{dt:%Y-%m-%d %H:%M:%S} {zone}"


def _header(model: ReceiptModel, columns: int) -> list[Element]:
    out: list[Element] = []
    out += _lines(model.merchant.name or "Merchant", columns, align="center", bold=True)
    for line in model.merchant.address:
        out += _lines(line, columns, align="center")
    if model.merchant.merchant_id:
        out += _pair("Merchant ID", model.merchant.merchant_id, columns)
    out += _pair("Terminal ID", model.terminal_id, columns)
    out += _pair("Date", _when(model.when), columns)
    return out


_TITLES = {"sale": "SALE", "refund": "REFUND", "void": "VOID"}


def _txn_layout(model: ReceiptModel, columns: int) -> list[Element]:
    t = model.txn
    assert t is not None
    out = _header(model, columns)
    out.append(_rule(columns))
    out += _lines(_TITLES[t.type], columns, align="center", bold=True, double=True)
    if model.reprint:
        out += _lines("*** DUPLICATE ***", columns, align="center", bold=True)
    if t.type == "void" and t.original_sequence is not None:
        out += _pair(f"Voids {t.original_type}", f"#{t.original_sequence:06d}", columns)
    out.append(_rule(columns))
    if t.scheme == "uid":
        out += _pair("Card", "Closed loop", columns)
    elif t.scheme:
        out += _pair("Scheme", t.scheme.upper(), columns)
    if t.label:
        out += _pair("Application", t.label, columns)
    if t.pan_last4:
        out += _pair("Card UID" if t.scheme == "uid" else "Card number", f"**** {t.pan_last4}", columns)
    out += _pair("Entry", ENTRY_MODES.get(t.entry_mode, clean_text(t.entry_mode)), columns)
    if t.aid:
        out += _pair("AID", t.aid, columns)
    if t.atc:
        out += _pair("ATC", t.atc, columns)
    if t.tvr:
        out += _pair("TVR", t.tvr, columns)
    out += _pair("Sequence", f"{t.sequence:06d}", columns)
    out += _pair("Batch", f"{t.batch:03d}", columns)
    if t.reference:
        out += _pair("Reference", t.reference, columns)
    out.append(_rule(columns))
    # What the customer gets or pays: a sale charges, a refund and a void of a sale give back, a void of a refund
    # takes the refunded amount back.
    signed = t.amount_minor if t.type == "sale" or (t.type == "void" and t.original_type == "refund") \
        else -t.amount_minor
    amount = format_amount(signed, t.currency)
    half = columns // 2
    if display_width("TOTAL") + display_width(amount) + 1 <= half:
        out += [TextLine("TOTAL" + " " * (half - 5 - len(amount)) + amount, bold=True, double=True)]
    else:
        out += _pair("TOTAL", amount, columns, bold=True)
    out.append(_rule(columns))
    if t.auth_mode == "offline":
        # Not the auth code: offline it is the EMV response code ("Y1"), the same on every offline approval.
        reference = t.local_reference or f"{model.terminal_id}-{t.batch:03d}-{t.sequence:06d}"
        out += _pair("Authorization", "OFFLINE", columns, bold=True)
        out += _pair("Local reference", reference, columns)
    else:
        out += _pair("Authorization code", t.auth_code or "-", columns, bold=True)
    out += _lines(CVM_TEXT.get(t.cvm, clean_text(t.cvm)), columns, align="center")
    verdict = {"sale": "APPROVED", "refund": "REFUND ACCEPTED", "void": "VOIDED"}[t.type]
    out += _lines(verdict, columns, align="center", bold=True)
    if t.type != "void" and t.voided_by_sequence is not None:
        # A copy of a receipt whose transaction was voided since must not pass for a standing payment.
        out += _lines(f"*** VOIDED BY #{int(t.voided_by_sequence):06d} ***", columns, align="center", bold=True)
        out += _lines("NOTHING WAS CHARGED" if t.type == "sale" else "THE REFUND WAS TAKEN BACK", columns,
                      align="center")
    out.append(Feed(1))
    out.append(QrCode(t.uuid))
    copy = "MERCHANT COPY" if model.copy == "merchant" else "CUSTOMER COPY - please keep"
    out += _lines(copy, columns, align="center")
    out.append(CutPaper())
    return out


def _settlement_layout(model: ReceiptModel, columns: int) -> list[Element]:
    s = model.settlement
    assert s is not None
    out = _header(model, columns)
    out.append(_rule(columns))
    out += _lines("SETTLEMENT", columns, align="center", bold=True, double=True)
    out += _pair("Batch", f"{s.batch:03d}", columns)
    if s.opened_at:
        out += _pair("Opened", _when(s.opened_at), columns)
    if s.closed_at:
        out += _pair("Closed", _when(s.closed_at), columns)
    nets: dict[str, list[int]] = {}
    for row in sorted(s.rows, key=lambda r: (r.currency, r.scheme)):
        out.append(_rule(columns))
        out += _lines(f"{row.scheme.upper()} {row.currency}", columns, bold=True)
        out += _pair(f"Sales    {row.sale_count:4d}", format_amount(row.sale_amount, row.currency), columns)
        out += _pair(f"Refunds  {row.refund_count:4d}", format_amount(-row.refund_amount, row.currency), columns)
        # What the voids did to the net (a void of a refund adds): so that sales + refunds + voids = net on paper.
        voids_effect = row.net - row.sale_amount + row.refund_amount
        out += _pair(f"Voids    {row.void_count:4d}", format_amount(voids_effect, row.currency), columns)
        out += _pair("Net", format_amount(row.net, row.currency), columns, bold=True)
        total = nets.setdefault(row.currency, [0, 0])
        total[0] += row.sale_count + row.refund_count + row.void_count
        total[1] += row.net
    out.append(_rule(columns, "="))
    if not s.rows:
        out += _lines("No transactions in this batch", columns, align="center")
    for currency, (count, net) in sorted(nets.items()):
        out += _pair(f"TOTAL {currency} ({count} txns)", format_amount(net, currency), columns, bold=True)
    out.append(_rule(columns, "="))
    if s.balanced is None:
        out += _lines("Balance: not confirmed by head office", columns, align="center")
    else:
        out += _lines("BALANCED" if s.balanced else "OUT OF BALANCE", columns, align="center", bold=True)
    for diff in s.differences:
        out += _lines(diff, columns)
    out.append(CutPaper())
    return out


CODEPAGE_SAMPLE = "Caf\u00e9 Z\u00fcrich \u2013 \u00a3 \u20ac \u00f1 \u00df \u00d8"
CJK_SAMPLE = "\u5317\u4eac\u5e97 \u6536\u636e \u2013 \u6771\u4eac"
# Right-to-left samples: Hebrew goes in a codepage in visual order, Arabic as a joined image (see render_escpos).
HEBREW_SAMPLE = "\u05e9\u05dc\u05d5\u05dd 42 \u05e7\u05d1\u05dc\u05d4"
ARABIC_SAMPLE = "\u0645\u0631\u062d\u0628\u0627 42 \u0625\u064a\u0635\u0627\u0644"


def _test_layout(model: ReceiptModel, columns: int) -> list[Element]:
    info = model.test
    assert info is not None
    out = _header(model, columns)
    out.append(_rule(columns))
    out += _lines("PRINTER TEST", columns, align="center", bold=True, double=True)
    out += _pair("Model", info.model, columns)
    out += _pair("Profile", info.profile, columns)
    out += _pair("Columns / width", f"{info.columns} / {info.width_px} px", columns)
    out += _pair("Native QR", "yes" if info.native_qr else "no (image)", columns)
    if info.status_before:
        out += _pair("Status before", info.status_before, columns)
    out += _lines("Codepages: " + ", ".join(info.codepages), columns)
    out.append(_rule(columns))
    out.append(TextLine(("0123456789" * (columns // 10 + 1))[:columns]))
    out += _lines("Left", columns)
    out += _lines("Center", columns, align="center")
    out += _lines("Right", columns, align="right")
    out += _lines("Bold", columns, bold=True)
    out += _lines("Double", columns, double=True)
    out += _lines(CODEPAGE_SAMPLE, columns)
    out += _lines(CJK_SAMPLE, columns)
    out += _lines(HEBREW_SAMPLE, columns)
    out += _lines(ARABIC_SAMPLE, columns)
    out.append(QrCode(f"smartpos test page {model.terminal_id}"))
    out += _lines("End of test page", columns, align="center")
    out.append(CutPaper())
    return out


def layout(model: ReceiptModel, columns: int) -> list[Element]:
    """The receipt as printer-independent elements, wrapped to ``columns``."""
    if model.kind == "settlement":
        return _settlement_layout(model, columns)
    if model.kind == "test":
        return _test_layout(model, columns)
    return _txn_layout(model, columns)


# -- renderers --------------------------------------------------------------------------------------------
def _align(text: str, room: int, align: str) -> str:
    pad = max(0, room - display_width(text))
    if align == "center":
        return (" " * (pad // 2) + text).rstrip() if text else ""
    if align == "right":
        return " " * pad + text
    return text


def render_text(model: ReceiptModel, columns: int = 42) -> str:
    """Plain text of the receipt (technicians, logs without card data, tests). Matches the decoded paper, except
    that right-to-left text stays in logical order here (for screens, which reorder it themselves) where the paper
    has it in visual order."""
    out: list[str] = []
    for el in layout(model, columns):
        if isinstance(el, TextLine):
            out.append(_align(el.text, columns // 2 if el.double else columns, el.align))
        elif isinstance(el, QrCode):
            out.append(f"[QR {el.content}]")
        elif isinstance(el, Feed):
            out.extend([""] * el.lines)
        elif isinstance(el, CutPaper):
            out.extend(["", "", "--- cut ---"])
    return "\n".join(out) + "\n"


@functools.lru_cache(maxsize=16)
def _encoder(codepages: tuple[tuple[int, str], ...]) -> Any:
    from drivers.printer import import_escpos

    import_escpos()
    from escpos.magicencode import Encoder

    return Encoder({name: slot for slot, name in reversed(codepages)})


def encode_line(text: str, profile: Any, current_slot: int = 0) -> tuple[int, bytes] | None:
    """``(slot, bytes)`` for the first of the profile's codepages (the current one first) that encodes the whole
    line, or None when none can (the line is then printed as an image)."""
    if text.isascii():
        return current_slot, text.encode("ascii")
    pages = tuple(profile.codepages.items())
    encoder = _encoder(pages)
    order = sorted(pages, key=lambda sc: sc[0] != current_slot)
    for slot, name in order:
        try:
            if all(encoder.can_encode(name, ch) for ch in text):
                return slot, bytes(encoder.encode(text, name))
        except (KeyError, LookupError, ValueError):
            continue
    return None


def render_escpos(model: ReceiptModel, profile: Any = None) -> bytes:
    """ESC/POS bytes for the receipt, built with python-escpos (its ``Dummy`` printer) for ``profile``
    (a ``drivers.printer.PrinterProfile``; default profile when None)."""
    from drivers.printer import import_escpos, load_profile
    from drivers.textimage import needs_shaping, text_image, visual_order

    import_escpos()
    from escpos.constants import CODEPAGE_CHANGE
    from escpos.printer import Dummy

    profile = profile or load_profile()
    printer = Dummy(profile=profile.escpos_profile())
    printer.hw("INIT")
    slot = 0
    style: tuple[str, bool, bool] | None = None
    for el in layout(model, profile.columns):
        if isinstance(el, TextLine):
            wanted = (el.align, el.bold, el.double)
            if wanted != style:
                printer.set(align=el.align, bold=el.bold, double_width=el.double, double_height=el.double,
                            normal_textsize=not el.double)
                style = wanted
            # Codepage text goes in visual order (printers do not reorder right-to-left text); Arabic script needs
            # its letters joined, which only the image path does.
            encoded = None if needs_shaping(el.text) else encode_line(visual_order(el.text), profile, slot)
            if encoded is None:
                scale = 2 if el.double else 1
                printer.image(text_image(el.text, profile.width_px, align=el.align, scale_w=scale, scale_h=scale,
                                         bold=el.bold), impl="bitImageRaster")
                continue
            if encoded[0] != slot:
                slot = encoded[0]
                printer._raw(CODEPAGE_CHANGE + bytes([slot]))
            printer._raw(encoded[1] + b"\n")
        elif isinstance(el, QrCode):
            printer.set(align="center")
            style = None
            if profile.native_qr:
                printer.qr(el.content, size=6, native=True)
            else:
                printer.qr(el.content, size=6, native=False)
        elif isinstance(el, Feed):
            printer.ln(el.lines)
        elif isinstance(el, CutPaper):
            printer.cut()
            style = None
    return bytes(printer.output)


def render_png(model: ReceiptModel, path: str | Path, profile: Any = None) -> Path:
    """A picture of the paper: the ESC/POS bytes decoded and drawn the way the virtual printer draws them."""
    from drivers.escpos_decode import decode, events_png
    from drivers.printer import load_profile

    profile = profile or load_profile()
    events = decode(render_escpos(model, profile))
    events_png(events, str(path), profile.width_px)
    return Path(path)


# -- builders for the other kinds -------------------------------------------------------------------------
def _settlement_row(row: Mapping[str, Any]) -> SettlementRow:
    """A totals row with the queue's key names (``sale_amount_minor``...) or the short ones (``sale_amount``)."""
    def pick(name: str) -> int:
        value = row.get(f"{name}_minor", row.get(name, 0))
        return int(value or 0)

    net = row.get("net_amount_minor", row.get("net_amount"))
    return SettlementRow(
        scheme=clean_text(row.get("scheme") or "all"), currency=str(row["currency"]),
        sale_count=int(row.get("sale_count") or 0), sale_amount=pick("sale_amount"),
        refund_count=int(row.get("refund_count") or 0), refund_amount=pick("refund_amount"),
        void_count=int(row.get("void_count") or 0), void_amount=pick("void_amount"),
        net_amount=None if net is None else int(net),
    )


MISSING_LISTED = 10  # sequence numbers head office lacks, listed on the settlement report


def _difference_line(diff: Mapping[str, Any]) -> str:
    """Head office's difference for one (type, scheme, currency), as a line a shop reads: counts and amounts on
    both sides, in the currency's units."""
    currency = str(diff.get("currency") or "")

    def money(key: str) -> str:
        value = int(diff.get(key) or 0)
        try:
            return format_amount(value, currency)
        except Exception:  # an unknown currency still prints, in minor units
            return f"{value} {currency}"

    what = " ".join(str(x) for x in (diff.get("type"), (diff.get("scheme") or "").upper(), currency) if x)
    return (f"{what}: terminal {diff.get('terminal_count', 0)} x {money('terminal_amount_minor')}, "
            f"head office {diff.get('hq_count', 0)} x {money('hq_amount_minor')}")


def settlement_model(batch: object, *, merchant: Mapping[str, Any] | Merchant, terminal_id: str,
                     when: str | None = None, tz: tzinfo | None = UTC) -> ReceiptModel:
    """From a closed batch: the queue's ``Batch`` (number, opened_at, closed_at, totals {"by_scheme": [...]},
    hq_status balanced|out_of_balance|pending, hq_detail) or a mapping with the same names."""
    totals = _get(batch, "totals", default={}) or {}
    rows = totals.get("by_scheme") or totals.get("rows") or []
    hq_status = _get(batch, "hq_status", default=None)
    balanced = _get(batch, "balanced", default=None)
    if balanced is None and hq_status in ("balanced", "out_of_balance"):
        balanced = hq_status == "balanced"
    detail = _get(batch, "hq_detail", default=None) or {}
    differences = _get(batch, "differences", default=None) or (
        detail.get("differences") if isinstance(detail, Mapping) else None) or ()
    if isinstance(differences, Mapping):
        differences = [f"{k}: {v}" for k, v in differences.items()]
    differences = [_difference_line(d) if isinstance(d, Mapping) else d for d in differences]
    missing = detail.get("missing_sequences") if isinstance(detail, Mapping) else None
    if missing:
        shown = ", ".join(f"#{int(n):06d}" for n in list(missing)[:MISSING_LISTED])
        more = len(missing) - MISSING_LISTED
        differences.append(f"Not at head office: {shown}" + (f" and {more} more" if more > 0 else ""))
    info = SettlementInfo(
        batch=int(_get(batch, "number", "batch", "batch_number", default=0)),
        rows=tuple(_settlement_row(r) for r in rows),
        opened_at=in_zone(_iso(_get(batch, "opened_at")), tz) if _get(batch, "opened_at") else "",
        closed_at=in_zone(_iso(_get(batch, "closed_at")), tz) if _get(batch, "closed_at") else "",
        balanced=balanced,
        differences=tuple(clean_text(d if isinstance(d, str) else str(d)) for d in differences),
    )
    m = merchant if isinstance(merchant, Merchant) else Merchant.from_dict(merchant)
    return ReceiptModel("settlement", m, clean_text(terminal_id), when or in_zone(_iso(None), tz), settlement=info)


def make_test_page(profile: Any, *, merchant: Mapping[str, Any] | Merchant | None = None, terminal_id: str = "",
                    status_before: str = "", when: str | None = None, tz: tzinfo | None = UTC) -> ReceiptModel:
    info = TestInfo(profile.name, profile.model, profile.columns, profile.width_px, profile.native_qr,
                    tuple(dict.fromkeys(profile.codepages.values())), status_before)
    m = merchant if isinstance(merchant, Merchant) else Merchant.from_dict(merchant or {"name": "smartpos"})
    return ReceiptModel("test", m, clean_text(terminal_id or "-"), when or in_zone(_iso(None), tz), test=info)


# Older name, still used by `smartpos selftest --print` ([daemon]); tests import ``make_test_page`` (pytest would
# collect a ``test_*`` name imported into a test module).
test_page_model = make_test_page

__all__ = [
    "Merchant",
    "ReceiptModel",
    "SettlementInfo",
    "SettlementRow",
    "TestInfo",
    "TxnInfo",
    "encode_line",
    "layout",
    "make_test_page",
    "receipt_for_transaction",
    "render_escpos",
    "render_png",
    "render_text",
    "settlement_model",
    "txn_info_from_record",
    "wrap",
]
