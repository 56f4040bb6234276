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
- Head office does one X25519 agreement per chain, then one BLAKE2b call and AES-GCM per envelope.

Format v1 (0.1): ``"v1." + base64url(ephemeral public key (32) | nonce (12) | ciphertext+tag)``, one AES key
(X25519 + HKDF-SHA256) for up to 64 envelopes within 60 s. Still opened, and still written for a head office that
has not announced that it opens v2 (head office announces ``VERSIONS``; see ``newest_opened``).
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
MAX_CHAIN_LENGTH = 1024
DEFAULT_CHAIN_AGE_S = 3600.0  # a chain is used for at most this long (and MAX_CHAIN_LENGTH envelopes)
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


def _new_chain(recipient: X25519PublicKey, recipient_raw: bytes, info: bytes = _INFO) -> tuple[bytes, bytes]:
    """A fresh ephemeral key agreed with the recipient: (its public key, chain key 0 -- or, with the v1 ``info``,
    the v1 AES key). The ephemeral private key is dropped here; only the recipient can compute the key again."""
    ephemeral = X25519PrivateKey.generate()
    eph_raw = ephemeral.public_key().public_bytes(*_RAW)
    return eph_raw, _hkdf(ephemeral.exchange(recipient), eph_raw, recipient_raw, info)


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


# Format v1, still written for a head office that has not announced v2 (see Sealer.set_version): one AES key per
# ephemeral key, for at most this many envelopes and seconds.
V1_USES_PER_KEY = 64
V1_MAX_KEY_AGE_S = 60.0
VERSIONS = (1, 2)


def announced_versions(doc: Any) -> tuple[int, ...] | None:
    """The envelope formats a head-office answer (or a stored enrollment) says head office opens; None when it
    says nothing, as version 0.1 does."""
    versions = doc.get("envelope_versions") if isinstance(doc, dict) else None
    if not isinstance(versions, list | tuple):
        return None
    return tuple(sorted({v for v in versions if isinstance(v, int) and not isinstance(v, bool)}))


def newest_opened(versions: Any) -> int:
    """The envelope format to seal in for a head office that announced ``versions`` (1 when it announced none:
    version 0.1 opens v1 only)."""
    announced = set(versions or ())
    return max((v for v in VERSIONS if v in announced), default=1)


# Taken only to re-create a Sealer's lock in a forked child; re-created itself in every child.
_fork_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _fork_lock
    _fork_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Sealer:
    """Seals to one recipient: along key chains (format v2, see the module docstring), or in format v1 for a head
    office that opens only v1 (``version=1``; switched with :meth:`set_version` once it announces v2).

    A chain is used for at most ``chain_length`` envelopes (default 1024) and ``max_chain_age_s`` (default 3600 s),
    then a new one is started. The key agreement that starts a chain (X25519 + HKDF, ~0.1 ms) is done ahead of time
    by a background thread (``reserve`` of them, default 1), so sealing at the counter costs one BLAKE2b call and
    AES-GCM.

    What a snapshot of this process's memory gives away: the current chain key, which derives the message keys of
    the envelopes this chain will still seal (at most ``chain_length``, within ``max_chain_age_s``), and the key of
    each chain prepared in reserve (discarded unused once older than ``max_chain_age_s``); not the keys of envelopes
    already sealed, which are no longer referenced. (Python does not zero freed memory: bytes of a recent key may
    sit in a freed block until the allocator reuses it, which for these small objects is soon.) In v1 the current
    AES key opens the up to 64 envelopes of the last minute. Nothing of the keys is written to disk, and a forked
    child discards its parent's.
    """

    def __init__(
        self,
        public_key: X25519PublicKey | bytes,
        *,
        version: int = 2,
        reserve: int = 1,
        chain_length: int = MAX_CHAIN_LENGTH,
        max_chain_age_s: float = DEFAULT_CHAIN_AGE_S,
    ) -> None:
        if version not in VERSIONS:
            raise EnvelopeError("bad_version", f"envelope format must be one of {VERSIONS}")
        self._recipient = load_public_key(public_key)
        self._recipient_raw = self._recipient.public_bytes(*_RAW)
        self._version = version
        self._reserve = max(1, reserve)
        self.chain_length = max(1, min(chain_length, MAX_CHAIN_LENGTH))
        self.max_chain_age_s = max_chain_age_s
        self._closed = False
        self._reset()

    @property
    def version(self) -> int:
        return self._version

    def _reset(self) -> None:
        # deque append/popleft are atomic: the background thread takes no lock. The lock of seal() is made anew
        # here, so a child forked while a thread of its parent held it does not wait for it forever.
        self._lock = threading.Lock()
        self._ready: deque[tuple[int, bytes, bytes, float]] = deque()  # (version, eph, key, made at)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._forget_current()
        self._nonces: list[bytes] = []

    def _forget_current(self) -> None:
        self._eph_raw = b""
        self._chain_key = b""
        self._v1_aead: AESGCM | None = None
        self._index = 0
        self._since = 0.0

    def _prepare(self, version: int) -> tuple[int, bytes, bytes, float]:
        eph_raw, key = _new_chain(self._recipient, self._recipient_raw, _INFO if version == 2 else _INFO_V1)
        return version, eph_raw, key, time.monotonic()

    def _run(self, ready: deque[tuple[int, bytes, bytes, float]], wake: threading.Event) -> None:
        while not self._closed and ready is self._ready:
            while len(ready) < self._reserve and not self._closed and ready is self._ready:
                ready.append(self._prepare(self._version))
                time.sleep(0)  # hand the GIL back after every key: a sale waits one key at most
            wake.wait(1.0)
            wake.clear()

    def _take(self, now: float) -> tuple[bytes, bytes]:
        """A prepared (ephemeral public key, key) of the current version and not too old, or a fresh one."""
        fresh = None
        while fresh is None and self._ready:
            try:
                version, eph_raw, key, made = self._ready.popleft()
            except IndexError:
                break
            if version == self._version and now - made <= self.max_chain_age_s:
                fresh = eph_raw, key
        if len(self._ready) <= self._reserve // 2:
            self._wake.set()
        if fresh is None:
            _version, eph_raw, key, _made = self._prepare(self._version)
            fresh = eph_raw, key
        return fresh

    def _nonce(self) -> bytes:
        """A random 96-bit nonce, drawn from the OS in blocks (one system call per 256 envelopes)."""
        try:
            return self._nonces.pop()
        except IndexError:
            block = os.urandom(12 * 256)
            self._nonces = [block[i : i + 12] for i in range(0, len(block), 12)]
            return self._nonces.pop()

    def set_version(self, version: int) -> None:
        """Seal in ``version`` from now on (keys prepared for the other one are dropped)."""
        if version not in VERSIONS:
            raise EnvelopeError("bad_version", f"envelope format must be one of {VERSIONS}")
        with self._lock:
            if version == self._version:
                return
            self._version = version
            self._ready.clear()
            self._forget_current()
            self._wake.set()

    def seal(self, payload: dict[str, Any]) -> str:
        if not isinstance(payload, dict):
            raise EnvelopeError("bad_envelope", "the sealed payload must be a dict")
        if self._pid != os.getpid():
            with _fork_lock:
                if self._pid != os.getpid():
                    self._reset()
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, args=(self._ready, self._wake), name="envelope-keys", daemon=True
                )
                self._thread.start()
            now = time.monotonic()
            nonce = self._nonce()
            if self._version == 1:
                if self._v1_aead is None or self._index >= V1_USES_PER_KEY or now - self._since > V1_MAX_KEY_AGE_S:
                    self._eph_raw, key = self._take(now)
                    self._v1_aead, self._index, self._since = AESGCM(key), 0, now
                self._index += 1
                eph_raw, v1_aead = self._eph_raw, self._v1_aead
            else:
                if (not self._chain_key or self._index >= self.chain_length
                        or now - self._since > self.max_chain_age_s):
                    self._eph_raw, self._chain_key = self._take(now)
                    self._index, self._since = 0, now
                eph_raw, index, v1_aead = self._eph_raw, self._index, None
                message_key, self._chain_key = _step(self._chain_key)
                self._index = index + 1
        if v1_aead is not None:
            ciphertext = v1_aead.encrypt(nonce, orjson.dumps(payload), PREFIX_V1.encode())
            return PREFIX_V1 + _b64url(eph_raw + nonce + ciphertext)
        return _encrypt(eph_raw, index, message_key, payload, nonce)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            old, self._ready = self._ready, deque()  # the key thread sees a new deque and stops
            old.clear()
            self._forget_current()
            self._wake.set()


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
    """One thread's view of one key chain at head office: a cursor (next index, its chain key) and the chain key of
    every 64th index this view has reached, so that an envelope behind the cursor (a replay, or pages opened out
    of order) is reached in at most 63 steps from the mark below it, and the envelopes after it in one step each.
    A view new to a chain walks from chain key 0 (at most MAX_CHAIN_LENGTH - 1 steps, ≈ 0.5 ms)."""

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
    envelope costs one BLAKE2b call and AES-GCM, and a chain one X25519 agreement per process.

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

    def open(self, sealed: str) -> dict[str, Any]:
        version, raw = _decode(sealed)
        if version == PREFIX_V1:
            return self._open_v1(raw)
        eph_raw, index, nonce, ciphertext = _split_v2(raw)
        chains: OrderedDict[bytes, _Chain] | None = getattr(self._local, "chains", None)
        if chains is None:
            chains = self._local.chains = OrderedDict()
        chain = chains.get(eph_raw)
        known = chain is not None
        if chain is None:
            root = self._roots.get(eph_raw)
            if root is None:
                root = _hkdf(_agree(self._private, eph_raw), eph_raw, self._recipient_raw, _INFO)
            chain = _Chain(root)
        payload = _decrypt(AESGCM(chain.message_key(index)), nonce, ciphertext, PREFIX.encode() + raw[:_HEADER])
        if known:
            chains.move_to_end(eph_raw)
        else:
            # Remembered only once an envelope of the chain has opened: forged ephemeral keys fill no cache.
            if eph_raw not in self._roots:
                if len(self._roots) >= self._cache_size:
                    self._roots.clear()  # simpler than LRU order, and just as bounded
                self._roots[eph_raw] = chain.marks[0]
            chains[eph_raw] = chain
            if len(chains) > self._PER_THREAD:
                chains.popitem(last=False)
        return payload

    def _open_v1(self, raw: bytes) -> dict[str, Any]:
        eph_raw, nonce, ciphertext = _split_v1(raw)
        aead = self._v1_keys.get(eph_raw)
        if aead is not None:
            return _decrypt(aead, nonce, ciphertext, PREFIX_V1.encode())
        aead = AESGCM(_hkdf(_agree(self._private, eph_raw), eph_raw, self._recipient_raw, _INFO_V1))
        payload = _decrypt(aead, nonce, ciphertext, PREFIX_V1.encode())
        if len(self._v1_keys) >= self._cache_size:  # remembered only once it opened, as for v2
            self._v1_keys.clear()
        self._v1_keys[eph_raw] = aead
        return payload


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
