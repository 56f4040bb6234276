"""Card reading through the real nfcpy stack: NfcpyReader -> nfcpy udp driver -> phone/tag emulator processes."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from drivers.cardread import EmvCardRead, NdefRead, UidCardRead
from drivers.emv import TerminalData, read_card
from drivers.errors import CardError, ReaderUnavailableError, ReadTimeout
from drivers.nfc_reader import NfcpyReader
from drivers.simulators.emv_card import InProcessCard, VirtualEmvCard, load_profile
from protocol.carddata import mask_pan

TD = TerminalData(amount_minor=1250, currency="EUR")


def _read(reader: NfcpyReader, timeout: float = 10.0):
    return reader.wait_for_card(TD, timeout=timeout, cancel=threading.Event())


@pytest.mark.parametrize("profile_name", ["phone", "visa", "mastercard"])
def test_emv_profile_reads_through_nfcpy_udp(profile_name, nfc_sims, nfc_port, nfc_reader):
    profile = load_profile(profile_name)
    proc = nfc_sims.phone(nfc_port, profile=profile_name, taps=1)
    reader = nfc_reader(nfc_port)

    read = _read(reader)

    assert isinstance(read, EmvCardRead)
    assert read.masked_pan == mask_pan(profile.pan)
    assert read.pan == profile.pan and read.expiry == profile.expiry
    assert read.aid in [app.aid.hex().upper() for app in profile.applications]
    assert read.label in [app.label for app in profile.applications]
    assert read.reader == f"nfcpy:udp:127.0.0.1:{nfc_port}"
    # Same card data as the stack-free read of the same profile: the transport changes nothing above it.
    direct = read_card(InProcessCard(VirtualEmvCard(profile)), TD, reader="in-process")
    assert (read.aid, read.label, read.scheme, read.masked_pan, read.track2_present) == (
        direct.aid, direct.label, direct.scheme, direct.masked_pan, direct.track2_present,
    )  # fmt: skip
    public = read.to_public_dict()
    assert profile.pan not in repr(read) and profile.pan not in str(public)
    assert proc.wait(5) == 0  # the phone counted exactly the one tap it was told to serve


def test_phone_is_a_wallet_with_its_own_label(nfc_sims, nfc_port, nfc_reader):
    nfc_sims.phone(nfc_port, profile="phone", taps=1)
    reader = nfc_reader(nfc_port)
    sensed: list[tuple[str, float]] = []
    read = reader.wait_for_card(TD, timeout=10, cancel=threading.Event(),
                                on_detected=lambda name: sensed.append((name, time.monotonic())))
    assert isinstance(read, EmvCardRead)
    # told once, once the phone was activated and before its read (the "reading" cue)
    assert [name for name, _ in sensed] == [reader.name]
    assert read.detected_at <= sensed[0][1] <= read.read_at
    assert (read.aid, read.label, read.expiry, read.wallet) == ("A0000000031010", "WALLET VISA", "2906", True)
    assert read.masked_pan == "489537******3478"


def test_uid_only_card_reads_as_uid(nfc_sims, nfc_port, nfc_reader):
    nfc_sims.phone(nfc_port, profile="uid", taps=1)
    read = _read(nfc_reader(nfc_port))
    assert isinstance(read, UidCardRead)
    assert read.uid == load_profile("uid").uid.hex().upper()


RECORDS = [
    {"type": "text", "value": "MEMBER-0042", "lang": "en"},
    {"type": "uri", "value": "https://shop.example/coupon/SAVE10"},
    {"type": "text", "value": "Café 10 %", "lang": "fr"},
]


@pytest.mark.parametrize("tag_type", ["type4", "type3", "type2"])
def test_ndef_tag_records_are_read(tag_type, nfc_sims, nfc_port, nfc_reader):
    proc = nfc_sims.tag(nfc_port, RECORDS, tag_type=tag_type, taps=1)
    read = _read(nfc_reader(nfc_port))
    assert isinstance(read, NdefRead)
    assert read.tag_type == {"type4": "Type4Tag", "type3": "Type3Tag", "type2": "Type2Tag"}[tag_type]
    assert [r.to_dict() for r in read.records] == [{"lang": None, **r} for r in RECORDS]
    assert read.to_public_dict()["records"][0]["value"] == "MEMBER-0042"
    assert proc.wait(5) == 0


@pytest.mark.parametrize(
    ("mode", "code"),
    [("drop", "card_removed"), ("bad-tlv", "card_data"), ("wrong-length", "card_data"), ("error-sw", "card_status")],
)
def test_bad_phone_fails_typed_and_next_tap_reads(mode, code, nfc_sims, nfc_port, nfc_reader):
    profile = load_profile("phone")
    nfc_sims.phone(nfc_port, profile="phone", taps=2, mode=mode, bad_taps=1)
    reader = nfc_reader(nfc_port)

    with pytest.raises(CardError) as failed:
        _read(reader)
    assert failed.value.code == code
    assert profile.pan not in str(failed.value) and profile.pan[-8:] not in str(failed.value)

    read = _read(reader)
    assert isinstance(read, EmvCardRead)
    assert read.masked_pan == mask_pan(profile.pan)


def test_t0_and_no_ppse_phones_still_read(nfc_sims, nfc_port, nfc_reader):
    reader = nfc_reader(nfc_port)
    for mode in ("t0", "no-ppse"):
        proc = nfc_sims.phone(nfc_port, profile="phone", taps=1, mode=mode)
        read = _read(reader)
        assert isinstance(read, EmvCardRead) and read.label == "WALLET VISA"
        assert proc.wait(5) == 0


def test_cancel_is_honoured_while_nfcpy_is_polling(nfc_port, nfc_reader):
    reader = nfc_reader(nfc_port)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(ReadTimeout) as exc:
        reader.wait_for_card(TD, timeout=30, cancel=cancel)
    assert exc.value.code == "cancelled"
    # One empty nfcpy poll of a technology takes ~1 s on udp: returning before it ends shows we did not wait for it.
    assert time.monotonic() - started < 0.9


def test_timeout_without_a_tap(nfc_port, nfc_reader):
    reader = nfc_reader(nfc_port)
    with pytest.raises(ReadTimeout) as exc:
        reader.wait_for_card(TD, timeout=0.4, cancel=threading.Event())
    assert exc.value.code == "timeout"
    assert reader.status()["state"] == "ready"


def test_tap_after_a_cancelled_wait_is_read_by_the_next_wait(nfc_sims, nfc_port, nfc_reader):
    reader = nfc_reader(nfc_port)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ReadTimeout):
        reader.wait_for_card(TD, timeout=5, cancel=cancel)
    nfc_sims.phone(nfc_port, profile="visa", taps=1)
    read = _read(reader)
    assert isinstance(read, EmvCardRead) and read.masked_pan == mask_pan(load_profile("visa").pan)


def test_one_path_has_one_owner_in_a_process(nfc_port, nfc_reader):
    nfc_reader(nfc_port)
    with pytest.raises(ReaderUnavailableError):
        NfcpyReader(f"udp:127.0.0.1:{nfc_port}")


def test_missing_device_reports_error_and_times_out_cleanly():
    reader = NfcpyReader("usb:ffff:fffe")
    try:
        assert reader.wait_ready(1.0) is False
        status = reader.status()
        assert (status["stack"], status["state"]) == ("nfcpy", "error")
        with pytest.raises(ReadTimeout):
            reader.wait_for_card(TD, timeout=0.3, cancel=threading.Event())
    finally:
        reader.close()


def test_not_an_nfcpy_path_is_refused():
    with pytest.raises(ValueError):
        NfcpyReader("Virtual PCD 00 00")
    # nfcpy would fail later, with "invalid literal for int() with base 10: 'discard'"
    with pytest.raises(ValueError, match="service name"):
        NfcpyReader("udp:127.0.0.1:9")


def test_emulator_on_a_busy_port_raises_a_typed_error():
    from drivers.cardread import NdefRecord
    from drivers.simulators.nfc_phone import run_phone
    from drivers.simulators.nfc_tag import PortInUseError, run_tag

    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("0.0.0.0", 0))
    port = holder.getsockname()[1]
    try:
        with pytest.raises(PortInUseError) as exc:
            run_tag([NdefRecord("text", "X", "en")], port, taps=1)
        assert isinstance(exc.value, OSError) and str(port) in str(exc.value)
        assert f"pid {os.getpid()}: " in str(exc.value)  # who holds it (here, this test)
        with pytest.raises(PortInUseError):
            run_phone("phone", port, taps=1)
    finally:
        holder.close()


def test_debug_logging_never_shows_card_data(nfc_sims, nfc_port, nfc_reader, caplog):
    # nfcpy logs every frame at DEBUG; with the application at DEBUG the PAN must still not reach the logs.
    import logging

    profile = load_profile("phone")
    caplog.set_level(logging.DEBUG)
    nfc_sims.phone(nfc_port, profile="phone", taps=2, mode="bad-tlv", bad_taps=1)
    reader = nfc_reader(nfc_port)
    with pytest.raises(CardError):
        _read(reader)
    assert isinstance(_read(reader), EmvCardRead)
    logged = caplog.text.lower()
    assert profile.pan not in logged and profile.pan.lower() not in logged.replace(" ", "")
    assert "nfc read on" in logged  # our own outcome line is there (code only)


def test_a_read_under_way_when_the_wait_runs_out_is_let_finish(nfc_port, nfc_reader):
    """The phone is sensed before the wait's end and its read runs past it (held here in the detection callback,
    which runs as the read begins): the read finishes and is returned, one GPO on the tap. It used to be cut off
    at the timeout, and the next wait read the phone again from the start."""
    from drivers.simulators.nfc_target import serve_isodep

    card = VirtualEmvCard(load_profile("phone"))
    gpos: list[bytes] = []

    def handler_for_tap(_n: int):
        card.reset()

        def process(apdu: bytes) -> bytes:
            if apdu[:2] == b"\x80\xa8":
                gpos.append(apdu)
            return card.process(apdu)

        return process

    reader = nfc_reader(nfc_port)
    phone = threading.Thread(target=serve_isodep, args=(handler_for_tap, nfc_port),
                             kwargs={"uid": load_profile("phone").uid, "taps": 1}, daemon=True)
    started = time.monotonic()
    phone.start()
    detected: list[float] = []

    def slow_start(_reader: str) -> None:
        detected.append(time.monotonic() - started)
        time.sleep(max(0.0, started + 1.3 - time.monotonic()))  # the read goes on past the 1 s wait

    read = reader.wait_for_card(TD, timeout=1.0, cancel=threading.Event(), on_detected=slow_start)
    assert detected and detected[0] < 1.0, detected
    assert time.monotonic() - started > 1.3
    assert isinstance(read, EmvCardRead) and read.masked_pan == mask_pan(load_profile("phone").pan)
    phone.join(10)
    assert len(gpos) == 1
