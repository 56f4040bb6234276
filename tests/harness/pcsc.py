"""A private pcscd + vpcd for the whole test session, and virtual cards that tap on it.

pcscd runs in its own mount namespace with its own socket and free vpcd ports (``PrivatePcscd``), so the tests
neither need nor disturb a system pcscd, and parallel runs do not collide. libpcsclite reads
``PCSCLITE_CSOCK_NAME`` once per process: the fixture sets it before the first PC/SC call of the session and
restarts of this pcscd keep the same socket path.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from drivers.simulators.pcscd import PcscdError, PrivatePcscd
from drivers.simulators.vpcd import VpcdCard

READER = PrivatePcscd.READER_NAMES[0]


@pytest.fixture(scope="session")
def private_pcscd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePcscd]:
    if shutil.which("pcscd") is None and not Path("/usr/sbin/pcscd").exists():
        pytest.fail("pcscd is not installed (make installs pcscd and vsmartcard-vpcd)")
    daemon = PrivatePcscd(tmp_path_factory.mktemp("pcscd"))
    try:
        daemon.start()
    except PcscdError as exc:
        pytest.fail(f"private pcscd did not start: {exc}")
    before = os.environ.get("PCSCLITE_CSOCK_NAME")
    os.environ.update(daemon.env)
    try:
        yield daemon
    finally:
        daemon.stop()
        if before is None:
            os.environ.pop("PCSCLITE_CSOCK_NAME", None)
        else:
            os.environ["PCSCLITE_CSOCK_NAME"] = before


def reader_empty(daemon: PrivatePcscd, reader: str = READER, timeout: float = 3.0) -> bool:
    """Wait until pcscd reports no card in ``reader`` (its poll needs up to ~400 ms to see a removal)."""
    from smartcard import scard

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hr == 0:
            try:
                hr, states = scard.SCardGetStatusChange(ctx, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
                if hr == 0 and not states[0][1] & scard.SCARD_STATE_PRESENT:
                    return True
            finally:
                scard.SCardReleaseContext(ctx)
        time.sleep(0.05)
    return False


@pytest.fixture
def tap(private_pcscd: PrivatePcscd) -> Iterator[Callable[..., VpcdCard]]:
    """``tap("visa", taps=1, mode=None, ...)`` starts a virtual card on the first vpcd reader; every card is
    stopped at teardown and the reader is left empty for the next test."""
    cards: list[VpcdCard] = []

    def start(profile: str = "visa", **kwargs: object) -> VpcdCard:
        kwargs.setdefault("taps", 1)
        card = VpcdCard(profile, "127.0.0.1", private_pcscd.vpcd_ports[0], **kwargs)  # type: ignore[arg-type]
        cards.append(card)
        return card.start()

    try:
        assert reader_empty(private_pcscd), "a card from an earlier test is still in the reader"
        yield start
    finally:
        for card in cards:
            card.stop()
        reader_empty(private_pcscd)


@contextmanager
def started_readers(reader: str = READER) -> Iterator[object]:
    """A ``PcscReaders`` on ``reader``, its monitor running and the reader seen, closed afterwards."""
    from drivers.pcsc import PcscReaders

    readers = PcscReaders(reader)
    try:
        assert readers.wait_ready(10), readers.status()
        yield readers
    finally:
        readers.close()
