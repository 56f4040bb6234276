"""Strict BER-TLV (ISO 7816-4 / EMV Book 3 annex B) for bytes that come from untrusted cards.

Any input either parses or raises ``CardDataError``; nothing else escapes and nothing loops: every step
consumes at least one byte, nesting is capped (``MAX_DEPTH``) and so is the number of objects (``MAX_OBJECTS``).
Rejected: truncated tags/lengths/values, indefinite length (``80``), lengths of more than 3 bytes, tags of more
than 3 bytes, trailing bytes that are not a complete object. ``00`` bytes between objects are skipped, as
EMV Book 3 allows.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from drivers.errors import CardDataError

MAX_DEPTH = 8
MAX_OBJECTS = 2048
MAX_INPUT = 65536


class Tlv(NamedTuple):
    # A NamedTuple rather than a frozen dataclass: parsing creates dozens per read, and tuples are ~5x cheaper.
    tag: int
    value: bytes
    children: tuple[Tlv, ...] | None = None  # set for constructed tags

    @property
    def constructed(self) -> bool:
        return self.children is not None

    @property
    def tag_hex(self) -> str:
        return tag_hex(self.tag)


@functools.cache
def tag_hex(tag: int) -> str:
    width = max(1, (tag.bit_length() + 7) // 8)
    return tag.to_bytes(width, "big").hex().upper()


def _is_constructed(tag: int) -> bool:
    first = tag
    while first > 0xFF:
        first >>= 8
    return bool(first & 0x20)


def _read_tag(data: bytes, pos: int, end: int) -> tuple[int, int]:
    first = data[pos]
    pos += 1
    tag = first
    if first & 0x1F == 0x1F:
        count = 0
        while True:
            if pos >= end:
                raise CardDataError("TLV tag truncated")
            b = data[pos]
            if count == 0 and b == 0x80:
                raise CardDataError("TLV tag has a non-minimal encoding")
            pos += 1
            count += 1
            tag = (tag << 8) | b
            if not b & 0x80:
                break
            if count >= 2:
                raise CardDataError("TLV tag longer than 3 bytes")
    return tag, pos


def _read_length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise CardDataError("TLV length missing")
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    count = first & 0x7F
    if count == 0:
        raise CardDataError("TLV indefinite length is not allowed")
    if count > 3:
        raise CardDataError("TLV length field too long")
    if pos + count > end:
        raise CardDataError("TLV length truncated")
    length = int.from_bytes(data[pos : pos + count], "big")
    return length, pos + count


class _Budget:
    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_OBJECTS

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise CardDataError("too many TLV objects")


def _parse(data: bytes, pos: int, end: int, depth: int, budget: _Budget) -> tuple[Tlv, ...]:
    if depth > MAX_DEPTH:
        raise CardDataError("TLV nested too deeply")
    out: list[Tlv] = []
    while pos < end:
        if data[pos] == 0x00:  # padding between objects
            pos += 1
            continue
        budget.take()
        tag, pos = _read_tag(data, pos, end)
        length, pos = _read_length(data, pos, end)
        if length > end - pos:
            raise CardDataError("TLV value runs past the end of its container")
        value = data[pos : pos + length]
        children = _parse(data, pos, pos + length, depth + 1, budget) if _is_constructed(tag) else None
        out.append(Tlv(tag, value, children))
        pos += length
    return tuple(out)


def parse(data: bytes) -> list[Tlv]:
    """Parse a whole buffer of BER-TLV objects; every byte must belong to an object (or be ``00`` padding)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CardDataError("TLV input is not bytes")
    buf = bytes(data)
    if len(buf) > MAX_INPUT:
        raise CardDataError("TLV input too large")
    return list(_parse(buf, 0, len(buf), 1, _Budget()))


def walk(nodes: Iterable[Tlv]) -> Iterator[Tlv]:
    """Every object, depth first, in card order."""
    for node in nodes:
        yield node
        if node.children is not None:
            yield from walk(node.children)


def find(nodes: Iterable[Tlv], tag: int) -> Tlv | None:
    for node in walk(nodes):
        if node.tag == tag:
            return node
    return None


def find_all(nodes: Iterable[Tlv], tag: int) -> list[Tlv]:
    return [node for node in walk(nodes) if node.tag == tag]


def primitives(nodes: Iterable[Tlv]) -> dict[int, bytes]:
    """Primitive objects by tag; the first occurrence wins (a card repeating a tag cannot override it)."""
    out: dict[int, bytes] = {}
    for node in walk(nodes):
        if node.children is None and node.tag not in out:
            out[node.tag] = node.value
    return out


def parse_dol(data: bytes) -> list[tuple[int, int]]:
    """Parse a Data Object List (PDOL, CDOL): tag + length pairs, no values. The length is one byte (EMV Book 3,
    5.4), never BER: 0x81 asks for 129 bytes, it does not announce a length byte to follow."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CardDataError("DOL input is not bytes")
    buf = bytes(data)
    if len(buf) > 252:
        raise CardDataError("DOL too long")
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _read_tag(buf, pos, len(buf))
        if pos >= len(buf):
            raise CardDataError("DOL entry without its length")
        length = buf[pos]
        pos += 1
        if length > 252:
            raise CardDataError("DOL entry length too large")
        out.append((tag, length))
    return out


def encode_length(length: int) -> bytes:
    if length < 0 or length > 0xFFFFFF:
        raise ValueError("TLV length out of range")
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def encode(tag: int, value: bytes) -> bytes:
    """One TLV object. ``tag`` as an int, e.g. ``0x9F38``."""
    width = max(1, (tag.bit_length() + 7) // 8)
    return tag.to_bytes(width, "big") + encode_length(len(value)) + bytes(value)


def encode_many(items: Iterable[tuple[int, bytes]]) -> bytes:
    return b"".join(encode(tag, value) for tag, value in items)


def dump(
    nodes: Sequence[Tlv],
    *,
    redact_tags: frozenset[int] = frozenset(),
    text_tags: frozenset[int] = frozenset(),
    indent: int = 0,
) -> str:
    """Indented one-object-per-line dump; values of ``redact_tags`` are replaced by their length, printable
    values of ``text_tags`` are shown as text."""
    lines: list[str] = []
    for node in nodes:
        pad = "  " * indent
        if node.children is not None:
            lines.append(f"{pad}{node.tag_hex} ({len(node.value)})")
            inner = dump(node.children, redact_tags=redact_tags, text_tags=text_tags, indent=indent + 1)
            if inner:
                lines.append(inner)
        elif node.tag in redact_tags:
            lines.append(f"{pad}{node.tag_hex} ({len(node.value)}) [REDACTED]")
        elif node.tag in text_tags and all(0x20 <= b < 0x7F for b in node.value):
            lines.append(f"{pad}{node.tag_hex} ({len(node.value)}) {node.value.decode('ascii')!r}")
        else:
            lines.append(f"{pad}{node.tag_hex} ({len(node.value)}) {node.value.hex().upper()}")
    return "\n".join(lines)
