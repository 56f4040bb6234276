"""Printer URIs, profiles and status bytes (pure)."""

from __future__ import annotations

import pytest

from drivers.printer import (
    PrinterStatus,
    PrinterUriError,
    load_profile,
    parse_online,
    parse_paper,
    parse_uri,
)
from protocol.errors import ValidationError


@pytest.mark.parametrize(
    "uri,scheme,target,options",
    [
        ("tcp://192.168.1.50:9100", "tcp", "192.168.1.50:9100", {}),
        ("tcp://printer.local", "tcp", "printer.local:9100", {}),
        ("tcp://[::1]:9101", "tcp", "[::1]:9101", {}),
        ("usb://04b8:0E15", "usb", "04b8:0e15", {}),
        ("usb://0416:5011?in_ep=0x81&out_ep=0x03", "usb", "0416:5011", {"in_ep": "0x81", "out_ep": "0x03"}),
        ("serial:/dev/ttyS0?baudrate=19200", "serial", "/dev/ttyS0", {"baudrate": "19200"}),
        ("serial:/dev/ttyS0?baudrate=115200&bytesize=7&stopbits=1.5", "serial", "/dev/ttyS0",
         {"baudrate": "115200", "bytesize": "7", "stopbits": "1.5"}),
        ("serial:socket://127.0.0.1:7000", "serial", "socket://127.0.0.1:7000", {}),
        ("serial:loop://?logging=debug&baudrate=9600", "serial", "loop://?logging=debug", {"baudrate": "9600"}),
        ("serial:rfc2217://host:2217?rtscts=1", "serial", "rfc2217://host:2217", {"rtscts": "1"}),
        ("file:/dev/usb/lp0", "file", "/dev/usb/lp0", {}),
        ("file:///tmp/out.bin?status=0", "file", "/tmp/out.bin", {"status": "0"}),
    ],
)
def test_parses_every_connection_kind(uri, scheme, target, options):
    parsed = parse_uri(uri)
    assert (parsed.scheme, parsed.target, parsed.options) == (scheme, target, options)


@pytest.mark.parametrize(
    "uri",
    ["", "lpt1", "http://x", "tcp://:9100", "tcp://host:abc", "tcp://host:70000", "usb://zz:1", "usb://04b8",
     "serial:", "serial:ttyS0", "serial:/dev/ttyS0?baudrate=fast", "file:relative/path", "usb://04b8:0e15?speed=1",
     "usb://04b8:0202?in_ep=zz", "usb://04b8:0202?out_ep=0x1ff", "serial:socket://", "serial:socket://nohost",
     "serial:rfc2217://host:port", "tcp://",
     # numbers pyserial cannot take (they used to pass here and kill the print spooler at its first connect)
     "serial:/dev/ttyS0?baudrate=nan", "serial:/dev/ttyS0?baudrate=1e400", "serial:/dev/ttyS0?baudrate=inf",
     "serial:/dev/ttyS0?baudrate=9600.5", "serial:/dev/ttyS0?baudrate=0", "serial:/dev/ttyS0?bytesize=nan",
     "serial:/dev/ttyS0?bytesize=9", "serial:/dev/ttyS0?stopbits=3", "serial:/dev/ttyS0?stopbits=nan"],
)
def test_bad_uris_give_one_clear_typed_error(uri):
    with pytest.raises(PrinterUriError) as err:
        parse_uri(uri)
    assert err.value.code == "invalid_printer_uri"
    assert "\n" not in err.value.message


def test_status_enabled_defaults():
    assert parse_uri("tcp://h:1").status_enabled
    assert not parse_uri("file:/dev/usb/lp0").status_enabled
    assert not parse_uri("tcp://h:1?status=0").status_enabled


@pytest.mark.parametrize(
    "online_byte,paper_byte,summary",
    [(0x12, 0x12, "ok"), (0x12, 0x1E, "paper_low"), (0x1A, 0x72, "paper_out"), (0x1A, 0x12, "offline"),
     (None, None, "unknown"), (0x12, None, "unknown"), (0xFF, 0x12, "unknown"), (0x12, 0x00, "unknown")],
)
def test_status_bytes_and_no_reply_is_never_paper_ok(online_byte, paper_byte, summary):
    status = PrinterStatus(parse_online(online_byte), parse_paper(paper_byte))
    assert status.summary == summary
    assert status.ready == (summary in ("ok", "paper_low"))


def test_profiles_from_python_escpos_database_with_overrides():
    p = load_profile("TM-T88V")
    assert (p.columns, p.width_px, p.native_qr) == (42, 512, True)
    assert p.codepages[0] == "CP437" and "CP858" in p.codepages.values()
    narrow = load_profile("TM-T20II", columns=32, native_qr=False, codepages=["CP858", "CP437"])
    assert (narrow.columns, narrow.native_qr) == (32, False)
    assert list(narrow.codepages.values()) == ["CP858", "CP437"]
    with pytest.raises(ValidationError):
        load_profile("NoSuchPrinter")
    with pytest.raises(ValidationError):
        load_profile("TM-T20II", codepages=["CP999"])


def test_importing_python_escpos_leaves_logging_alone():
    import subprocess
    import sys

    code = ("import logging; from drivers.printer import import_escpos; import_escpos(); "
            "print(len(logging.getLogger().handlers))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "0"  # python-escpos would have added a stderr handler (logging.basicConfig)
