"""Head office's secrets, kept outside the database.

``Keystore`` is the interface a KMS/HSM integration would implement: the X25519 private key that opens the
terminals' sealed envelopes, the token key terminals hash card numbers with, and the data key that encrypts card
data at rest. ``FileKeystore`` keeps them in a directory (0700, files 0600), created on first use; every ``serve``
process of one head office must use the same keystore.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol.envelope import Opener
from protocol.tokens import CardTokens

ENVELOPE_KEY = "hq_x25519.pem"
TOKEN_KEY = "token.key"  # noqa: S105 (a file name, not a secret)
DATA_KEY = "data.key"
_NONCE_BYTES = 12
_NONCES_PER_DRAW = 512


class KeystoreError(Exception):
    """The keystore is missing, unreadable or too open. The message says what to fix."""


class Keystore(Protocol):
    def envelope_private_key(self) -> X25519PrivateKey: ...
    def open_envelope(self, sealed: str) -> dict[str, Any]: ...
    def envelope_public_key(self) -> X25519PublicKey: ...
    def token_key(self) -> bytes: ...
    def card_token(self, pan: str) -> str: ...
    def encrypt_card_data(self, plaintext: bytes, associated: bytes) -> bytes: ...
    def decrypt_card_data(self, blob: bytes, associated: bytes) -> bytes: ...


class FileKeystore:
    def __init__(self, directory: Path, *, create: bool = True) -> None:
        self.directory = Path(directory)
        if create:
            self._create_missing()
        self._private = self._load_private()
        self._opener = Opener(self._private)
        self._token = self._read(TOKEN_KEY, 32)
        self._tokens = CardTokens(self._token)
        self._aead = AESGCM(self._read(DATA_KEY, 32))
        self._nonces: list[bytes] = []
        self._nonce_pid = os.getpid()

    def envelope_private_key(self) -> X25519PrivateKey:
        return self._private

    def envelope_public_key(self) -> X25519PublicKey:
        return self._private.public_key()

    def open_envelope(self, sealed: str) -> dict[str, Any]:
        """The clearing data in a terminal's envelope; ``EnvelopeError`` if it does not open with our key.
        (A KMS/HSM keystore would do this inside the KMS and never hand out the private key.)"""
        return self._opener.open(sealed)

    def envelope_public_pem(self) -> str:
        return (
            self._private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
        )

    def token_key(self) -> bytes:
        return self._token

    def card_token(self, pan: str) -> str:
        """The terminals' token of ``pan`` (``protocol.tokens.card_token`` under the token key); ``ValidationError``
        for something that is not a PAN. (A KMS keystore would compute it inside the KMS.)"""
        return self._tokens(pan)

    def encrypt_card_data(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = self._nonce()
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def _nonce(self) -> bytes:
        """A random 96-bit nonce. Drawn from the OS in blocks: a getrandom call per row releases the GIL, and
        with several upload threads in a worker each release costs a GIL hand-over; the nonces are as random.
        ``list.pop`` is atomic, so no nonce is handed out twice; a forked child draws its own."""
        while True:
            if self._nonce_pid == os.getpid():
                try:
                    return self._nonces.pop()
                except IndexError:
                    pass
            block = os.urandom(_NONCE_BYTES * _NONCES_PER_DRAW)
            self._nonces = [block[i:i + _NONCE_BYTES] for i in range(0, len(block), _NONCE_BYTES)]
            self._nonce_pid = os.getpid()

    def decrypt_card_data(self, blob: bytes, associated: bytes) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], associated)

    # -- files -----------------------------------------------------------------------------------------------

    def _create_missing(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        pem = X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._create_once(ENVELOPE_KEY, pem)
        self._create_once(TOKEN_KEY, secrets.token_bytes(32))
        self._create_once(DATA_KEY, secrets.token_bytes(32))

    def _create_once(self, name: str, data: bytes) -> None:
        """Write through a temp file and hard-link into place: a concurrent starter either wins or finds the
        winner's complete file, never a half-written one."""
        target = self.directory / name
        if target.exists():
            return
        tmp = self.directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, target)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()

    def _read(self, name: str, size: int | None = None) -> bytes:
        path = self.directory / name
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeystoreError(f"keystore file {path} is missing (run `smartpos-hq keys init`)") from None
        except OSError as exc:
            raise KeystoreError(f"keystore file {path}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeystoreError(f"keystore file {path} is readable by group/others; chmod 600 it")
        if size is not None and len(data) != size:
            raise KeystoreError(f"keystore file {path} must hold {size} bytes")
        return data

    def _load_private(self) -> X25519PrivateKey:
        try:
            key = serialization.load_pem_private_key(self._read(ENVELOPE_KEY), password=None)
        except ValueError:
            raise KeystoreError(f"{self.directory / ENVELOPE_KEY} is not a PEM private key") from None
        if not isinstance(key, X25519PrivateKey):
            raise KeystoreError(f"{self.directory / ENVELOPE_KEY} is not an X25519 key")
        return key
