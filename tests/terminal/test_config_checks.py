"""`smartpos run --check` and `smartpos selftest` judge a config as the daemon's start would: what the daemon
refuses, they refuse, with one line naming the problem; a printer that cannot report status is no failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness.daemon import SMARTPOS, free_port, run_cli
from tests.harness.nfc import free_udp_port


def _config(tmp_path: Path, printer: str = "", readers: str = 'pcsc = false\nnfcpy = ["udp:127.0.0.1:30999"]') -> Path:
    path = tmp_path / "smartpos.toml"
    path.write_text(f'[terminal]\nstate_dir = "{tmp_path / "state"}"\n\n[api]\nport = {free_port()}\n\n'
                    f"[readers]\n{readers}\n\n[printer]\n{printer}\n")
    return path


@pytest.mark.parametrize("printer,readers,problem", [
    ('uri = "tcp://127.0.0.1:9100"\ncodepages = ["NOPE"]', None, "no codepage(s) NOPE"),
    ('uri = "tcp://127.0.0.1:9100"\nprofile = "NOPE"', None, "NOPE"),
    ("", "pcsc = false\nnfcpy = []", "no card reader configured"),
])
def test_run_check_refuses_what_the_daemon_would_refuse(tmp_path, printer, readers, problem):
    config = _config(tmp_path, printer, readers) if readers else _config(tmp_path, printer)
    checked = run_cli([*SMARTPOS, "run", "--check", "--config", str(config)])
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert problem in checked.stderr and "Traceback" not in checked.stderr
    started = run_cli([*SMARTPOS, "run", "--config", str(config)])  # the daemon itself refuses alike
    assert started.returncode == 2 and problem in started.stderr, started.stdout + started.stderr
    report = json.loads(run_cli([*SMARTPOS, "selftest", "--json", "--config", str(config)]).stdout)
    (config_check,) = [c for c in report["checks"] if c["check"] == "config"]
    assert not config_check["ok"] and problem in config_check["detail"]


def test_malformed_printer_uri_is_a_config_error_naming_the_key(tmp_path):
    config = _config(tmp_path, 'uri = "tcp://host:abc"')
    checked = run_cli([*SMARTPOS, "run", "--check", "--config", str(config)])
    assert checked.returncode == 2 and "printer.uri" in checked.stderr and "port must be a number" in checked.stderr
    selftest = run_cli([*SMARTPOS, "selftest", "--json", "--config", str(config)])
    report = json.loads(selftest.stdout)  # a report, not a crash
    assert selftest.returncode == 1 and report["checks"][0]["check"] == "config"


def test_printer_that_cannot_report_status_is_a_warning_not_a_failure(tmp_path):
    out = tmp_path / "lp0"
    out.write_bytes(b"")
    config = _config(tmp_path, f'uri = "file:{out}"\ncolumns = 32')
    assert run_cli([*SMARTPOS, "run", "--check", "--config", str(config)]).returncode == 0
    report = json.loads(run_cli([*SMARTPOS, "selftest", "--print", "--json", "--config", str(config)]).stdout)
    (printer,) = [c for c in report["checks"] if c["check"] == "printer"]
    assert printer["ok"] and "does not report status" in printer["detail"] and "test page sent" in printer["detail"]
    assert out.stat().st_size > 0
    status = run_cli([*SMARTPOS, "printer", "status", "--config", str(config)])
    assert status.returncode == 0 and "cannot report status" in status.stdout
    # `printer test` prints with the config's overrides, as the daemon does: 32 columns, not the profile's 48.
    out.write_bytes(b"")
    assert run_cli([*SMARTPOS, "printer", "test", "--config", str(config)]).returncode == 0
    from drivers.simulators.printer import VirtualPrinter

    paper = VirtualPrinter(columns=48, png=False)  # the virtual printer reads what a file: printer was sent
    session = paper.open_session()
    paper.handle(session, out.read_bytes())
    paper.end_session(session)
    text = "\n".join(receipt.text for receipt in paper.receipts)
    assert "TEST" in text.upper()
    (ruler,) = [line for line in text.splitlines() if line.startswith("0123456789")]
    assert len(ruler) == 32


def test_a_file_printer_whose_device_is_missing_fails(tmp_path):
    """No status to ask is no failure; a device node that is not there (printer unplugged: /dev/usb/lp0 gone) is."""
    config = _config(tmp_path, 'uri = "file:/dev/usb/lp-smartpos-missing"')
    status = run_cli([*SMARTPOS, "printer", "status", "--config", str(config)])
    assert status.returncode == 1 and "offline" in status.stdout and "No such file" in status.stdout
    report = json.loads(run_cli([*SMARTPOS, "selftest", "--json", "--config", str(config)]).stdout)
    (printer,) = [c for c in report["checks"] if c["check"] == "printer"]
    assert not printer["ok"] and "lp-smartpos-missing" in printer["detail"]
    present = tmp_path / "lp0"
    present.write_bytes(b"")
    config = _config(tmp_path, f'uri = "file:{present}"')
    status = run_cli([*SMARTPOS, "printer", "status", "--config", str(config)])
    assert status.returncode == 0 and "opens" in status.stdout


def test_selftest_opens_an_nfcpy_reader_no_daemon_holds_and_shows_warnings_as_warnings(tmp_path):
    """Before, with the daemon down an nfcpy reader was listed ok ("configured") without being opened, and a
    check that passed with a warning (no printer configured) showed a green ok in the table."""
    missing = _config(tmp_path, readers='pcsc = false\nnfcpy = ["usb:072f:ffff"]')
    report = json.loads(run_cli([*SMARTPOS, "selftest", "--json", "--config", str(missing)]).stdout)
    (reader,) = [c for c in report["checks"] if c["check"].startswith("reader ")]
    assert not reader["ok"] and not reader["warning"] and "configured" not in reader["detail"], reader
    # the udp driver opens without a peer: the reader is there (a port with a service name, like 9, the config
    # refuses: nfcpy cannot open it)
    udp = _config(tmp_path, readers=f'pcsc = false\nnfcpy = ["udp:127.0.0.1:{free_udp_port()}"]')
    done = run_cli([*SMARTPOS, "selftest", "--json", "--config", str(udp)])
    (reader,) = [c for c in json.loads(done.stdout)["checks"] if c["check"].startswith("reader ")]
    assert reader["ok"] and reader["detail"].startswith("ready"), reader
    table = run_cli([*SMARTPOS, "selftest", "--config", str(udp)], env={"COLUMNS": "200"}).stdout
    (printer_row,) = [line for line in table.splitlines() if "printer" in line]
    assert "warn" in printer_row and "none configured" in printer_row and " ok " not in printer_row
