"""The terminal's provisioning state, as `smartpos enroll` leaves it under the state directory.

``keys/terminal_ed25519.pem`` (signs head-office requests), ``keys/hq_x25519_public.pem`` (seals card data for
head office), ``keys/token.key`` (32 raw bytes, HMAC key for card tokens), ``enrollment.json`` (terminal id,
merchant, head-office URL, parameters).
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from protocol.envelope import announced_versions

TERMINAL_KEY = Path("keys/terminal_ed25519.pem")
HQ_PUBLIC_KEY = Path("keys/hq_x25519_public.pem")
TOKEN_KEY = Path("keys/token.key")
ENROLLMENT = Path("enrollment.json")


class ProvisioningError(Exception):
    """The state directory does not hold a usable enrollment. The message says what to do."""


class NotEnrolledError(ProvisioningError):
    pass


@dataclass(frozen=True)
class Enrollment:
    terminal_id: str
    merchant: dict[str, Any]
    hq_url: str
    parameters: dict[str, Any]
    parameters_version: Any
    enrolled_at: str
    terminal_key: Ed25519PrivateKey = field(repr=False)
    hq_public_key: X25519PublicKey = field(repr=False)
    token_key: bytes = field(repr=False)
    deny_list: tuple[str, ...] = ()
    # Sealed-envelope formats head office announced at enrollment; () for a head office that announced none (0.1).
    envelope_versions: tuple[int, ...] = ()

    @property
    def merchant_name(self) -> str:
        return str(self.merchant.get("name", ""))


def load_enrollment(state_dir: Path) -> Enrollment:
    """Read and check everything enrollment wrote. Raises ``NotEnrolledError`` when nothing is there."""
    if not (state_dir / ENROLLMENT).exists():
        raise NotEnrolledError(
            f"terminal not enrolled: no {ENROLLMENT} in {state_dir} "
            "(run `smartpos enroll --hq URL --code CODE` first)"
        )
    try:
        doc = json.loads((state_dir / ENROLLMENT).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ProvisioningError(f"{state_dir / ENROLLMENT}: unreadable ({exc.__class__.__name__}); re-enroll") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("terminal_id"), str):
        raise ProvisioningError(f"{state_dir / ENROLLMENT}: no terminal_id; re-enroll")

    terminal_key = _private_key(state_dir / TERMINAL_KEY)
    hq_key = _public_key(state_dir / HQ_PUBLIC_KEY)
    token_key = _read_secret(state_dir / TOKEN_KEY)
    if len(token_key) != 32:
        raise ProvisioningError(f"{state_dir / TOKEN_KEY}: must hold 32 bytes, holds {len(token_key)}; re-enroll")
    return Enrollment(
        terminal_id=doc["terminal_id"],
        merchant=doc.get("merchant") or {},
        hq_url=str(doc.get("hq_url") or ""),
        parameters=doc.get("parameters") or {},
        parameters_version=doc.get("parameters_version"),
        enrolled_at=str(doc.get("enrolled_at") or ""),
        terminal_key=terminal_key,
        hq_public_key=hq_key,
        token_key=token_key,
        deny_list=tuple(str(t) for t in doc.get("deny_list") or ()),
        envelope_versions=announced_versions(doc) or (),
    )


def _read_secret(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise ProvisioningError(f"{path}: missing; re-enroll") from None
    except OSError as exc:
        raise ProvisioningError(
            f"{path}: cannot read ({exc.strerror}); check the service user owns the state dir"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ProvisioningError(f"{path}: readable by group/others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    return data


def _private_key(path: Path) -> Ed25519PrivateKey:
    data = _read_secret(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        raise ProvisioningError(f"{path}: not a PEM private key; re-enroll") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ProvisioningError(f"{path}: not an Ed25519 key; re-enroll")
    return key


def _public_key(path: Path) -> X25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError:
        raise ProvisioningError(f"{path}: missing or unreadable; re-enroll") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ProvisioningError(f"{path}: not a PEM public key; re-enroll") from None
    if not isinstance(key, X25519PublicKey):
        raise ProvisioningError(f"{path}: not an X25519 key; re-enroll")
    return key
