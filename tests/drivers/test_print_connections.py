"""python-escpos connections (drivers/printer.py) against the virtual printer over TCP, a socat pty pair,
pyserial URLs and a file: status, deadlines, faults."""

from __future__ import annotations

import time

import pytest

from drivers.printer import (
    PrinterDisconnected,
    PrinterTimeout,
    PrinterUnavailable,
    open_printer,
    print_bytes,
    query_status,
)


@pytest.mark.parametrize("mode,online,paper", [("ok", True, "ok"), ("near_end", True, "near_end"),
                                               ("out", False, "out"), ("offline", False, "ok")])
def test_status_over_tcp(tcp_printer, printer_profile, mode, online, paper):
    tcp_printer.printer.set_mode(mode)
    status = query_status(tcp_printer.uri, profile=printer_profile, timeout=0.5)
    assert (status.online, status.paper) == (online, paper)


def test_status_and_print_over_socat_pty(pty_printer, printer_profile):
    with open_printer(pty_printer.uri, profile=printer_profile, timeout=2, status_timeout=0.5) as conn:
        assert conn.status().summary == "ok"
        conn.write(b"\x1b@hello pty\n\x1dV\x00")
        pty_printer.printer.set_mode("near_end")
        assert conn.status().summary == "paper_low"
    receipt = pty_printer.wait_receipts(1)[0]
    assert receipt.complete and "hello pty" in receipt.text


def test_silent_printer_status_is_unknown_within_the_timeout(tcp_printer, printer_profile):
    tcp_printer.printer.set_mode("silent")
    started = time.monotonic()
    status = query_status(tcp_printer.uri, profile=printer_profile, timeout=0.3)
    elapsed = time.monotonic() - started
    assert status.summary == "unknown" and status.online is None and status.paper == "unknown"
    assert "no reply" in status.detail
    assert elapsed < 1.0


def test_silent_printer_write_hits_the_deadline(tcp_printer, printer_profile):
    tcp_printer.printer.set_mode("silent")
    with open_printer(tcp_printer.uri, profile=printer_profile, timeout=0.4) as conn:
        started = time.monotonic()
        with pytest.raises(PrinterTimeout):
            conn.write(b"A" * (32 << 20))  # far more than the socket buffers hold
        assert time.monotonic() - started < 1.5


def test_printer_closing_connections_reads_as_offline(tcp_printer, printer_profile):
    tcp_printer.printer.set_mode("close")
    status = query_status(tcp_printer.uri, profile=printer_profile, timeout=0.5)
    assert status.online is False and "closed" in status.detail


def test_refused_connection_is_unavailable_fast(printer_profile):
    started = time.monotonic()
    with pytest.raises(PrinterUnavailable):
        open_printer("tcp://127.0.0.1:1", profile=printer_profile, timeout=0.5)
    assert time.monotonic() - started < 1.0


def test_disconnect_mid_job_is_a_disconnected_error(tcp_printer, printer_profile):
    tcp_printer.printer.drop_after(100)
    with open_printer(tcp_printer.uri, profile=printer_profile, timeout=1.0) as conn:
        with pytest.raises(PrinterDisconnected):
            conn.write(b"x" * 4000 + b"\n")
            time.sleep(0.1)
            conn.write(b"y" * (4 << 20))
            conn.status()


def test_pyserial_socket_url_reaches_the_tcp_printer(tcp_printer, printer_profile):
    uri = tcp_printer.uri.replace("tcp://", "serial:socket://")
    assert query_status(uri, profile=printer_profile, timeout=0.5).summary == "ok"
    print_bytes(uri, b"\x1b@via socket url\n\x1dV\x00", profile=printer_profile, timeout=2)
    assert "via socket url" in tcp_printer.wait_receipts(1)[0].text


def test_loop_url_echo_is_not_mistaken_for_a_status_reply(printer_profile):
    with open_printer("serial:loop://", profile=printer_profile, timeout=1, status_timeout=0.2) as conn:
        status = conn.status()
        conn.write(b"hello")
    assert status.summary == "unknown" and "unexpected status reply 0x10" in status.detail


def test_file_printer_appends_and_reports_unknown_status(tmp_path, printer_profile):
    path = tmp_path / "lp0"
    print_bytes(f"file:{path}", b"one\n", profile=printer_profile)
    print_bytes(f"file:{path}", b"two\n", profile=printer_profile)
    assert path.read_bytes() == b"one\ntwo\n"
    status = query_status(f"file:{path}", profile=printer_profile)
    assert status.summary == "unknown" and "does not report status" in status.detail
    with pytest.raises(PrinterUnavailable):
        open_printer("file:/dev/nonexistent-printer-node", profile=printer_profile)


def test_usb_without_device_is_unavailable_not_a_crash(printer_profile):
    with pytest.raises(PrinterUnavailable):
        open_printer("usb://04b8:0e15", profile=printer_profile, timeout=0.5)


def test_silent_printer_on_a_pty_is_unknown_and_writes_hit_the_deadline(pty_printer, printer_profile):
    pty_printer.printer.set_mode("silent")
    with open_printer(pty_printer.uri, profile=printer_profile, timeout=0.4, status_timeout=0.2) as conn:
        started = time.monotonic()
        assert conn.status().summary == "unknown"
        with pytest.raises(PrinterTimeout):
            conn.write(b"B" * (1 << 20))  # a pty buffers a few KB; then the printer must read
        assert time.monotonic() - started < 1.5
