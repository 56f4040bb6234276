"""Typed results of a card read: EMV payment card/phone, UID-only card, NFC Forum NDEF tag.

Each result says which reader saw it and when (``time.monotonic()``), and has ``to_public_dict()``: the JSON-safe
view for displays, APIs and logs. Secrets (PAN, expiry, track 2) are ``repr=False`` and never in the public view;
they live in memory only until the queue seals them for head office.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMES = ("visa", "mastercard", "amex", "discover", "jcb", "unionpay", "other")

# ``wait_for_card``'s ``on_detected``: called with the reader's name when a card is sensed and its read begins.
OnDetected = Callable[[str], None]


def notify_detected(on_detected: OnDetected | None, reader: str) -> None:
    """Call ``on_detected`` from a reader's thread; what it raises is logged, never let into the read."""
    if on_detected is None:
        return
    try:
        on_detected(reader)
    except Exception:
        logging.getLogger(__name__).exception("on_detected callback failed")


class _RenderedOnRead:
    """A str attribute that may be given as a zero-argument callable and is rendered on first read.

    The diagnostic TLV dump is rarely looked at but costs about a fifth of a whole read's CPU time to render and
    redact, so the EMV flow hands over a renderer instead of the text. Readers of the attribute always get a str.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: object, objtype: type | None = None) -> str:
        if obj is None:
            return ""  # the dataclass default
        value = obj.__dict__[self.slot]
        if callable(value):
            value = value()
            obj.__dict__[self.slot] = value
        return value

    def __set__(self, obj: object, value: str | Callable[[], str]) -> None:
        # Left out of the constructor, dataclasses passes the default (this descriptor itself): the empty text.
        obj.__dict__[self.slot] = "" if isinstance(value, _RenderedOnRead) else value


@dataclass(frozen=True)
class EmvCardRead:
    reader: str
    detected_at: float
    read_at: float
    scheme: str
    masked_pan: str
    pan_last4: str
    aid: str
    label: str
    preferred_name: str | None
    track2_present: bool
    atc: int | None
    cryptogram: dict[str, str]
    wallet: bool
    redacted_tlv: str = field(default=_RenderedOnRead(), repr=False, compare=False)  # type: ignore[assignment]
    pan: str = field(repr=False, default="")
    expiry: str = field(repr=False, default="")  # YYMM
    track2: str | None = field(repr=False, default=None)
    entry_mode: str = "contactless"
    kind: Literal["emv"] = "emv"

    def to_public_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reader": self.reader,
            "scheme": self.scheme,
            "masked_pan": self.masked_pan,
            "pan_last4": self.pan_last4,
            "aid": self.aid,
            "label": self.label,
            "preferred_name": self.preferred_name,
            "track2_present": self.track2_present,
            "atc": self.atc,
            "wallet": self.wallet,
            "entry_mode": self.entry_mode,
            "read_ms": round((self.read_at - self.detected_at) * 1000, 3),
        }


@dataclass(frozen=True)
class UidCardRead:
    reader: str
    detected_at: float
    read_at: float
    uid: str  # hex upper
    atr: str | None = None
    entry_mode: str = "card_uid"
    kind: Literal["uid"] = "uid"
    technology: str | None = None  # nfcpy's bit rate and type ("106A", "106B", "212F"); None: not known (PC/SC)

    @property
    def random_uid(self) -> bool:
        """A Type A single-size UID whose first byte is 08 is drawn anew at every activation (ISO/IEC 14443-3,
        6.4.4): phones and many bank cards show one. It names no card: the next tap of the same card shows another.
        (A Type B PUPI follows no such rule; from PC/SC the type is not known and Type A, the common case, is
        assumed.)"""
        return self.technology in (None, "106A") and len(self.uid) == 8 and self.uid[:2] == "08"

    def to_public_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reader": self.reader,
            "uid": self.uid,
            "random_uid": self.random_uid,
            "atr": self.atr,
            "entry_mode": self.entry_mode,
            "read_ms": round((self.read_at - self.detected_at) * 1000, 3),
        }


@dataclass(frozen=True)
class NdefRecord:
    type: Literal["text", "uri", "mime", "other"]
    value: str
    lang: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "value": self.value, "lang": self.lang}


@dataclass(frozen=True)
class NdefRead:
    reader: str
    detected_at: float
    read_at: float
    tag_type: str
    uid: str
    records: list[NdefRecord]
    entry_mode: str = "nfc_tag"
    kind: Literal["ndef"] = "ndef"

    def to_public_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reader": self.reader,
            "tag_type": self.tag_type,
            "uid": self.uid,
            "records": [r.to_dict() for r in self.records],
            "entry_mode": self.entry_mode,
            "read_ms": round((self.read_at - self.detected_at) * 1000, 3),
        }


CardRead = EmvCardRead | UidCardRead | NdefRead
