"""Card reading through the real stack: pyscard -> private pcscd -> vpcd -> virtual card (TCP client)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from drivers.cardread import EmvCardRead, UidCardRead
from drivers.emv import TerminalData
from drivers.errors import (
    UNAVAILABLE_GRACE_S,
    CardDataError,
    CardError,
    CardRemovedError,
    CardStatusError,
    ReaderUnavailableError,
    ReadTimeout,
)
from drivers.pcsc import PcscReaders
from drivers.readers import MultiReader
from drivers.simulators.pcscd import PrivatePcscd
from drivers.simulators.vpcd import VpcdCard
from tests.harness.pcsc import READER, reader_empty, started_readers
from tests.harness.procs import wait_until

pytestmark = pytest.mark.pcscd

TD = TerminalData(amount_minor=1250, currency="EUR")


@pytest.fixture
def readers(private_pcscd):
    with started_readers(READER) as r:
        yield r


@pytest.mark.parametrize(
    ("profile", "mode", "masked", "aid", "label", "expiry", "scheme"),
    [
        ("visa", None, "476173******0010", "A0000000031010", "VISA CREDIT", "2812", "visa"),
        ("mastercard", None, "541333******0434", "A0000000041010", "MASTERCARD", "2711", "mastercard"),
        ("phone", None, "489537******3478", "A0000000031010", "WALLET VISA", "2906", "visa"),
        ("mastercard", "t0", "541333******0434", "A0000000041010", "MASTERCARD", "2711", "mastercard"),
        ("visa", "no-ppse", "476173******0010", "A0000000031010", "VISA CREDIT", "2812", "visa"),
    ],
)
def test_reads_each_profile_through_pcscd(readers, tap, profile, mode, masked, aid, label, expiry, scheme):
    card = tap(profile, mode=mode)
    sensed: list[tuple[str, float, int]] = []  # reader, when, APDUs the card had answered by then
    result = readers.wait_for_card(TD, timeout=10, cancel=threading.Event(),
                                   on_detected=lambda name: sensed.append((name, time.monotonic(), card.apdus_served)))
    assert isinstance(result, EmvCardRead)
    # told once, as the read began (the card connected, no command answered yet): the "reading" cue
    assert [(name, apdus) for name, _, apdus in sensed] == [(READER, 0)]
    assert result.detected_at <= sensed[0][1] <= result.read_at
    assert (result.masked_pan, result.aid, result.label, result.expiry, result.scheme) == (
        masked, aid, label, expiry, scheme
    )  # fmt: skip
    assert result.reader == READER
    assert result.wallet is (profile == "phone")
    assert result.cryptogram["9F02"] == "000000001250"
    assert result.read_at >= result.detected_at
    assert card.wait(5)
    assert card.results[0].ended == "powered_off"  # the reader finished and powered the card off


def test_card_left_on_the_reader_is_read_once(readers, tap):
    tap("visa", stay=True)
    first = readers.wait_for_card(TD, timeout=10, cancel=threading.Event())
    assert first.masked_pan == "476173******0010"
    with pytest.raises(ReadTimeout):
        readers.wait_for_card(TD, timeout=1.0, cancel=threading.Event())
    assert readers.status()["state"] == "card_present"


def test_next_card_right_after_the_previous_one_is_read(private_pcscd, readers, tap):
    # The second card connects at once, before pcscd's presence poll has seen the first one leave: both the
    # running reader layer and a freshly started one (as `smartpos read` is) must still read it.
    first = tap("mastercard")
    assert readers.wait_for_card(TD, timeout=10, cancel=threading.Event()).label == "MASTERCARD"
    assert first.wait(5)
    tap("visa")
    assert readers.wait_for_card(TD, timeout=10, cancel=threading.Event()).label == "VISA CREDIT"
    readers.close()
    fresh = PcscReaders(READER)
    try:
        tap("uid")
        result = fresh.wait_for_card(TD, timeout=10, cancel=threading.Event())
        assert isinstance(result, UidCardRead) and result.uid == "7A3C91E2"
    finally:
        fresh.close()


def test_uid_only_card_gives_its_uid(readers, tap):
    tap("uid")
    result = readers.wait_for_card(TD, timeout=10, cancel=threading.Event())
    assert isinstance(result, UidCardRead)
    assert result.uid == "7A3C91E2"
    assert result.to_public_dict()["kind"] == "uid"


@pytest.mark.parametrize(
    ("mode", "error", "code"),
    [
        ("bad-tlv", CardDataError, "card_data"),
        ("wrong-length", CardDataError, "card_data"),
        ("error-sw", CardStatusError, "card_status"),
        ("drop", CardRemovedError, "card_removed"),
    ],
)
def test_bad_card_gives_typed_failure_and_next_tap_reads(readers, tap, mode, error, code):
    tap("visa", mode=mode, taps=2, bad_taps=1)
    with pytest.raises(error) as failed:
        readers.wait_for_card(TD, timeout=10, cancel=threading.Event())
    assert failed.value.code == code
    assert "4761739001010010" not in str(failed.value)
    result = readers.wait_for_card(TD, timeout=10, cancel=threading.Event())
    assert result.masked_pan == "476173******0010"


def test_card_removed_mid_read(readers, tap):
    # The card leaves the field after answering PPSE and SELECT: the GPO gets no answer.
    card = tap("mastercard", drop_after_apdus=2)
    with pytest.raises(CardRemovedError):
        readers.wait_for_card(TD, timeout=10, cancel=threading.Event())
    assert card.wait(5) and card.results[0].ended == "dropped"
    assert readers.status()["state"] in ("ready", "card_present")


def test_no_card_times_out_and_cancel_is_prompt(readers):
    start = time.monotonic()
    with pytest.raises(ReadTimeout) as timed_out:
        readers.wait_for_card(TD, timeout=0.3, cancel=threading.Event())
    assert timed_out.value.code == "timeout"
    assert time.monotonic() - start < 1.0

    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    start = time.monotonic()
    with pytest.raises(ReadTimeout) as cancelled:
        readers.wait_for_card(TD, timeout=30, cancel=cancel)
    assert cancelled.value.code == "cancelled"
    assert time.monotonic() - start < 0.5


def test_multireader_reads_from_either_pcsc_reader(private_pcscd, tap):
    other = VpcdCard("phone", "127.0.0.1", private_pcscd.vpcd_ports[1], taps=1)
    multi = MultiReader([PcscReaders(PrivatePcscd.READER_NAMES[0]), PcscReaders(PrivatePcscd.READER_NAMES[1])])
    try:
        other.start()
        result = multi.wait_for_card(TD, timeout=10, cancel=threading.Event())
        assert result.reader == PrivatePcscd.READER_NAMES[1]
        assert result.label == "WALLET VISA"
        status = multi.status()
        assert status["stack"] == "multi" and len(status["readers"]) == 2
    finally:
        other.stop()
        multi.close()
        reader_empty(private_pcscd, PrivatePcscd.READER_NAMES[1])


def _smartpos(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("smartpos")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from terminal.cli import main; main()"]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _cli_env(private_pcscd: PrivatePcscd, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "smartpos.toml"
    config.write_text("[readers]\npcsc = true\n")
    return {**os.environ, **private_pcscd.env, "SMARTPOS_CONFIG": str(config)}


def test_cli_read_json(private_pcscd, tap, tmp_path):
    tap("mastercard")
    out = _smartpos("read", "--reader", "PCD 00 00", "--timeout", "10", "--json", env=_cli_env(private_pcscd, tmp_path))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["kind"] == "emv"
    assert (data["scheme"], data["masked_pan"], data["aid"], data["label"]) == (
        "mastercard", "541333******0434", "A0000000041010", "MASTERCARD"
    )  # fmt: skip
    assert "5413330089010434" not in out.stdout + out.stderr


def test_cli_read_failure_and_timeout(private_pcscd, tap, tmp_path):
    env = _cli_env(private_pcscd, tmp_path)
    tap("visa", mode="error-sw")
    out = _smartpos("read", "--reader", "PCD 00 00", "--timeout", "10", "--json", env=env)
    assert out.returncode == 1
    assert json.loads(out.stdout)["error"]["code"] == "card_status"
    assert "Traceback" not in out.stderr
    assert reader_empty(private_pcscd)

    out = _smartpos("read", "--reader", "PCD 00 00", "--timeout", "0.5", env=env)
    assert out.returncode == 3
    assert "no card presented" in out.stderr and "Traceback" not in out.stderr

    # A reader name that matches nothing is a failed read said at once (exit 1), not a timeout (exit 3) after 60 s.
    out = _smartpos("read", "--reader", "NO SUCH READER", "--timeout", "60", env=env)
    assert out.returncode == 1 and "no PC/SC reader matches 'NO SUCH READER'" in out.stderr


def test_reader_layer_survives_pcscd_restart(private_pcscd, readers, tap):
    private_pcscd.stop()
    deadline = time.monotonic() + 5
    while readers.status()["state"] != "error" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert readers.status()["state"] == "error"
    with pytest.raises(ReadTimeout):
        readers.wait_for_card(TD, timeout=0.3, cancel=threading.Event())

    private_pcscd.start()
    assert readers.wait_ready(10), readers.status()
    assert readers.restarts >= 1
    tap("visa")
    result = readers.wait_for_card(TD, timeout=10, cancel=threading.Event())
    assert result.masked_pan == "476173******0010"


def test_pcscd_dying_mid_read_is_a_typed_failure_and_the_layer_recovers(private_pcscd, readers, tap):
    card = tap("mastercard", apdu_delay=0.2)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            readers.wait_for_card(TD, timeout=10, cancel=threading.Event())
        except BaseException as exc:  # recorded: the assertion below says which kind it must be
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_until(lambda: card.apdus_served >= 1, timeout=10, what="the read to start")
    private_pcscd.stop()
    waiter.join(10)
    assert not waiter.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ReaderUnavailableError | CardRemovedError), outcome
    assert isinstance(outcome[0], CardError)

    private_pcscd.start()
    assert readers.wait_ready(10), readers.status()
    card.stop()
    tap("phone")
    assert readers.wait_for_card(TD, timeout=10, cancel=threading.Event()).label == "WALLET VISA"


def test_multireader_keeps_reading_on_the_working_stack_while_another_is_unavailable(private_pcscd):
    """One stack down (here: a filter matching no reader) must not stop a tap on the other from paying; only when
    every stack is unavailable does the wait say so."""
    from drivers.errors import ReaderUnavailableError

    card = VpcdCard("visa", "127.0.0.1", private_pcscd.vpcd_ports[1], taps=1)
    missing = PcscReaders("no such reader anywhere")
    multi = MultiReader([missing, PcscReaders(PrivatePcscd.READER_NAMES[1])])
    timer = threading.Timer(2.0, card.start)  # after the missing stack's grace (1 s) has run out
    try:
        timer.start()
        result = multi.wait_for_card(TD, timeout=10, cancel=threading.Event())
        assert result.reader == PrivatePcscd.READER_NAMES[1] and result.label == "VISA CREDIT"
        both_missing = MultiReader([PcscReaders("no such reader anywhere"), PcscReaders("nor this one")])
        try:
            with pytest.raises(ReaderUnavailableError):
                both_missing.wait_for_card(TD, timeout=5, cancel=threading.Event())
        finally:
            both_missing.close()
    finally:
        timer.cancel()
        card.stop()
        multi.close()
        reader_empty(private_pcscd, PrivatePcscd.READER_NAMES[1])


# ----- one presentation, one read; a stack that is down -------------------------------------------------------


def _wait(readers: PcscReaders, timeout: float, cancel: threading.Event | None = None):
    return readers.wait_for_card(TD, timeout=timeout, cancel=cancel or threading.Event())


def _slow_card_in_the_reader(readers: PcscReaders, tap):
    # A slow card (~1 s for the whole read) that stays on the reader until the test ends.
    card = tap("visa", stay=True, apdu_delay=0.1)
    wait_until(lambda: readers.status()["state"] == "card_present", timeout=10, what="the card in the reader")
    return card


def test_a_read_under_way_when_the_wait_runs_out_is_let_finish(readers, tap):
    """The wait's time runs out while the card is being read, as it may at the end of the payment flow's wait
    slices: the read finishes and is returned. (It used to be cut off and read again from the start by the next
    wait: a second GPO and cryptogram on one tap, the front end flickering reading -> waiting -> reading.)"""
    card = _slow_card_in_the_reader(readers, tap)
    started = time.monotonic()
    read = _wait(readers, 0.3)
    assert time.monotonic() - started > 0.3  # returned after its timeout, once the read was done
    assert isinstance(read, EmvCardRead) and read.masked_pan == "476173******0010"
    assert read.cryptogram["9F02"] == "000000001250"
    served = card.apdus_served
    with pytest.raises(ReadTimeout):  # still on the reader: that presentation has been used
        _wait(readers, 1.5)
    assert card.apdus_served == served  # one read of the tap, nothing sent to the card after it


def test_read_cut_off_by_a_cancel_is_not_read_for_the_next_sale(readers, tap):
    # Cancelled while its card was being read: that card was presented for the cancelled sale, and lying on
    # the reader it must not pay for the next one.
    card = _slow_card_in_the_reader(readers, tap)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(ReadTimeout) as cancelled:
        _wait(readers, 10, cancel)
    assert cancelled.value.code == "cancelled"
    assert card.apdus_served < 10
    with pytest.raises(ReadTimeout):
        _wait(readers, 2.5)


def test_pcscd_down_raises_reader_unavailable_with_the_detail(private_pcscd, readers, tap):
    private_pcscd.stop()
    try:
        wait_until(lambda: readers.status()["state"] == "error", timeout=5, what="the layer to see pcscd gone")
        started = time.monotonic()
        with pytest.raises(ReaderUnavailableError) as unavailable:
            _wait(readers, 5)
        assert UNAVAILABLE_GRACE_S <= time.monotonic() - started < UNAVAILABLE_GRACE_S + 1.0
        assert "pcscd not reachable" in unavailable.value.message
        assert readers.status()["detail"] in unavailable.value.message
    finally:
        private_pcscd.start()
    assert readers.wait_ready(10), readers.status()
    tap("visa")
    assert _wait(readers, 10).masked_pan == "476173******0010"


def test_no_matching_reader_raises_reader_unavailable(private_pcscd):
    readers = PcscReaders("NO SUCH READER")
    try:
        with pytest.raises(ReaderUnavailableError) as unavailable:
            _wait(readers, 5)
        assert "no PC/SC reader matches 'NO SUCH READER'" in unavailable.value.message
    finally:
        readers.close()


@pytest.mark.parametrize("states, expected", [
    (["unavailable", "unavailable"], "unavailable"),  # every reader listed, none usable: it used to say "ready"
    (["unavailable", "empty"], "ready"),
    (["mute"], "ready"),  # a card that does not answer on a working reader
    (["empty", "card_present"], "card_present"),
    (["unknown"], "unknown"),
    ([], "absent"),
])
def test_overall_state_is_ready_only_with_a_reader_that_can_take_a_card(states, expected):
    from drivers.pcsc import overall_state

    readers = [{"name": f"Reader {i}", "state": s} for i, s in enumerate(states)]
    state, detail = overall_state(True, readers)
    assert state == expected
    if expected == "unavailable":
        assert detail == "no usable reader: Reader 0, Reader 1 unavailable"
    assert overall_state(False, readers)[0] == "error"  # pcscd itself gone
    assert MultiReader([_FixedStatus("a", state), _FixedStatus("b", "absent")]).status()["state"] == expected


class _FixedStatus:
    def __init__(self, name: str, state: str) -> None:
        self.name, self.state = name, state

    def status(self) -> dict:
        return {"name": self.name, "state": self.state}


def test_a_card_another_program_has_connected_is_not_read_beside_it(readers, tap):
    """The read connects exclusively: no other program's commands come between its own (another PC/SC client
    reading the same tap used to get its own GPO and cryptogram in the middle of the payment's). It waits for the
    other program to let go, then reads the card."""
    from smartcard import scard as sc

    card = tap("visa", taps=2)
    wait_until(lambda: readers.status()["state"] == "card_present", timeout=10, what="the card in the reader")
    name = readers.reader_names()[0]
    hr, ctx = sc.SCardEstablishContext(sc.SCARD_SCOPE_USER)
    assert hr == 0
    hr, handle, _protocol = sc.SCardConnect(ctx, name, sc.SCARD_SHARE_SHARED,
                                            sc.SCARD_PROTOCOL_T0 | sc.SCARD_PROTOCOL_T1)
    assert hr == 0, hex(hr & 0xFFFFFFFF)
    # A wait that ends while the card is held says so (the payment shows it), rather than "no card presented".
    with pytest.raises(ReaderUnavailableError, match="in use by another program"):
        readers.wait_for_card(TD, timeout=1.0, cancel=threading.Event())
    outcome: dict = {}

    def wait() -> None:
        try:
            outcome["read"] = readers.wait_for_card(TD, timeout=15, cancel=threading.Event())
        except CardError as exc:
            outcome["error"] = exc

    waiting = threading.Thread(target=wait)
    waiting.start()
    try:
        time.sleep(1.5)  # several polls, each finding the card held
        assert card.apdus_served == 0 and outcome == {}
    finally:
        sc.SCardDisconnect(handle, sc.SCARD_LEAVE_CARD)
        sc.SCardReleaseContext(ctx)
    waiting.join(15)
    assert outcome.get("read") is not None, outcome
    assert outcome["read"].masked_pan == "476173******0010"
