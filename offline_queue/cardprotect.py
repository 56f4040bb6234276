"""Card-data protection at the point of capture: the only way card data gets into the queue.

From a card read it keeps the masked PAN, the last 4, a keyed token, and a sealed envelope of what head office
needs for clearing. The clear PAN stays in the caller's memory only; ``record()`` accepts nothing but a
``ProtectedCard``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from protocol import envelope as envelope_mod
from protocol.carddata import has_track2, last4, luhn_ok, mask_pan, validate_pan
from protocol.chain import envelope_digest
from protocol.errors import ValidationError
from protocol.tokens import CardTokens, uid_token

PAN_MASKS = ("bin6", "bin8")


@dataclass(frozen=True)
class ProtectedCard:
    scheme: str
    masked_pan: str | None
    pan_last4: str | None
    token: str
    envelope: str | None = field(repr=False)
    envelope_sha256: str | None
    aid: str | None
    label: str | None
    entry_mode: str
    wallet: bool
    atc: int | None = None  # application transaction counter, for the receipt
    tvr: str | None = None  # terminal verification results (hex), for the receipt

    def to_public_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "masked_pan": self.masked_pan,
            "pan_last4": self.pan_last4,
            "entry_mode": self.entry_mode,
            "aid": self.aid,
            "label": self.label,
            "wallet": self.wallet,
        }


class CardProtection:
    """Built once from enrollment material: token key, head office's X25519 public key, mask mode."""

    def __init__(
        self,
        token_key: bytes,
        hq_public_key: X25519PublicKey | bytes,
        *,
        pan_mask: str = "bin6",
        envelope_version: int = 2,
    ) -> None:
        """``envelope_version``: the sealed-envelope format head office opens (``protocol.envelope.newest_opened``
        of what it announced); 1 for a head office of version 0.1."""
        if pan_mask not in PAN_MASKS:
            raise ValidationError("invalid_config", f"pan_mask must be one of {', '.join(PAN_MASKS)}")
        self._card_token = CardTokens(token_key)  # a bad key fails here, not at the first sale
        self._token_key = bytes(token_key)
        try:
            self._sealer = envelope_mod.Sealer(hq_public_key, version=envelope_version)
        except envelope_mod.EnvelopeError as exc:
            raise ValidationError("invalid_config", exc.message) from None
        self._bin8 = pan_mask == "bin8"

    @property
    def envelope_version(self) -> int:
        return self._sealer.version

    def set_envelope_version(self, version: int) -> None:
        """Seal in ``version`` from the next card on (head office announced that it opens it)."""
        self._sealer.set_version(version)

    def __repr__(self) -> str:
        return f"CardProtection(pan_mask={'bin8' if self._bin8 else 'bin6'})"

    @classmethod
    def from_state_dir(
        cls, state_dir: str | Path, *, pan_mask: str = "bin6", hq_envelope_versions: Any = None
    ) -> CardProtection:
        """From what enrollment wrote; the envelope format from ``hq_envelope_versions`` when given (what head office
        last said, kept in the queue), else from what it announced at enrollment."""
        from config.provisioning import load_enrollment

        enrollment = load_enrollment(Path(state_dir))
        if hq_envelope_versions is None:
            hq_envelope_versions = enrollment.envelope_versions
        return cls(
            enrollment.token_key,
            enrollment.hq_public_key,
            pan_mask=pan_mask,
            envelope_version=envelope_mod.newest_opened(hq_envelope_versions),
        )

    def close(self) -> None:
        """Stop the background key preparation (optional: it is a daemon thread)."""
        self._sealer.close()

    def token_for_pan(self, pan: str) -> str:
        return self._card_token(pan)

    def protect(self, card: Any) -> ProtectedCard:
        """``card`` is a ``drivers.cardread.EmvCardRead`` or ``UidCardRead`` (duck-typed on ``kind``)."""
        kind = getattr(card, "kind", None)
        if kind == "emv":
            return self._protect_emv(card)
        if kind == "uid":
            uid = getattr(card, "uid", None)
            token = uid_token(self._token_key, uid)
            return ProtectedCard(
                scheme="uid",
                masked_pan=None,
                pan_last4=uid[-4:].upper(),
                token=token,
                envelope=None,
                envelope_sha256=None,
                aid=None,
                label=None,
                entry_mode=getattr(card, "entry_mode", "card_uid") or "card_uid",
                wallet=False,
            )
        raise ValidationError("invalid_card", f"cannot take a payment from a card read of kind {kind!r}")

    def _protect_emv(self, card: Any) -> ProtectedCard:
        pan = getattr(card, "pan", None)
        try:
            validate_pan(pan)
        except ValidationError:
            raise ValidationError("invalid_card", "the card read has no valid PAN") from None
        aid = getattr(card, "aid", None)
        scheme = getattr(card, "scheme", None)
        atc = getattr(card, "atc", None)
        cryptogram = dict(getattr(card, "cryptogram", None) or {})
        payload = {
            "pan": pan,
            "expiry": getattr(card, "expiry", None),
            "track2": getattr(card, "track2", None),
            "cryptogram": cryptogram,
            "aid": aid,
            "atc": atc,
            "scheme": scheme,
        }
        sealed = self._sealer.seal(payload)
        return ProtectedCard(
            scheme=scheme or "other",
            masked_pan=mask_pan(pan, bin8=self._bin8),
            pan_last4=last4(pan),
            token=self._card_token(pan),
            envelope=sealed,
            envelope_sha256=envelope_digest(sealed),
            aid=aid,
            label=getattr(card, "label", None),
            entry_mode=getattr(card, "entry_mode", None) or "contactless",
            wallet=bool(getattr(card, "wallet", False)),
            atc=_atc(atc),
            tvr=_tvr(cryptogram.get("95")),
        )


def _atc(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF else None


def _tvr(value: Any) -> str | None:
    return value.upper() if isinstance(value, str) and re.fullmatch(r"[0-9A-Fa-f]{10}", value) else None


_SENSITIVE_KEYS = frozenset({"pan", "track2", "track1", "track", "expiry", "cvv", "cvc", "pin", "cryptogram"})


# 13-19 digits, optionally split by single spaces (as PANs are printed). Dashes are not joined on purpose: UUIDs
# and dates are made of dash-separated digit groups and would give false alarms.
_PAN_RUN = re.compile(r"(?<![0-9])[0-9](?: ?[0-9]){12,18}(?![0-9])")


# Necessary for either shape above and for track 2: 12 digits with at most one space or dash between neighbours.
_DIGIT_RUN12 = re.compile(r"[0-9](?:[ -]?[0-9]){11}")


def _pan_shaped(text: str) -> bool:
    for match in _PAN_RUN.finditer(text):
        digits = match.group(0).replace(" ", "")
        if luhn_ok(digits):
            return True
    return False


def looks_like_card_data(value: Any) -> bool:
    """True when a JSON-like value holds a sensitive key (``pan``, ``track2``, ...) at any depth, a string that is
    a whole Luhn-valid 13-19 digit number, or track-2-shaped text. Used to refuse such data in stored payloads,
    references and payment records (receipts carry the last 4 only)."""
    if isinstance(value, str):
        if not _DIGIT_RUN12.search(value):
            return False  # neither a PAN (13+ digits) nor track 2 (12+ digits) fits: skip the costlier scans
        # Same answer as looking for "[REDACTED-TRACK]" in redact(value), without building the redacted copy.
        return _pan_shaped(value) or has_track2(value) or "[REDACTED-TRACK]" in value
    if isinstance(value, dict):
        return any(
            (isinstance(k, str) and k.lower() in _SENSITIVE_KEYS and v not in (None, "", {}, []))
            or looks_like_card_data(k)
            or looks_like_card_data(v)
            for k, v in value.items()
        )
    if isinstance(value, list | tuple):
        return any(looks_like_card_data(v) for v in value)
    return False
