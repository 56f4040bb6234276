"""Card-data rules (PCI DSS v4 3.3-3.5 as product.md applies them): masking and log redaction.

Display: at most the first 6 (or BIN 8 when configured) and the last 4 digits. Receipts: last 4 only.
"""

from __future__ import annotations

import re

from protocol.errors import ValidationError

_PAN_RE = re.compile(r"^[0-9]{12,19}\Z")
# Runs of 12-19 digits, optionally split by single spaces or dashes, as people and logs write PANs.
_PAN_LIKE = re.compile(r"(?<![0-9])(?:[0-9][ -]?){11,18}[0-9](?![0-9])")
# Track-2 equivalent data: PAN, separator D or =, then expiry and service code.
_TRACK2_LIKE = re.compile(r"(?<![0-9A-Fa-f])[0-9]{12,19}[=Dd][0-9]{4,}[0-9A-Fa-f]*")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def validate_pan(pan: str) -> str:
    if not isinstance(pan, str) or not _PAN_RE.match(pan):
        raise ValidationError("invalid_pan", "PAN must be 12 to 19 digits")
    return pan


def mask_pan(pan: str, *, bin8: bool = False) -> str:
    """First 6 (or BIN 8 for PANs of 16+ digits) and last 4 digits, the rest as ``*``.
    Short PANs show fewer leading digits so that at least 3 digits stay hidden."""
    validate_pan(pan)
    head = 8 if bin8 and len(pan) >= 16 else 6
    head = min(head, len(pan) - 4 - 3)
    return pan[:head] + "*" * (len(pan) - head - 4) + pan[-4:]


def last4(pan: str) -> str:
    validate_pan(pan)
    return pan[-4:]


def has_track2(text: str) -> bool:
    """True when ``text`` holds something shaped like track-2 equivalent data (PAN, separator, expiry...)."""
    return bool(_TRACK2_LIKE.search(text))


def redact_line(text: str, limit: int) -> str:
    """``redact(text)`` as one printable line (control characters and runs of blanks become one space) of at most
    ``limit`` characters: how a message from outside (a printer driver, head office) is stored and shown."""
    printable = "".join(ch if ch.isprintable() else " " for ch in redact(text))
    return " ".join(printable.split())[:limit]


def redact(text: str) -> str:
    """Replace anything in ``text`` that looks like track data or a PAN (Luhn-valid digit run) with a mask.

    Used by the log formatter and error paths, so it is deliberately greedy for track-2 shapes."""
    text = _TRACK2_LIKE.sub("[REDACTED-TRACK]", text)

    def _mask(match: re.Match[str]) -> str:
        digits = re.sub(r"[ -]", "", match.group(0))
        if 12 <= len(digits) <= 19 and luhn_ok(digits):
            return mask_pan(digits)
        return match.group(0)

    return _PAN_LIKE.sub(_mask, text)
