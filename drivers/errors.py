"""Typed card-reading errors.

Every failure of a card read surfaces as a ``CardError`` subclass with a machine-readable ``code``.
Messages are written here, never built from card bytes, so they cannot leak card data.
"""

from __future__ import annotations


class CardError(Exception):
    """Base of all card-read failures. ``code`` is machine readable; the message never holds card data."""

    code: str = "card_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class CardDataError(CardError):
    """The card answered bytes that do not parse (malformed TLV, wrong lengths, missing mandatory data)."""

    code = "card_data"


class CardRemovedError(CardError):
    """The card left the field (or the simulated card dropped its connection) during the read."""

    code = "card_removed"


class ReaderUnavailableError(CardError):
    """The reader (or pcscd / the nfcpy device) went away or cannot be used."""

    code = "reader_unavailable"


# How long one wait tolerates its reader stack being away before it raises ReaderUnavailableError (both stacks):
# a pcscd restart or a device reopen passes unreported; a wait shorter than this ends as a plain ReadTimeout.
UNAVAILABLE_GRACE_S = 1.0
# A wait whose time runs out while a card is being read lets that read finish, for up to this long: cut off, the
# same tap was read again from the start by the next wait (a second GPO and cryptogram).
READ_GRACE_S = 10.0


class CardStatusError(CardError):
    """The card answered an error status word."""

    code = "card_status"

    def __init__(self, message: str, *, sw: int, code: str | None = None) -> None:
        super().__init__(f"{message} (SW {sw:04X})", code=code)
        self.sw = sw


class NoApplicationError(CardError):
    """No supported payment application on the card (and it is not a UID-only card)."""

    code = "no_application"


class ReadTimeout(CardError):
    """No card before the timeout (code ``timeout``) or the wait was cancelled (code ``cancelled``)."""

    code = "timeout"
