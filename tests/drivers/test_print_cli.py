"""`smartpos sim printer` and `smartpos printer status|test` as a technician runs them (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from drivers.simulators.printer import control
from tests.harness.procs import wait_until

SMARTPOS = [sys.executable, "-c", "from terminal.cli import main; main()"]


def _run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SMARTPOS, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def sim(procs, tmp_path):
    proc = procs.spawn([*SMARTPOS, "sim", "printer", "--tcp", "127.0.0.1:0", "--pty", "--json",
                        "--out", str(tmp_path / "out")], name="simprinter")
    ready: dict = {}

    def started() -> bool:
        for line in procs.log_text("simprinter").splitlines():
            if line.startswith("{") and json.loads(line).get("event") == "ready":
                ready.update(json.loads(line))
                return True
        return False

    wait_until(started, timeout=15, what="virtual printer ready line")
    host, port = ready["control"].rsplit(":", 1)
    ready["control_address"] = (host, int(port))
    ready["proc"] = proc
    ready["out_dir"] = tmp_path / "out"
    return ready


def test_status_and_test_page_over_tcp_and_pty(sim):
    result = _run("printer", "status", "--printer", sim["tcp"], "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"] == "ok"
    for uri in (sim["tcp"], f"serial:{sim['pty']}"):
        result = _run("printer", "test", "--printer", uri)
        assert result.returncode == 0, result.stderr
        assert "test page sent" in result.stdout and "online, paper ok" in result.stdout
    wait_until(lambda: len(list(sim["out_dir"].glob("receipt-*.png"))) == 2, timeout=10, what="two receipts")
    text = (sim["out_dir"] / "receipt-0002.txt").read_text(encoding="utf-8")
    assert "PRINTER TEST" in text and "--- cut ---" in text


def test_paper_out_via_control_channel_and_signal(sim):
    assert control(sim["control_address"], "mode out")["mode"] == "out"
    result = _run("printer", "status", "--printer", sim["tcp"], "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["summary"] == "paper_out"
    result = _run("printer", "test", "--printer", sim["tcp"])
    assert result.returncode == 1 and "paper OUT" in result.stderr and "Traceback" not in result.stderr
    os.kill(sim["proc"].pid, signal.SIGUSR2)  # paper loaded
    wait_until(lambda: control(sim["control_address"], "status")["mode"] == "ok", timeout=5, what="mode ok")
    assert _run("printer", "status", "--printer", sim["tcp"]).returncode == 0
    assert control(sim["control_address"], "mode sideways")["ok"] is False


def test_bad_uri_and_no_printer_are_one_line_errors():
    result = _run("printer", "status", "--printer", "lpt1:")
    assert result.returncode != 0 and "unsupported printer URI" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = _run("printer", "status", "--printer", "tcp://127.0.0.1:1", "--json")
    assert result.returncode == 1 and json.loads(result.stdout)["online"] is False
