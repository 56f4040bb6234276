"""`smartpos sim card|pcscd|phone|tag` as integrators run them (subprocesses, stopped by PID)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from drivers.cardread import EmvCardRead
from drivers.emv import TerminalData
from drivers.pcsc import PcscReaders
from tests.harness.nfc import free_udp_port
from tests.harness.pcsc import READER, reader_empty
from tests.harness.procs import wait_until

pytestmark = pytest.mark.pcscd

CLI = [sys.executable, "-c", "from terminal.cli import main; main()"]


def test_sim_card_taps_a_profile_on_the_private_pcscd(private_pcscd, procs):
    readers = PcscReaders(READER)
    try:
        assert readers.wait_ready(10)
        assert reader_empty(private_pcscd)
        card = procs.spawn([*CLI, "sim", "card", "--profile", "phone", "--port", str(private_pcscd.vpcd_ports[0]),
                            "--taps", "1"], name="sim-card")  # fmt: skip
        result = readers.wait_for_card(TerminalData(amount_minor=500), timeout=15, cancel=threading.Event())
        assert isinstance(result, EmvCardRead)
        assert (result.masked_pan, result.label, result.wallet) == ("489537******3478", "WALLET VISA", True)
        card.wait(10)
        assert card.returncode == 0
        assert "tap 1: 4 APDUs, ended: powered_off" in procs.log_text("sim-card")
    finally:
        readers.close()
        reader_empty(private_pcscd)


def test_sim_card_rejects_unknown_profile_in_one_line():
    out = subprocess.run([*CLI, "sim", "card", "--profile", "nope"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "unknown card profile 'nope'" in out.stderr
    assert "Traceback" not in out.stderr


def test_sim_pcscd_runs_a_private_pcscd_until_stopped(procs):
    proc = procs.spawn([*CLI, "sim", "pcscd"], name="sim-pcscd")
    wait_until(lambda: "export PCSCLITE_CSOCK_NAME=" in procs.log_text("sim-pcscd"), timeout=15, what="env line")
    text = procs.log_text("sim-pcscd")
    sock = re.search(r"export PCSCLITE_CSOCK_NAME=(\S+)", text).group(1)
    pid = int(re.search(r"pcscd running \(pid (\d+)\)", text).group(1))
    assert Path(sock).exists()
    # A separate client process sees the private readers through that socket.
    out = subprocess.run(
        [sys.executable, "-c", "from smartcard.System import readers; print([str(r) for r in readers()])"],
        env={**os.environ, "PCSCLITE_CSOCK_NAME": sock}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Virtual PCD 00 00" in out.stdout, out.stderr
    procs.stop(proc)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=10, what="pcscd to exit")


def test_sim_phone_and_tag_read_by_smartpos_read_over_nfcpy_udp(procs, tmp_path):
    port = free_udp_port()
    config = tmp_path / "smartpos.toml"
    config.write_text("[readers]\npcsc = false\n")
    env = {**os.environ, "SMARTPOS_CONFIG": str(config)}
    phone = procs.spawn([*CLI, "sim", "phone", "--port", str(port), "--taps", "1"], name="sim-phone")
    out = subprocess.run([*CLI, "read", "--reader", f"udp:127.0.0.1:{port}", "--timeout", "15", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["kind"], data["masked_pan"], data["label"], data["wallet"]) == (
        "emv", "489537******3478", "WALLET VISA", True
    )  # fmt: skip
    phone.wait(10)

    tag = procs.spawn([*CLI, "sim", "tag", "--port", str(port), "--taps", "1", "--text", "MEMBER-0042",
                       "--uri", "https://example.com/coupon/7"], name="sim-tag")  # fmt: skip
    out = subprocess.run([*CLI, "read", "--nfc", f"udp:127.0.0.1:{port}", "--timeout", "15", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["kind"] == "ndef"
    assert [(r["type"], r["value"]) for r in data["records"]] == [
        ("text", "MEMBER-0042"), ("uri", "https://example.com/coupon/7")
    ]  # fmt: skip
    tag.wait(10)
    assert "tap 1:" in procs.log_text("sim-tag")


def test_sim_card_with_no_reader_listening_says_what_it_waits_for():
    """No vpcd on the port: the card keeps trying (pcscd may come up) but says why nothing happens."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*CLI, "sim", "card", "--profile", "visa", "--port", str(port), "--taps", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(30, proc.kill)  # if the note never comes, readline returns at the kill
    guard.start()
    try:
        line = proc.stderr.readline()  # blocks until the note (after a few seconds of trying)
        assert f"no vpcd reader answers on 127.0.0.1:{port}" in line and "smartpos sim pcscd" in line
        assert proc.poll() is None  # still trying
    finally:
        guard.cancel()
        proc.terminate()
        proc.wait(10)
