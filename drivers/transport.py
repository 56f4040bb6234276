"""The narrow boundary between card stacks and the shared card logic.

A transport sends one command APDU and returns the response data and status word. PC/SC (``drivers/pcsc.py``),
nfcpy (``drivers/nfc_reader.py``) and the in-process simulator all implement it; TLV parsing and the EMV flow
never know which one they run on.

``exchange`` adds the ISO 7816-4 transport rules every stack needs once: ``61xx`` (fetch the rest with GET
RESPONSE) and ``6Cxx`` (re-send with the length the card asked for). T=0 cards use both; T=1 cards usually
answer directly, and the loop is then a no-op.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from drivers.errors import CardDataError


class RApdu(NamedTuple):
    data: bytes
    sw: int  # SW1 << 8 | SW2

    @property
    def ok(self) -> bool:
        return self.sw == 0x9000


class ApduTransport(Protocol):
    def transmit(self, apdu: bytes) -> RApdu:
        """Send one command APDU. Raises ``CardRemovedError`` / ``ReaderUnavailableError``."""
        ...


def split_response(raw: bytes) -> RApdu:
    """Split a raw response (data + SW1 SW2) as stacks deliver it. Fewer than 2 bytes is a malformed answer."""
    if len(raw) < 2:
        raise CardDataError("card answered fewer than 2 bytes (no status word)")
    return RApdu(bytes(raw[:-2]), (raw[-2] << 8) | raw[-1])


# A card that keeps answering 61xx forever must not hang the read: 256 * 64 bytes is far above any EMV response.
_MAX_CHAINED = 64


def exchange(transport: ApduTransport, apdu: bytes) -> RApdu:
    """Transmit ``apdu`` and resolve ``61xx`` / ``6Cxx`` so the caller sees the final data and status word."""
    resp = transport.transmit(apdu)
    if resp.sw >> 8 == 0x6C:
        # Wrong Le: re-send the same command with Le set to what the card announced.
        resent = _with_le(apdu, resp.sw & 0xFF)
        resp = transport.transmit(resent)
        if resp.sw >> 8 == 0x6C:
            raise CardDataError("card asked twice for a different response length")
    data = bytearray(resp.data)
    chained = 0
    while resp.sw >> 8 == 0x61:
        chained += 1
        if chained > _MAX_CHAINED:
            raise CardDataError("card response chaining (61xx) did not end")
        resp = transport.transmit(bytes([apdu[0] & 0x03, 0xC0, 0x00, 0x00, resp.sw & 0xFF]))
        data += resp.data
    return RApdu(bytes(data), resp.sw)


def _with_le(apdu: bytes, le: int) -> bytes:
    """Same command with Le replaced (short APDUs only, which is all EMV contactless uses)."""
    if len(apdu) < 4:
        raise CardDataError("command too short to re-send")
    if len(apdu) == 4:  # case 1 -> case 2
        return apdu + bytes([le])
    if len(apdu) == 5:  # case 2: replace Le
        return apdu[:4] + bytes([le])
    lc = apdu[4]
    if len(apdu) == 5 + lc:  # case 3 -> case 4
        return apdu + bytes([le])
    return apdu[: 5 + lc] + bytes([le])  # case 4: replace Le
