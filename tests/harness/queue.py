"""Fixtures for the offline queue: head-office keys, card protection, a store in a temporary directory, and
card reads shaped like ``drivers.cardread.EmvCardRead`` (test PANs only)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Luhn-valid test PANs (scheme test ranges), never real cards.
TEST_PANS = {"visa": "4111111111111111", "mastercard": "5555555555554444", "amex": "378282246310005"}


@dataclass(frozen=True)
class FakeEmvRead:
    """The attributes of ``drivers.cardread.EmvCardRead`` that card protection reads."""

    pan: str = TEST_PANS["visa"]
    scheme: str = "visa"
    expiry: str = "2812"
    track2: str = "4111111111111111D28122010000012300000F"
    cryptogram: dict = field(default_factory=lambda: {"9F26": "1A2B3C4D5E6F7081", "9F27": "80", "9F36": "0042"})
    aid: str = "A0000000031010"
    label: str = "VISA CREDIT"
    atc: int = 66
    entry_mode: str = "contactless"
    wallet: bool = False
    kind: str = "emv"


@dataclass(frozen=True)
class FakeUidRead:
    uid: str = "04A1B2C3D4E5F6"
    kind: str = "uid"
    entry_mode: str = "card_uid"


@pytest.fixture
def hq_keys():
    from protocol.envelope import generate_keypair

    return generate_keypair()


@pytest.fixture
def token_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def card_protection(hq_keys, token_key):
    from offline_queue.cardprotect import CardProtection

    return CardProtection(token_key, hq_keys[1])


@pytest.fixture
def queue_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "queue.sqlite"


@pytest.fixture
def queue_store(queue_path: Path) -> Iterator:
    from offline_queue.store import QueueStore

    s = QueueStore.open(queue_path, terminal_id="T-0001")
    try:
        yield s
    finally:
        s.close()


def sale(store, protection, amount: int = 1250, currency: str = "EUR", *, card=None, mode: str = "offline", **kw):
    """Record one sale with a protected test card."""
    return store.record(
        type="sale",
        amount_minor=amount,
        currency=currency,
        card=protection.protect(card or FakeEmvRead()),
        auth={"mode": mode, "code": "A1B2C3" if mode == "online" else None},
        **kw,
    )
