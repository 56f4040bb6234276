import os
import tomllib
from pathlib import Path

import pytest

from config.loading import ConfigError, config_path, load_settings, parse_settings
from config.settings import DEFAULT_STATE_DIR, Settings

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "smartpos.toml"


def write(tmp_path, text):
    path = tmp_path / "smartpos.toml"
    path.write_text(text)
    return path


def test_defaults_without_any_file():
    settings, path = load_settings(None, environ={})
    assert path == Path("/etc/smartpos/smartpos.toml") or path.exists()
    assert settings.api.host == "127.0.0.1"
    assert settings.api.port == 8470
    assert settings.terminal.state_dir == DEFAULT_STATE_DIR
    assert settings.payments.mode == "prefer-online"


def test_shipped_default_file_is_valid_and_equals_the_defaults():
    settings = parse_settings(tomllib.loads(SHIPPED.read_text()), path=Path("/etc/smartpos/smartpos.toml"))
    assert settings == Settings()


def test_accepts_exactly_what_enrollment_writes(tmp_path):
    path = write(
        tmp_path,
        '[terminal]\nid = "T-0042"\nstate_dir = "/srv/pos"\n\n[headoffice]\nurl = "http://127.0.0.1:8480/"\n',
    )
    settings, _ = load_settings(path, environ={})
    assert settings.terminal.id == "T-0042"
    assert settings.state_dir == Path("/srv/pos")
    assert settings.headoffice.url == "http://127.0.0.1:8480"


def test_relative_state_dir_is_next_to_the_config_file(tmp_path):
    path = write(tmp_path, '[terminal]\nstate_dir = "state"\n')
    settings, _ = load_settings(path, environ={})
    assert settings.state_dir == tmp_path / "state"


def test_home_relative_state_dir_is_the_users_home(tmp_path):
    path = write(tmp_path, '[terminal]\nstate_dir = "~/spos"\n')
    settings, _ = load_settings(path, environ={})
    assert settings.state_dir == Path.home() / "spos"


def test_nfcpy_paths_the_driver_opens_are_accepted(tmp_path):
    from drivers.nfc_reader import is_nfcpy_path

    paths = ["usb", "usb:072f:2200", "usb:001:004", "tty:USB0:pn532", "com:COM3", "udp", "udp:127.0.0.1:54321"]
    path = write(tmp_path, "[readers]\nnfcpy = [" + ", ".join(f'"{p}"' for p in paths) + "]\n")
    assert list(load_settings(path, environ={})[0].readers.nfcpy) == paths
    assert all(is_nfcpy_path(p) for p in paths)


def test_lookup_order_flag_then_environment_then_default(tmp_path):
    assert config_path("a.toml", {"SMARTPOS_CONFIG": "b.toml"}) == Path("a.toml")
    assert config_path(None, {"SMARTPOS_CONFIG": "b.toml"}) == Path("b.toml")
    assert config_path(None, {}) == Path("/etc/smartpos/smartpos.toml")


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[payments]\nmode = \"fast\"\n", "payments.mode", "prefer-online"),
        ("[payments]\nonline_timeout = 3\n", "payments.online_timeout", "unknown key"),
        ("[paymnets]\nmode = \"force-offline\"\n", "paymnets", "unknown key"),
        ("[api]\nport = 70000\n", "api.port", "65535"),
        ("[api]\nport = \"8470\"\n", "api.port", "integer"),
        ("[api]\nhost = \"0.0.0.0\"\n", "api", "token"),
        ("[headoffice]\nurl = \"ftp://x\"\n", "headoffice.url", "http"),
        ("[printer]\nuri = \"lpt1\"\n", "printer.uri", "tcp://"),
        ("[card_data]\npan_mask = \"all\"\n", "card_data.pan_mask", "bin6"),
        ("[payments]\ncurrency = \"EURO\"\n", "payments.currency", "ISO 4217"),
        ("[readers]\nnfcpy = [\"udp:1\", \"udp:1\"]\n", "readers.nfcpy", "twice"),
        ("[sync]\npage_size = 0\n", "sync.page_size", "greater than or equal to 1"),
        ("[printer]\ntimezone = \"Mars/Olympus\"\n", "printer.timezone", "unknown time zone"),
        ("[printer]\nuri = \"tcp://host:abc\"\n", "printer.uri", "port must be a number"),
        ("[risk]\ntxn_limit_minor = \"100\"\n", "risk", "txn_limit_minor: Input should be a valid integer"),
        ("[metrics]\nhost = \"not a host\"\nport = 9101\n", "metrics.host", "not an IP address or host name"),
        ("[metrics]\nhost = \"999.1.1.1\"\n", "metrics.host", "not an IP address or host name"),
        ("[api]\nhost = \"127.0.0.1:8470\"\n", "api.host", "not an IP address or host name"),
        # a bad port or host is reported naming the key, not at the first request as a bare "Invalid port"
        ("[headoffice]\nurl = \"https://hq.example.com:443x\"\n", "headoffice.url", "Invalid port"),
        ("[headoffice]\nurl = \"http://a b\"\n", "headoffice.url", "spaces"),
        # what the config takes, the nfcpy driver opens (before: the daemon refused these at start, exit 1)
        ("[readers]\nnfcpy = [\"foo:bar\"]\n", "readers.nfcpy", "not an nfcpy device path"),
        ("[readers]\nnfcpy = [\"USB:072f:2200\"]\n", "readers.nfcpy", "not an nfcpy device path"),
        ("[readers]\nnfcpy = [\"udp:nohost:notaport\"]\n", "readers.nfcpy", "not an nfcpy device path"),
        # nfcpy's udp driver reads the service name of a named port (9: "discard") as the port number and fails
        ("[readers]\nnfcpy = [\"udp:127.0.0.1:9\"]\n", "readers.nfcpy", "service name ('discard'"),
        ("[payments]\ncountry_code = 1000\n", "payments.country_code", "less than or equal to 999"),
    ],
)
def test_bad_key_or_value_is_one_line_naming_the_key(tmp_path, text, key, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert "\n" not in message
    assert f": {key}:" in message
    assert problem in message
    assert info.value.key == key


def test_token_value_is_never_echoed(tmp_path):
    path = write(tmp_path, '[api]\ntoken = "short-secret"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert "api.token" in str(info.value)
    assert "short-secret" not in str(info.value)


def test_non_loopback_api_with_token_is_accepted(tmp_path):
    path = write(tmp_path, '[api]\nhost = "0.0.0.0"\ntoken = "0123456789abcdef0123"\n')
    settings, _ = load_settings(path, environ={})
    assert settings.api.token == "0123456789abcdef0123"


def test_invalid_toml_names_the_line(tmp_path):
    path = write(tmp_path, "[payments\nmode = 1\n")
    with pytest.raises(ConfigError, match=r"invalid TOML.*line 1"):
        load_settings(path, environ={})


def test_missing_file_that_was_asked_for_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(None, environ={"SMARTPOS_CONFIG": os.fspath(tmp_path / "nope.toml")})


def test_whole_numbers_are_fine_for_seconds(tmp_path):
    path = write(tmp_path, "[payments]\nonline_timeout_s = 2\ncard_timeout_s = 30\n")
    settings, _ = load_settings(path, environ={})
    assert settings.payments.online_timeout_s == 2.0
    assert settings.payments.card_timeout_s == 30.0


def test_risk_overrides_use_the_risk_rules_names_and_types(tmp_path):
    path = write(tmp_path, "[risk]\ntxn_limit_minor = 2000\n")
    settings, _ = load_settings(path, environ={})
    assert settings.risk == {"txn_limit_minor": 2000}
    with pytest.raises(ConfigError, match=r": risk: unknown risk parameter 'txn_limit'"):
        load_settings(write(tmp_path, "[risk]\ntxn_limit = 2000\n"), environ={})
    with pytest.raises(ConfigError, match=r": risk: txn_limit_minor: .*greater than or equal to 0"):
        load_settings(write(tmp_path, "[risk]\ntxn_limit_minor = -1\n"), environ={})


def test_the_shops_country_is_what_the_card_is_told(tmp_path):
    """EMV 9F1A, the terminal country code, comes from [payments] country_code (it was always 0276, Germany)."""
    from types import SimpleNamespace

    from terminal.daemon import terminal_data

    settings = load_settings(write(tmp_path, "[payments]\ncountry_code = 250\n"), environ={})[0]
    enrollment = SimpleNamespace(merchant={"name": "Boulangerie"}, terminal_id="T-1")
    td = terminal_data(settings, enrollment, {"amount_minor": 1250, "currency": "EUR", "type": "sale"})
    assert td.values(bytes(4))[0x9F1A] == bytes.fromhex("0250")
    default = terminal_data(Settings(), enrollment, {"amount_minor": 1, "currency": "EUR", "type": "refund"})
    assert default.values(bytes(4))[0x9F1A] == bytes.fromhex("0276") and default.values(bytes(4))[0x9C] == b"\x20"
