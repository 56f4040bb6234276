"""Sealed envelopes: card data only head office can open.

Hybrid encryption to head office's X25519 public key: a fresh ephemeral key per envelope, ECDH, HKDF-SHA256 and
AES-256-GCM. The terminal keeps no private key for it, so a stolen terminal cannot open its own queue.

Format: ``"v1." + base64url(ephemeral public key (32) | nonce (12) | ciphertext+tag)`` without padding.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "v1."
_INFO = b"smartpos-envelope-v1"
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw
# Envelopes carry one card's clearing data: anything much larger is not an envelope of ours.
MAX_SEALED_CHARS = 16384


class EnvelopeError(ValueError):
    """A key or envelope that cannot be used. The message never contains the plaintext."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def generate_keypair() -> tuple[X25519PrivateKey, X25519PublicKey]:
    private = X25519PrivateKey.generate()
    return private, private.public_key()


def load_public_key(data: bytes | X25519PublicKey) -> X25519PublicKey:
    """PEM (SubjectPublicKeyInfo) or the raw 32 bytes."""
    if isinstance(data, X25519PublicKey):
        return data
    try:
        if len(data) == 32:
            return X25519PublicKey.from_public_bytes(bytes(data))
        key = serialization.load_pem_public_key(bytes(data))
    except (ValueError, TypeError) as exc:
        raise EnvelopeError("bad_key", f"not an X25519 public key: {exc}") from None
    if not isinstance(key, X25519PublicKey):
        raise EnvelopeError("bad_key", "the public key is not an X25519 key")
    return key


def load_private_key(data: bytes | X25519PrivateKey) -> X25519PrivateKey:
    """PEM (PKCS#8, unencrypted) or the raw 32 bytes."""
    if isinstance(data, X25519PrivateKey):
        return data
    try:
        if len(data) == 32:
            return X25519PrivateKey.from_private_bytes(bytes(data))
        key = serialization.load_pem_private_key(bytes(data), password=None)
    except (ValueError, TypeError) as exc:
        raise EnvelopeError("bad_key", f"not an X25519 private key: {type(exc).__name__}") from None
    if not isinstance(key, X25519PrivateKey):
        raise EnvelopeError("bad_key", "the private key is not an X25519 key")
    return key


def public_key_pem(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def private_key_pem(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=_INFO).derive(shared)


def seal(public_key: X25519PublicKey | bytes, payload: dict[str, Any]) -> str:
    """Encrypt ``payload`` (JSON-able dict) so that only the holder of the matching private key can read it."""
    if not isinstance(payload, dict):
        raise EnvelopeError("bad_envelope", "the sealed payload must be a dict")
    recipient = load_public_key(public_key)
    recipient_raw = recipient.public_bytes(*_RAW)
    ephemeral = X25519PrivateKey.generate()
    eph_raw = ephemeral.public_key().public_bytes(*_RAW)
    key = _key(ephemeral.exchange(recipient), eph_raw, recipient_raw)
    nonce = os.urandom(12)
    # The prefix is authenticated so an envelope cannot be relabelled as another format version.
    ciphertext = AESGCM(key).encrypt(nonce, orjson.dumps(payload), PREFIX.encode())
    return PREFIX + base64.urlsafe_b64encode(eph_raw + nonce + ciphertext).rstrip(b"=").decode("ascii")


def open_sealed(private_key: X25519PrivateKey | bytes, sealed: str) -> dict[str, Any]:
    """Decrypt an envelope made by :func:`seal`. Raises ``EnvelopeError`` if it is malformed, was tampered with,
    or was sealed to another key."""
    private = load_private_key(private_key)
    if not isinstance(sealed, str) or not sealed.startswith(PREFIX) or len(sealed) > MAX_SEALED_CHARS:
        raise EnvelopeError("bad_envelope", "not a v1 sealed envelope")
    body = sealed[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise EnvelopeError("bad_envelope", "envelope is not base64url") from None
    if len(raw) < 32 + 12 + 16:
        raise EnvelopeError("bad_envelope", "envelope is too short")
    eph_raw, nonce, ciphertext = raw[:32], raw[32:44], raw[44:]
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(eph_raw))
    except ValueError:
        raise EnvelopeError("bad_envelope", "envelope carries an invalid ephemeral key") from None
    key = _key(shared, eph_raw, private.public_key().public_bytes(*_RAW))
    try:
        plaintext = AESGCM(key).decrypt(nonce, ciphertext, PREFIX.encode())
    except InvalidTag:
        raise EnvelopeError("bad_envelope", "envelope does not open with this key or was altered") from None
    try:
        payload = orjson.loads(plaintext)
    except orjson.JSONDecodeError:
        raise EnvelopeError("bad_envelope", "envelope content is not JSON") from None
    if not isinstance(payload, dict):
        raise EnvelopeError("bad_envelope", "envelope content is not an object")
    return payload
