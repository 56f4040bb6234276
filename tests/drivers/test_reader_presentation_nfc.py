"""One presentation, one read on the nfcpy stack (NfcpyReader -> nfcpy udp driver -> emulator processes).

An emulator with ``gap=0.0`` presents itself again as soon as a tap ends: a phone or card left lying on the
reader. The reader must not read it again until it has seen the field empty, however often the next sales wait.
"""

from __future__ import annotations

import threading
import time

import pytest

from drivers.cardread import EmvCardRead, NdefRead
from drivers.emv import TerminalData
from drivers.errors import UNAVAILABLE_GRACE_S, CardError, ReaderUnavailableError, ReadTimeout
from drivers.nfc_reader import NfcpyReader
from drivers.simulators.emv_card import load_profile
from protocol.carddata import mask_pan
from tests.harness.procs import ProcessGroup

TD = TerminalData(amount_minor=1250, currency="EUR")


def _wait(reader: NfcpyReader, timeout: float):
    return reader.wait_for_card(TD, timeout=timeout, cancel=threading.Event())


def test_phone_left_on_the_reader_is_not_read_again_until_removed(nfc_sims, nfc_port, nfc_reader):
    left = nfc_sims.phone(nfc_port, profile="phone", taps=2, gap=0.0)
    reader = nfc_reader(nfc_port)
    first = _wait(reader, 10)
    assert isinstance(first, EmvCardRead) and first.label == "WALLET VISA"

    # The next two sales wait while the first customer's phone still lies on the reader: neither may read it.
    for _ in range(2):
        with pytest.raises(ReadTimeout):
            _wait(reader, 2.5)
    assert left.poll() is None  # its second tap never came: the reader sent it no APDU
    # The status says why (as PC/SC's does for a card left on its reader), so the cashier knows to take it away.
    status = reader.status()
    assert status["state"] == "card_present" and "still on the reader" in status["detail"], status

    ProcessGroup.stop(left)  # the phone is taken away...
    nfc_sims.phone(nfc_port, profile="visa", taps=1)  # ...and the next customer taps a card
    started = time.monotonic()
    read = _wait(reader, 10)
    assert isinstance(read, EmvCardRead) and read.masked_pan == mask_pan(load_profile("visa").pan)
    # udp: the removal is seen after one unanswered poll of each technology (~1 s each); then the tap is read.
    assert time.monotonic() - started < 6
    # That card's emulator made one tap and left: once the reader has seen the field empty it is ready again.
    deadline = time.monotonic() + 8
    while reader.status()["state"] != "ready" and time.monotonic() < deadline:
        time.sleep(0.1)
    status = reader.status()
    assert status["state"] == "ready" and "still on the reader" not in status["detail"], status


def test_failing_card_left_on_the_reader_fails_once(nfc_sims, nfc_port, nfc_reader):
    nfc_sims.phone(nfc_port, profile="visa", mode="bad-tlv", gap=0.0)
    reader = nfc_reader(nfc_port)
    with pytest.raises(CardError) as failed:
        _wait(reader, 10)
    assert failed.value.code == "card_data"
    # Not re-read in a loop (each read would run GET PROCESSING OPTIONS again): the next waits see nothing.
    for _ in range(2):
        with pytest.raises(ReadTimeout) as quiet:
            _wait(reader, 2.0)
        assert quiet.value.code == "timeout"


def test_member_tag_left_on_the_reader_is_read_once(nfc_sims, nfc_port, nfc_reader):
    nfc_sims.tag(nfc_port, [{"type": "text", "value": "MEMBER-0042", "lang": "en"}], gap=0.0)
    reader = nfc_reader(nfc_port)
    read = _wait(reader, 10)
    assert isinstance(read, NdefRead) and read.records[0].value == "MEMBER-0042"
    with pytest.raises(ReadTimeout):
        _wait(reader, 3.0)


def test_a_phone_that_comes_back_after_a_gap_is_a_new_tap(nfc_sims, nfc_port, nfc_reader):
    # Guard for the rule above: a phone that leaves the field (longer than one udp poll) and returns is read.
    proc = nfc_sims.phone(nfc_port, profile="phone", taps=3, gap=1.5)
    reader = nfc_reader(nfc_port)
    atcs = [_wait(reader, 10).atc for _ in range(3)]
    assert len(set(atcs)) == 3
    assert proc.wait(5) == 0


def test_missing_device_raises_reader_unavailable_with_the_detail():
    reader = NfcpyReader("usb:ffff:fffe")
    try:
        started = time.monotonic()
        with pytest.raises(ReaderUnavailableError) as unavailable:
            reader.wait_for_card(TD, timeout=5, cancel=threading.Event())
        # Raised once the grace is over, not at the end of the 5 s wait.
        assert UNAVAILABLE_GRACE_S <= time.monotonic() - started < UNAVAILABLE_GRACE_S + 1.5
        assert reader.status()["detail"] in unavailable.value.message
        assert unavailable.value.code == "reader_unavailable"
    finally:
        reader.close()
