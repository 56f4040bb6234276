import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def unit():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(CONFIG_DIR / "smartpos.service")
    return parser


def test_service_is_notify_with_watchdog_and_hardening():
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "smartpos"
    assert service["User"] == "smartpos" and service["NoNewPrivileges"] == "yes"
    assert service["ExecStart"].split()[:2] == ["/opt/smartpos/bin/smartpos", "run"]  # see docs/terminal.md


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_unit(tmp_path):
    # Only the ExecStart binary may be missing on a development machine; every directive must be known.
    result = subprocess.run(["systemd-analyze", "verify", str(CONFIG_DIR / "smartpos.service")],
                            capture_output=True, text=True)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "is not executable" not in line and "/opt/smartpos/bin/smartpos" not in line]
    assert problems == []


def test_udev_rules_use_groups_the_service_joins():
    rules = (CONFIG_DIR / "99-smartpos.rules").read_text()
    groups = set(unit()["Service"]["SupplementaryGroups"].split())
    used = {part.split('"')[1] for line in rules.splitlines() if not line.startswith("#")
            for part in line.split(",") if part.strip().startswith("GROUP=")}
    assert used and used <= groups
