"""Checks on card fields arriving from terminals, so a clear PAN can never land in a head-office column."""

from __future__ import annotations

import hmac
import re
from typing import Any

from headoffice.keystore import Keystore
from protocol.envelope import EnvelopeError
from protocol.errors import ValidationError

_MASKED = re.compile(r"^[0-9]{0,8}\*{3,15}[0-9]{0,4}\Z")


def is_masked(value: str) -> bool:
    """``492500******0018`` style: at most 8 leading and 4 trailing digits, at least 3 hidden, 12-19 long."""
    return 12 <= len(value) <= 19 and bool(_MASKED.match(value))


def open_card(keystore: Keystore, sealed: str) -> dict[str, Any] | None:
    """The clearing data in a terminal's envelope, or None if it does not open with head office's key."""
    try:
        return keystore.open_envelope(sealed)
    except EnvelopeError:
        return None


def card_matches(keystore: Keystore, card: dict[str, Any], *, token: str | None, masked_pan: str | None,
                 pan_last4: str | None) -> bool:
    """The envelope's PAN is the card the transaction's token, masked PAN and last 4 describe (a terminal cannot
    attach one card's data to another card's transaction without head office noticing)."""
    pan = card.get("pan")
    if not isinstance(pan, str) or token is None:
        return False
    try:
        expected = keystore.card_token(pan)  # validates the PAN too
    except ValidationError:
        return False
    if not hmac.compare_digest(expected, token):
        return False
    if pan_last4 is not None and pan_last4 != pan[-4:]:
        return False
    if masked_pan is not None:
        if len(masked_pan) != len(pan) or masked_pan[-4:] != pan[-4:]:
            return False
        head = masked_pan.split("*", 1)[0]
        if not pan.startswith(head):
            return False
    return True
