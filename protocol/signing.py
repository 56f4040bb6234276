"""Request signatures between a terminal and head office.

A terminal signs every request with its own Ed25519 key (generated on the terminal at enrollment, never sent).
The signed message binds the method, the exact path (with query), the SHA-256 of the exact body bytes,
a unix timestamp and a random nonce, so a signature cannot be moved to another request, another terminal's path,
another body, or replayed later: head office refuses timestamps outside a window and nonces it has seen.

Headers: ``X-Terminal-Id``, ``X-Timestamp``, ``X-Nonce``, ``X-Signature`` (base64 of the 64-byte signature).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HEADER_TERMINAL = "X-Terminal-Id"
HEADER_TIMESTAMP = "X-Timestamp"
HEADER_NONCE = "X-Nonce"
HEADER_SIGNATURE = "X-Signature"

# Clock skew tolerated between a terminal and head office; nonces must be remembered at least twice this long.
DEFAULT_WINDOW_S = 300
# How far a terminal's clock may be from head office's before a technician must fix it (selftest fails, enroll
# warns): receipts and the offline rules' "time since last contact" read this clock, long before signatures
# (DEFAULT_WINDOW_S) stop working.
CLOCK_TOLERANCE_S = 30
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}\Z")
_DOMAIN = b"smartpos-request-v1"


class SignatureError(Exception):
    """A request whose signature headers are missing, malformed, stale or wrong. ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SignedHeaders:
    terminal_id: str
    timestamp: int
    nonce: str
    signature: bytes


def message(method: str, path: str, body: bytes, timestamp: int, nonce: str) -> bytes:
    """The exact bytes that are signed. Newline-separated fields: none of them may contain a newline."""
    for part in (method, path, nonce):
        if "\n" in part:
            raise SignatureError("bad_request", "method, path and nonce must not contain newlines")
    digest = hashlib.sha256(body).hexdigest()
    return b"\n".join(
        [_DOMAIN, method.upper().encode(), path.encode(), digest.encode(), str(int(timestamp)).encode(), nonce.encode()]
    )


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def sign_request(
    private_key: Ed25519PrivateKey,
    terminal_id: str,
    method: str,
    path: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers to send with the request. ``path`` is the URL path plus ``?query`` exactly as sent."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    nonce = nonce or new_nonce()
    sig = private_key.sign(message(method, path, body, ts, nonce))
    return {
        HEADER_TERMINAL: terminal_id,
        HEADER_TIMESTAMP: str(ts),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: base64.b64encode(sig).decode("ascii"),
    }


def parse_headers(headers: Mapping[str, str]) -> SignedHeaders:
    """Read the four signature headers (case-insensitive mapping) or raise ``SignatureError``."""
    values = {}
    for name in (HEADER_TERMINAL, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE):
        value = headers.get(name) or headers.get(name.lower())
        if not value:
            raise SignatureError("unsigned", f"missing {name} header")
        values[name] = value
    try:
        timestamp = int(values[HEADER_TIMESTAMP])
    except ValueError:
        raise SignatureError("bad_signature", f"{HEADER_TIMESTAMP} must be unix seconds") from None
    nonce = values[HEADER_NONCE]
    if not _NONCE_RE.match(nonce):
        raise SignatureError("bad_signature", f"{HEADER_NONCE} must be 16-64 URL-safe characters")
    try:
        signature = base64.b64decode(values[HEADER_SIGNATURE], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("bad_signature", f"{HEADER_SIGNATURE} is not base64") from None
    if len(signature) != 64:
        raise SignatureError("bad_signature", f"{HEADER_SIGNATURE} must be a 64-byte Ed25519 signature")
    terminal_id = values[HEADER_TERMINAL]
    if len(terminal_id) > 64:
        raise SignatureError("bad_signature", f"{HEADER_TERMINAL} is too long")
    return SignedHeaders(terminal_id, timestamp, nonce, signature)


def verify_request(
    public_key: Ed25519PublicKey,
    signed: SignedHeaders,
    method: str,
    path: str,
    body: bytes,
    *,
    now: float | None = None,
    window_s: int = DEFAULT_WINDOW_S,
) -> None:
    """Raise ``SignatureError`` unless the signature is fresh and valid. Replay (nonce reuse) is the caller's
    check, because only it knows which nonces were seen (head office keeps them in its database)."""
    current = time.time() if now is None else now
    if abs(current - signed.timestamp) > window_s:
        raise SignatureError(
            "stale_signature",
            f"request timestamp is {int(current - signed.timestamp)} s away from head office time "
            f"(allowed {window_s} s); check the terminal clock",
        )
    try:
        public_key.verify(signed.signature, message(method, path, body, signed.timestamp, signed.nonce))
    except InvalidSignature:
        raise SignatureError("bad_signature", "signature does not match this request and terminal") from None


def public_key_to_text(public_key: Ed25519PublicKey) -> str:
    """Base64 of the 32 raw public-key bytes: what enrollment sends and head office stores."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def public_key_from_text(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise SignatureError("bad_public_key", "public key must be base64 of 32 raw Ed25519 bytes") from None
