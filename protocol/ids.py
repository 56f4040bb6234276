"""Identifiers made on the terminal.

Transaction ids are UUIDv7 (RFC 9562, section 5.7): 48 bits of Unix time in milliseconds, then 74 random bits.
They are as unique as UUIDv4 for our purposes (at most a few sales per millisecond per terminal, 74 random bits
each), and they sort by creation time, so a new id lands at the right-hand end of an index on them instead of on a
random page: one page touched per sale, and the same page from one sale to the next, rather than a random page of
an index that outgrows the page cache.
"""

from __future__ import annotations

import os
import time

_TS_MASK = (1 << 48) - 1
_VERSION_CLEAR = ~(0xF << 76)
_VARIANT_CLEAR = ~(0x3 << 62)
_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0x2 << 62


def uuid7(unix_ns: int | None = None) -> str:
    """A UUIDv7 in the canonical 8-4-4-4-12 lower-case form."""
    ms = (time.time_ns() if unix_ns is None else unix_ns) // 1_000_000
    value = (ms & _TS_MASK) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & _VERSION_CLEAR & _VARIANT_CLEAR) | _VERSION_7 | _VARIANT_RFC
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
