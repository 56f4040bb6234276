"""Sealed envelopes: card data only head office can open.

Hybrid encryption to head office's X25519 public key: a fresh ephemeral key per envelope, ECDH, HKDF-SHA256 and
AES-256-GCM. The terminal keeps no private key for it, so a stolen terminal cannot open its own queue.

Format: ``"v1." + base64url(ephemeral public key (32) | nonce (12) | ciphertext+tag)`` without padding.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
import time
from collections import OrderedDict, deque
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


def _ephemeral(recipient: X25519PublicKey, recipient_raw: bytes) -> tuple[bytes, AESGCM]:
    ephemeral = X25519PrivateKey.generate()
    eph_raw = ephemeral.public_key().public_bytes(*_RAW)
    return eph_raw, AESGCM(_key(ephemeral.exchange(recipient), eph_raw, recipient_raw))


def _finish(eph_raw: bytes, aead: AESGCM, payload: dict[str, Any]) -> str:
    if not isinstance(payload, dict):
        raise EnvelopeError("bad_envelope", "the sealed payload must be a dict")
    nonce = os.urandom(12)
    # The prefix is authenticated so an envelope cannot be relabelled as another format version.
    ciphertext = aead.encrypt(nonce, orjson.dumps(payload), PREFIX.encode())
    return PREFIX + base64.urlsafe_b64encode(eph_raw + nonce + ciphertext).rstrip(b"=").decode("ascii")


def seal(public_key: X25519PublicKey | bytes, payload: dict[str, Any]) -> str:
    """Encrypt ``payload`` (JSON-able dict) so that only the holder of the matching private key can read it."""
    if not isinstance(payload, dict):
        raise EnvelopeError("bad_envelope", "the sealed payload must be a dict")
    recipient = load_public_key(public_key)
    return _finish(*_ephemeral(recipient, recipient.public_bytes(*_RAW)), payload)


class Sealer:
    """Seals to one recipient, with the expensive part (a fresh ephemeral key and its ECDH + HKDF, ~0.1 ms) done
    ahead of time by a background thread, so sealing at the counter costs only AES-GCM.

    An ephemeral key seals at most ``uses_per_key`` envelopes (default 64) within ``max_key_age_s`` (default 60 s),
    each with its own random 96-bit nonce, and is then dropped. Why not one key per envelope: head office pays an
    X25519 agreement (~50 us) per distinct ephemeral key, which was the largest per-transaction cost of ingestion;
    with reuse it pays it once per key (``Opener`` caches the derived key). What this gives up: someone who reads
    this process's memory while a key is current can open the (at most 64, at most 60 s old) envelopes sealed with
    it, which is the same window in which those cards' PANs passed through this memory anyway. Keys live only in
    memory; nothing of them is written to disk, and a forked child discards its parent's.
    Output has the format of :func:`seal`.
    """

    def __init__(
        self,
        public_key: X25519PublicKey | bytes,
        *,
        reserve: int = 8,
        uses_per_key: int = 64,
        max_key_age_s: float = 60.0,
    ) -> None:
        self._recipient = load_public_key(public_key)
        self._recipient_raw = self._recipient.public_bytes(*_RAW)
        self._reserve = max(1, reserve)
        self._uses_per_key = max(1, uses_per_key)
        self._max_key_age_s = max_key_age_s
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        # deque append/popleft are atomic: no lock that a fork could leave held.
        self._ready: deque[tuple[bytes, AESGCM]] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._current: tuple[bytes, AESGCM] | None = None
        self._current_uses = 0
        self._current_since = 0.0

    def _run(self, ready: deque[tuple[bytes, AESGCM]], wake: threading.Event) -> None:
        while not self._closed and ready is self._ready:
            while len(ready) < self._reserve and not self._closed:
                ready.append(_ephemeral(self._recipient, self._recipient_raw))
                # Hand the GIL back after every key: a sale waiting on it should wait one key (~0.1 ms), not a
                # whole refill or a 5 ms switch interval.
                time.sleep(0)
            wake.wait(1.0)
            wake.clear()

    def seal(self, payload: dict[str, Any]) -> str:
        if self._pid != os.getpid():
            self._reset()
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._run, args=(self._ready, self._wake), name="envelope-keys", daemon=True
            )
            self._thread.start()
        now = time.monotonic()
        if (
            self._current is None
            or self._current_uses >= self._uses_per_key
            or now - self._current_since > self._max_key_age_s
        ):
            try:
                self._current = self._ready.popleft()
            except IndexError:
                self._current = _ephemeral(self._recipient, self._recipient_raw)
            self._current_uses = 0
            self._current_since = now
            if len(self._ready) <= self._reserve // 2:
                self._wake.set()
        self._current_uses += 1
        return _finish(*self._current, payload)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._ready.clear()
        self._current = None


def _split(sealed: str) -> tuple[bytes, bytes, bytes]:
    if not isinstance(sealed, str) or not sealed.startswith(PREFIX) or len(sealed) > MAX_SEALED_CHARS:
        raise EnvelopeError("bad_envelope", "not a v1 sealed envelope")
    body = sealed[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise EnvelopeError("bad_envelope", "envelope is not base64url") from None
    if len(raw) < 32 + 12 + 16:
        raise EnvelopeError("bad_envelope", "envelope is too short")
    return raw[:32], raw[32:44], raw[44:]


def _derive(private: X25519PrivateKey, recipient_raw: bytes, eph_raw: bytes) -> AESGCM:
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(eph_raw))
    except ValueError:
        raise EnvelopeError("bad_envelope", "envelope carries an invalid ephemeral key") from None
    return AESGCM(_key(shared, eph_raw, recipient_raw))


class Opener:
    """Opens envelopes sealed to one private key, remembering the AES key derived for each recent ephemeral key
    (bounded, in memory), so envelopes from a :class:`Sealer` that reuses a key cost one X25519 agreement per key
    instead of one per envelope. Thread-safe."""

    def __init__(self, private_key: X25519PrivateKey | bytes, *, cache_size: int = 4096) -> None:
        self._private = load_private_key(private_key)
        self._recipient_raw = self._private.public_key().public_bytes(*_RAW)
        self._cache: OrderedDict[bytes, AESGCM] = OrderedDict()
        self._cache_size = max(1, cache_size)
        self._lock = threading.Lock()

    def open(self, sealed: str) -> dict[str, Any]:
        eph_raw, nonce, ciphertext = _split(sealed)
        with self._lock:
            aead = self._cache.get(eph_raw)
            if aead is not None:
                self._cache.move_to_end(eph_raw)
        if aead is None:
            aead = _derive(self._private, self._recipient_raw, eph_raw)
            with self._lock:
                self._cache[eph_raw] = aead
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return _decrypt(aead, nonce, ciphertext)


def open_sealed(private_key: X25519PrivateKey | bytes, sealed: str) -> dict[str, Any]:
    """Decrypt an envelope made by :func:`seal`. Raises ``EnvelopeError`` if it is malformed, was tampered with,
    or was sealed to another key."""
    private = load_private_key(private_key)
    eph_raw, nonce, ciphertext = _split(sealed)
    return _decrypt(_derive(private, private.public_key().public_bytes(*_RAW), eph_raw), nonce, ciphertext)


def _decrypt(aead: AESGCM, nonce: bytes, ciphertext: bytes) -> dict[str, Any]:
    try:
        plaintext = aead.decrypt(nonce, ciphertext, PREFIX.encode())
    except InvalidTag:
        raise EnvelopeError("bad_envelope", "envelope does not open with this key or was altered") from None
    try:
        payload = orjson.loads(plaintext)
    except orjson.JSONDecodeError:
        raise EnvelopeError("bad_envelope", "envelope content is not JSON") from None
    if not isinstance(payload, dict):
        raise EnvelopeError("bad_envelope", "envelope content is not an object")
    return payload
