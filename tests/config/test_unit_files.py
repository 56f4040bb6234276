import configparser
import json
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


def test_service_keeps_restarting_except_after_a_config_error():
    parser = unit()
    assert parser["Unit"]["StartLimitIntervalSec"] == "0"
    assert parser["Service"]["Restart"] == "always" and float(parser["Service"]["RestartSec"]) >= 5
    assert "2" in parser["Service"]["RestartPreventExitStatus"].split()  # `smartpos run` exits 2 on bad config


def test_polkit_rule_allows_the_service_user_both_pcscd_actions():
    rule = (CONFIG_DIR / "50-smartpos-pcsc.rules").read_text()
    assert f'subject.user === "{unit()["Service"]["User"]}"' in rule
    for action in ("org.debian.pcsc-lite.access_pcsc", "org.debian.pcsc-lite.access_card"):
        assert f'action.id === "{action}"' in rule


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_polkit_rule_answers_yes_for_the_service_user_only(tmp_path):
    """The rule run as polkitd runs it (JavaScript calling polkit.addRule), with a stand-in polkit object."""
    harness = tmp_path / "run.js"
    harness.write_text(
        "const rules = [];\n"
        "const polkit = {Result: {YES: 'yes'}, addRule: (f) => rules.push(f)};\n"
        f"eval(require('fs').readFileSync({json.dumps(str(CONFIG_DIR / '50-smartpos-pcsc.rules'))}, 'utf8'));\n"
        "const ask = (id, user) => rules.map((f) => f({id}, {user})).find((r) => r !== undefined) || 'no';\n"
        "console.log(JSON.stringify([ask('org.debian.pcsc-lite.access_pcsc', 'smartpos'),\n"
        "  ask('org.debian.pcsc-lite.access_card', 'smartpos'), ask('org.debian.pcsc-lite.access_pcsc', 'alice'),\n"
        "  ask('org.freedesktop.login1.reboot', 'smartpos')]));\n"
    )
    result = subprocess.run(["node", str(harness)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["yes", "yes", "no", "no"]


def test_udev_rules_use_groups_the_service_joins():
    rules = (CONFIG_DIR / "99-smartpos.rules").read_text()
    service = unit()["Service"]
    groups = set(service["SupplementaryGroups"].split())
    used = {part.split('"')[1] for line in rules.splitlines() if not line.startswith("#")
            for part in line.split(",") if part.strip().startswith("GROUP=")}
    assert used and used <= groups | {service.get("Group") or service["User"]}
    # Groups Debian's base-passwd and Fedora's setup package both create: the unit naming one that does not exist
    # does not start (plugdev, Debian's, was listed).
    assert groups <= {"lp", "dialout"}
