import io
import json
import logging
import socket

import pytest

from terminal.logs import JsonLineFormatter, setup_logging
from terminal.service import Notifier, Watchdog, watchdog_interval_s

VISA_TEST_PAN = "4761739001010010"


@pytest.fixture
def captured():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging("info", stream)
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_event_with_fields(captured):
    logging.getLogger("smartpos.payments").info("payment.approved", extra={"payment_id": "p1", "amount_minor": 1250})
    (entry,) = lines(captured)
    assert entry["event"] == "payment.approved"
    assert entry["payment_id"] == "p1" and entry["amount_minor"] == 1250
    assert entry["level"] == "info" and entry["logger"] == "smartpos.payments"
    assert entry["ts"].endswith("Z")


def test_pans_and_track_data_are_redacted_everywhere(captured):
    log = logging.getLogger("somelib")
    log.warning("card %s read", VISA_TEST_PAN)
    log.info("x", extra={"detail": f"track {VISA_TEST_PAN}D30122010000000000"})
    try:
        raise ValueError(f"bad pan {VISA_TEST_PAN}")
    except ValueError:
        log.exception("failed")
    text = captured.getvalue()
    assert VISA_TEST_PAN not in text
    assert "476173******0010" in text
    assert "[REDACTED-TRACK]" in text
    assert len(lines(captured)) == 3  # an exception stays one line


def test_level_filters(captured):
    logging.getLogger("smartpos").debug("noise")
    assert captured.getvalue() == ""


def test_formatter_survives_unserialisable_fields():
    record = logging.makeLogRecord({"msg": "e", "obj": object(), "levelname": "INFO", "name": "n"})
    assert json.loads(JsonLineFormatter().format(record))["event"] == "e"


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_ready_and_stopping_reach_systemd_socket(notify_socket):
    notifier = Notifier()
    notifier.ready("listening")
    assert notify_socket.recv(1024) == b"READY=1\nSTATUS=listening"
    notifier.stopping()
    assert notify_socket.recv(1024) == b"STOPPING=1"


def test_watchdog_pings_only_while_healthy(notify_socket, caplog):
    problem = {"now": None}
    dog = Watchdog(Notifier(), lambda: problem["now"], interval_s=0.05)
    dog.start()
    try:
        assert notify_socket.recv(1024) == b"WATCHDOG=1"
        problem["now"] = "payment worker stuck for 200 s"
        # drain pings already in flight, then nothing more may arrive
        notify_socket.settimeout(0.3)
        received = []
        try:
            while True:
                received.append(notify_socket.recv(1024))
        except TimeoutError:
            pass
        assert len(received) <= 2
        assert any(getattr(r, "problem", None) == "payment worker stuck for 200 s" for r in caplog.records)
    finally:
        dog.stop()


def test_a_failing_health_check_stops_the_pings_not_the_watchdog(notify_socket):
    calls = []

    def check():
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError("boom")
        return None

    dog = Watchdog(Notifier(), check, interval_s=0.05)
    dog.start()
    try:
        assert notify_socket.recv(1024) == b"WATCHDOG=1"  # after three failed checks: the thread lived on
        assert len(calls) >= 4
    finally:
        dog.stop()


def test_no_notify_socket_means_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.active
    notifier.ready()  # must not raise


def test_watchdog_interval_is_half_of_systemds():
    assert watchdog_interval_s({"WATCHDOG_USEC": "15000000"}) == 7.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "15000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({}) is None
