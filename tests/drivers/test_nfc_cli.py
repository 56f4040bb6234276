"""What a technician runs: `smartpos sim phone|tag` in one process, `smartpos read --reader udp:... --json` after."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from drivers.simulators.emv_card import load_profile
from protocol.carddata import mask_pan
from tests.harness.nfc import udp_port_bound
from tests.harness.procs import wait_until

SMARTPOS = str(Path(sys.executable).parent / "smartpos")


def _read_json(port: int) -> tuple[int, dict, str]:
    done = subprocess.run(
        [SMARTPOS, "read", "--reader", f"udp:127.0.0.1:{port}", "--timeout", "10", "--json"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else {}, done.stderr


def test_read_a_phone_from_the_command_line(procs, nfc_port):
    phone = procs.spawn([SMARTPOS, "sim", "phone", "--profile", "phone", "--port", str(nfc_port), "--taps", "1"],
                        name="sim-phone")  # fmt: skip
    wait_until(lambda: udp_port_bound(nfc_port), what="phone emulator")
    code, out, err = _read_json(nfc_port)
    profile = load_profile("phone")
    assert code == 0, err
    assert (out["kind"], out["masked_pan"], out["aid"], out["label"]) == (
        "emv", mask_pan(profile.pan), "A0000000031010", "WALLET VISA",
    )  # fmt: skip
    assert profile.pan not in json.dumps(out) and profile.pan not in err
    assert phone.wait(5) == 0


def test_read_a_member_tag_from_the_command_line(procs, nfc_port):
    procs.spawn([SMARTPOS, "sim", "tag", "--text", "MEMBER-0042", "--uri", "https://shop.example/c/SAVE10",
                 "--port", str(nfc_port), "--taps", "1"], name="sim-tag")  # fmt: skip
    wait_until(lambda: udp_port_bound(nfc_port), what="tag emulator")
    code, out, err = _read_json(nfc_port)
    assert code == 0, err
    assert out["kind"] == "ndef"
    assert [(r["type"], r["value"]) for r in out["records"]] == [
        ("text", "MEMBER-0042"), ("uri", "https://shop.example/c/SAVE10"),
    ]  # fmt: skip


def test_dropped_phone_is_a_one_line_failure(procs, nfc_port):
    procs.spawn([SMARTPOS, "sim", "phone", "--mode", "drop", "--port", str(nfc_port), "--taps", "1"],
                name="sim-bad-phone")  # fmt: skip
    wait_until(lambda: udp_port_bound(nfc_port), what="phone emulator")
    code, out, err = _read_json(nfc_port)
    assert code != 0
    assert out["error"]["code"] == "card_removed"
    assert "Traceback" not in err
