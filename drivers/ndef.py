"""NDEF messages <-> the typed ``NdefRecord`` list of a tag read (member numbers, coupons, links).

Decoding and encoding are ndeflib's (the library nfcpy itself uses); this module only maps its record classes to
the four kinds a front end handles: ``text``, ``uri``, ``mime`` and ``other``. Tag bytes are untrusted: anything
ndeflib refuses in strict mode becomes ``CardDataError``, never another exception type.
"""

from __future__ import annotations

from collections.abc import Sequence

import ndef

from drivers.cardread import NdefRecord
from drivers.errors import CardDataError

# A tag holds at most a few kB; a bigger "message" is a broken or hostile tag, not a coupon.
MAX_MESSAGE_OCTETS = 32 * 1024

# MIME payloads shown as text when they decode as UTF-8; anything else is summarised, not dumped.
_TEXT_MIME_PREFIXES = ("text/", "application/json", "application/xml")


def decode_records(octets: bytes) -> list[NdefRecord]:
    """Typed records of one NDEF message. An empty message (a formatted, blank tag) gives ``[]``."""
    if not octets:
        return []
    if len(octets) > MAX_MESSAGE_OCTETS:
        raise CardDataError("NDEF message larger than any tag holds")
    try:
        records = list(ndef.message_decoder(bytes(octets), errors="strict"))
    except ndef.DecodeError as exc:
        raise CardDataError("malformed NDEF message on the tag") from exc
    except Exception as exc:  # ndeflib parsing odd bytes must not escape as a random exception type
        raise CardDataError("unreadable NDEF message on the tag") from exc
    return [_typed(record) for record in records]


def _typed(record: ndef.Record) -> NdefRecord:
    if isinstance(record, ndef.TextRecord):
        return NdefRecord("text", record.text, record.language or None)
    if isinstance(record, ndef.UriRecord):
        return NdefRecord("uri", record.iri)
    if isinstance(record, ndef.SmartposterRecord) and record.resource is not None:
        # A smart poster is a link with a title: the link is what a coupon/member tag carries.
        return NdefRecord("uri", record.resource.iri)
    rtype = record.type or ""
    if "/" in rtype and not rtype.startswith("urn:"):
        data = bytes(record.data or b"")
        if rtype.startswith(_TEXT_MIME_PREFIXES):
            try:
                return NdefRecord("mime", f"{rtype}: {data.decode('utf-8')}")
            except UnicodeDecodeError:
                pass
        return NdefRecord("mime", f"{rtype}: {len(data)} bytes")
    return NdefRecord("other", rtype or "empty")


def encode_records(records: Sequence[NdefRecord]) -> bytes:
    """One NDEF message for ``records`` (text and URI; a ``mime`` value is ``"type: text"``). For simulators."""
    out: list[ndef.Record] = []
    for rec in records:
        if rec.type == "text":
            out.append(ndef.TextRecord(rec.value, rec.lang or "en"))
        elif rec.type == "uri":
            out.append(ndef.UriRecord(rec.value))
        elif rec.type == "mime":
            mime, _, text = rec.value.partition(": ")
            out.append(ndef.Record(mime, "", text.encode("utf-8")))
        else:
            raise ValueError(f"cannot encode an NDEF record of type {rec.type!r}")
    if not out:
        return b""
    try:
        return b"".join(ndef.message_encoder(out))
    except ndef.EncodeError as exc:
        raise ValueError(f"cannot encode NDEF records: {exc}") from exc
