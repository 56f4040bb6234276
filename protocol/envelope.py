"""Sealed envelopes: card data only head office can open.

Hybrid encryption to head office's X25519 public key. The terminal keeps no private key that opens them, so a
stolen terminal cannot open its own queue.

Format v2 (written since 0.2):
``"v2." + base64url(ephemeral public key (32) | index (4, big-endian) | nonce (12) | ciphertext+tag)``, no padding.

- An ephemeral X25519 key is agreed with head office's key once (X25519, then HKDF-SHA256 with both public keys as
  salt): that gives chain key C0 of a *key chain*.
- Envelope ``i`` of that chain is encrypted (AES-256-GCM, random nonce, the ``"v2."`` prefix and the 36 header bytes
  as associated data) under message key Mi, where ``Mi | Ci+1 = BLAKE2b-512(key=Ci)`` (keyed BLAKE2b is a PRF,
  RFC 7693; personalised for this use). The sealer keeps only the next chain key: it cannot go back, so the memory
  of a running terminal does not hold what opens the envelopes it already sealed (forward secrecy within a chain).
- Head office does one X25519 agreement per chain, then two cheap hashes per envelope.

Format v1 (0.1): one AES key per ephemeral key for up to 64 envelopes; still opened, no longer written.
"""

from __future__ import annotations

import binascii
import hashlib
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

PREFIX = "v2."
PREFIX_V1 = "v1."
_INFO_V1 = b"smartpos-envelope-v1"
_INFO = b"smartpos-envelope-v2"
_PERSON = b"smartpos-env-v2"  # BLAKE2b personalisation (at most 16 bytes)
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw
_HEADER = 32 + 4  # ephemeral public key, index
# A chain seals at most this many envelopes: bounds what head office derives to reach an index (an envelope cannot
# make it hash a billion times) and what one snapshot of a running terminal's memory could open from then on.
MAX_CHAIN_LENGTH = 4096
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


def _hkdf(shared: bytes, eph_pub: bytes, recipient_pub: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=info).derive(shared)


def _step(chain_key: bytes) -> tuple[bytes, bytes]:
    """(message key i, chain key i+1) from chain key i."""
    out = hashlib.blake2b(key=chain_key, digest_size=64, person=_PERSON).digest()
    return out[:32], out[32:]


def _new_chain(recipient: X25519PublicKey, recipient_raw: bytes) -> tuple[bytes, bytes]:
    """A fresh ephemeral key agreed with the recipient: (its public key, chain key 0). The ephemeral private key
    is dropped here; only the recipient can compute chain key 0 again."""
    ephemeral = X25519PrivateKey.generate()
    eph_raw = ephemeral.public_key().public_bytes(*_RAW)
    return eph_raw, _hkdf(ephemeral.exchange(recipient), eph_raw, recipient_raw, _INFO)


_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _b64url(data: bytes) -> str:
    """base64url without padding (what ``base64.urlsafe_b64encode`` gives, minus its wrapper calls)."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode("ascii")


def _encrypt(eph_raw: bytes, index: int, message_key: bytes, payload: dict[str, Any], nonce: bytes) -> str:
    if not isinstance(payload, dict):
        raise EnvelopeError("bad_envelope", "the sealed payload must be a dict")
    header = eph_raw + index.to_bytes(4, "big")
    # The prefix and the header are authenticated: an envelope cannot be relabelled as another format version,
    # moved to another chain position or given another ephemeral key.
    ciphertext = AESGCM(message_key).encrypt(nonce, orjson.dumps(payload), PREFIX.encode() + header)
    return PREFIX + _b64url(header + nonce + ciphertext)


def seal(public_key: X25519PublicKey | bytes, payload: dict[str, Any]) -> str:
    """Encrypt ``payload`` (JSON-able dict) so that only the holder of the matching private key can read it:
    an envelope of its own one-envelope chain. A terminal seals through :class:`Sealer`."""
    if not isinstance(payload, dict):
        raise EnvelopeError("bad_envelope", "the sealed payload must be a dict")
    recipient = load_public_key(public_key)
    eph_raw, chain_key = _new_chain(recipient, recipient.public_bytes(*_RAW))
    return _encrypt(eph_raw, 0, _step(chain_key)[0], payload, os.urandom(12))


class Sealer:
    """Seals to one recipient along key chains (see the module docstring).

    A chain is used for at most ``chain_length`` envelopes (default 1024) and ``max_chain_age_s`` (default 3600 s),
    then a new one is started. The key agreement that starts a chain (X25519 + HKDF, ~0.1 ms) is done ahead of time
    by a background thread, so sealing at the counter costs two hashes and AES-GCM.

    What a snapshot of this process's memory gives away: the current chain key, which derives the message keys of
    the envelopes this chain will still seal (at most ``chain_length``, within ``max_chain_age_s``), and the
    prepared chain keys waiting in reserve; not the keys of envelopes already sealed, which are no longer
    referenced. (Python does not zero freed memory: bytes of a recent key may sit in a freed block until the
    allocator reuses it, which for these small objects is soon.) Nothing of the keys is written to disk, and a
    forked child discards its parent's.
    """

    def __init__(
        self,
        public_key: X25519PublicKey | bytes,
        *,
        reserve: int = 4,
        chain_length: int = 1024,
        max_chain_age_s: float = 3600.0,
    ) -> None:
        self._recipient = load_public_key(public_key)
        self._recipient_raw = self._recipient.public_bytes(*_RAW)
        self._reserve = max(1, reserve)
        self.chain_length = max(1, min(chain_length, MAX_CHAIN_LENGTH))
        self.max_chain_age_s = max_chain_age_s
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        # deque append/popleft are atomic: the background thread takes no lock. The lock of seal() is made anew
        # here, so a child forked while a thread of its parent held it does not wait for it forever.
        self._lock = threading.Lock()
        self._ready: deque[tuple[bytes, bytes]] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._eph_raw = b""
        self._chain_key = b""
        self._index = 0
        self._since = 0.0
        self._nonces: list[bytes] = []

    def _run(self, ready: deque[tuple[bytes, bytes]], wake: threading.Event) -> None:
        while not self._closed and ready is self._ready:
            while len(ready) < self._reserve and not self._closed:
                ready.append(_new_chain(self._recipient, self._recipient_raw))
                time.sleep(0)  # hand the GIL back after every key: a sale waits one key at most
            wake.wait(1.0)
            wake.clear()

    def _nonce(self) -> bytes:
        """A random 96-bit nonce, drawn from the OS in blocks (one system call per 256 envelopes)."""
        try:
            return self._nonces.pop()
        except IndexError:
            block = os.urandom(12 * 256)
            self._nonces = [block[i : i + 12] for i in range(0, len(block), 12)]
            return self._nonces.pop()

    def seal(self, payload: dict[str, Any]) -> str:
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, args=(self._ready, self._wake), name="envelope-keys", daemon=True
                )
                self._thread.start()
            now = time.monotonic()
            if not self._chain_key or self._index >= self.chain_length or now - self._since > self.max_chain_age_s:
                try:
                    self._eph_raw, self._chain_key = self._ready.popleft()
                except IndexError:
                    self._eph_raw, self._chain_key = _new_chain(self._recipient, self._recipient_raw)
                self._index = 0
                self._since = now
                if len(self._ready) <= self._reserve // 2:
                    self._wake.set()
            eph_raw, index = self._eph_raw, self._index
            message_key, self._chain_key = _step(self._chain_key)
            self._index = index + 1
            nonce = self._nonce()
        return _encrypt(eph_raw, index, message_key, payload, nonce)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._ready.clear()
        self._chain_key = b""


def _decode(sealed: str) -> tuple[str, bytes]:
    if not isinstance(sealed, str) or len(sealed) > MAX_SEALED_CHARS or sealed[:3] not in (PREFIX, PREFIX_V1):
        raise EnvelopeError("bad_envelope", "not a sealed envelope of a known version")
    body = sealed[3:]
    try:
        raw = binascii.a2b_base64(body.encode("ascii").translate(_FROM_URLSAFE) + b"=" * (-len(body) % 4))
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        raise EnvelopeError("bad_envelope", "envelope is not base64url") from None
    return sealed[:3], raw


def _agree(private: X25519PrivateKey, eph_raw: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(eph_raw))
    except ValueError:
        raise EnvelopeError("bad_envelope", "envelope carries an invalid ephemeral key") from None


def _split_v2(raw: bytes) -> tuple[bytes, int, bytes, bytes]:
    if len(raw) < _HEADER + 12 + 16:
        raise EnvelopeError("bad_envelope", "envelope is too short")
    index = int.from_bytes(raw[32:36], "big")
    if index >= MAX_CHAIN_LENGTH:
        raise EnvelopeError("bad_envelope", "envelope index is beyond any chain")
    return raw[:32], index, raw[36:48], raw[48:]


def _split_v1(raw: bytes) -> tuple[bytes, bytes, bytes]:
    if len(raw) < 32 + 12 + 16:
        raise EnvelopeError("bad_envelope", "envelope is too short")
    return raw[:32], raw[32:44], raw[44:]


class _Chain:
    """Head office's view of one key chain: a cursor (next index, its chain key) and the chain key of every 64th
    index reached so far, so that an envelope behind the cursor (a replay, or pages opened out of order) is
    reached in at most 63 steps from the mark below it, and the envelopes after it in one step each."""

    __slots__ = ("marks", "next_index", "next_key")

    EVERY = 64

    def __init__(self, root: bytes) -> None:
        self.marks = [root]  # marks[k]: chain key of index k * EVERY
        self.next_index = 0
        self.next_key = root

    def message_key(self, index: int) -> bytes:
        if index < self.next_index:  # back to the mark at or below the index
            mark = index // self.EVERY
            self.next_index, self.next_key = mark * self.EVERY, self.marks[mark]
        key, at = self.next_key, self.next_index
        while at < index:
            key = _step(key)[1]
            at += 1
            if at % self.EVERY == 0 and at // self.EVERY == len(self.marks):
                self.marks.append(key)
        message, self.next_key = _step(key)
        self.next_index = index + 1
        if self.next_index % self.EVERY == 0 and self.next_index // self.EVERY == len(self.marks):
            self.marks.append(self.next_key)
        return message


class Opener:
    """Opens envelopes sealed to one private key. Remembers (bounded, in memory) the chains it has seen, so an
    envelope costs two hashes and AES-GCM, and a chain one X25519 agreement per process.

    Thread-safe without a lock, so that the threads of a head-office worker opening envelopes at once never wait on
    one another: chain key 0 of each chain is shared (a dict read or write is atomic), and each thread walks the
    chains with cursors of its own."""

    _PER_THREAD = 256  # chains a thread keeps cursors for

    def __init__(self, private_key: X25519PrivateKey | bytes, *, cache_size: int = 4096) -> None:
        self._private = load_private_key(private_key)
        self._recipient_raw = self._private.public_key().public_bytes(*_RAW)
        self._roots: dict[bytes, bytes] = {}
        self._v1_keys: dict[bytes, AESGCM] = {}
        self._cache_size = max(1, cache_size)
        self._local = threading.local()

    def _root(self, eph_raw: bytes) -> bytes:
        root = self._roots.get(eph_raw)
        if root is None:
            root = _hkdf(_agree(self._private, eph_raw), eph_raw, self._recipient_raw, _INFO)
            if len(self._roots) >= self._cache_size:
                self._roots.clear()  # simpler than LRU order, and just as bounded
            self._roots[eph_raw] = root
        return root

    def open(self, sealed: str) -> dict[str, Any]:
        version, raw = _decode(sealed)
        if version == PREFIX_V1:
            return self._open_v1(raw)
        eph_raw, index, nonce, ciphertext = _split_v2(raw)
        chains: OrderedDict[bytes, _Chain] | None = getattr(self._local, "chains", None)
        if chains is None:
            chains = self._local.chains = OrderedDict()
        chain = chains.get(eph_raw)
        if chain is None:
            chain = chains[eph_raw] = _Chain(self._root(eph_raw))
            if len(chains) > self._PER_THREAD:
                chains.popitem(last=False)
        else:
            chains.move_to_end(eph_raw)
        message_key = chain.message_key(index)
        return _decrypt(AESGCM(message_key), nonce, ciphertext, PREFIX.encode() + raw[:_HEADER])

    def _open_v1(self, raw: bytes) -> dict[str, Any]:
        eph_raw, nonce, ciphertext = _split_v1(raw)
        aead = self._v1_keys.get(eph_raw)
        if aead is None:
            aead = AESGCM(_hkdf(_agree(self._private, eph_raw), eph_raw, self._recipient_raw, _INFO_V1))
            if len(self._v1_keys) >= self._cache_size:
                self._v1_keys.clear()
            self._v1_keys[eph_raw] = aead
        return _decrypt(aead, nonce, ciphertext, PREFIX_V1.encode())


def open_sealed(private_key: X25519PrivateKey | bytes, sealed: str) -> dict[str, Any]:
    """Decrypt an envelope made by :func:`seal` or a :class:`Sealer` (v2), or by version 0.1 (v1). Raises
    ``EnvelopeError`` if it is malformed, was tampered with, or was sealed to another key."""
    return Opener(private_key, cache_size=1).open(sealed)


def _decrypt(aead: AESGCM, nonce: bytes, ciphertext: bytes, associated: bytes) -> dict[str, Any]:
    try:
        plaintext = aead.decrypt(nonce, ciphertext, associated)
    except InvalidTag:
        raise EnvelopeError("bad_envelope", "envelope does not open with this key or was altered") from None
    try:
        payload = orjson.loads(plaintext)
    except orjson.JSONDecodeError:
        raise EnvelopeError("bad_envelope", "envelope content is not JSON") from None
    if not isinstance(payload, dict):
        raise EnvelopeError("bad_envelope", "envelope content is not an object")
    return payload
