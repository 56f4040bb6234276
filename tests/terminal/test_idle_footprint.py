"""What keeps the idle daemon small: the printer's status and TCP printing work without python-escpos's image stack,
the receipt stack is loaded (not printed) when a payment starts, and an enrolled terminal's queue opens without
Alembic. Imports are checked in fresh interpreters, since this test process has everything loaded already."""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import sys

import pytest

from drivers.printer import PrinterDisconnected, PrinterUnavailable, open_printer
from terminal.printjobs import PrintSpooler
from tests.harness.daemon import enroll
from tests.harness.procs import wait_until
from tests.terminal import receipt_samples as s
from tests.terminal.printjob_store import open_store

IMAGE_STACK = ("escpos.escpos", "escpos.printer", "PIL", "qrcode", "barcode")

_TCP_CLIENT = """
import json, sys
from drivers.printer import load_profile, open_printer
with open_printer(sys.argv[1], profile=load_profile("TM-T20II"), timeout=2, status_timeout=0.5) as conn:
    before = conn.status()
    conn.write(b"\\x1b@IDLE FOOTPRINT\\n\\x1dV\\x00")
    after = conn.status()
print(json.dumps({"before": before.summary, "after": after.summary,
                  "loaded": [m for m in sys.argv[2:] if m in sys.modules]}))
"""


def _python(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_tcp_printer_status_and_printing_need_no_image_stack(tcp_printer):
    out = _python(_TCP_CLIENT, tcp_printer.uri, *IMAGE_STACK)
    assert out["before"] == "ok" and out["after"] == "ok"
    receipt = tcp_printer.wait_receipts(1)[0]
    assert receipt.complete and "IDLE FOOTPRINT" in receipt.text
    assert out["loaded"] == []


def test_tcp_connection_errors_stay_typed(tcp_printer, printer_profile):
    conn = open_printer(tcp_printer.uri, profile=printer_profile, timeout=1, status_timeout=0.3)
    conn.close()
    conn.close()  # closing twice is harmless
    with pytest.raises(PrinterDisconnected):
        conn.write(b"x")
    with socket.socket() as probe:  # a port nothing listens on once this socket is closed
        probe.bind(("127.0.0.1", 0))
        unused = probe.getsockname()[1]
    with pytest.raises(PrinterUnavailable, match=str(unused)):
        open_printer(f"tcp://127.0.0.1:{unused}", profile=printer_profile, timeout=1)


def test_prepare_loads_the_receipt_stack_without_printing(tmp_path, tcp_printer, printer_profile):
    store = open_store(tmp_path)
    factory = functools.partial(open_printer, tcp_printer.uri, profile=printer_profile, timeout=1.0,
                                status_timeout=0.3)
    spooler = PrintSpooler(store, factory, profile=printer_profile, merchant=s.MERCHANT, terminal_id="T-0001",
                           retry_interval_s=0.1, idle_probe_s=5.0).start()
    try:
        spooler.prepare()
        wait_until(lambda: spooler._prepared, timeout=10, what="the warm-up")
        assert spooler.wait_idle(5)
        assert store.print_jobs() == [] and tcp_printer.receipts == []  # a warm-up never reaches paper
        spooler.submit("sale", s.sale(), "pay-1", copies=("customer",))
        assert spooler.wait_idle(5)
        receipts = tcp_printer.wait_receipts(1)
        assert len(receipts) == 1 and "CUSTOMER COPY" in receipts[0].text
    finally:
        spooler.stop()
        store.close()


_OPEN_QUEUE = """
import json, sys
from offline_queue.store import QueueStore
store = QueueStore.open(sys.argv[1], terminal_id=sys.argv[2])
batch = store.open_batch()
store.close()
print(json.dumps({"alembic": "alembic" in sys.modules, "batch": batch.number, "status": batch.status}))
"""


def test_packaged_head_from_file_names_is_alembics_head():
    from offline_queue import store

    assert store._packaged_head() == store.head_revision()


def test_enrolled_terminal_has_its_queue_and_opens_it_without_alembic(daemon_hq, tmp_path):
    state, config = tmp_path / "state", tmp_path / "smartpos.toml"
    enroll(daemon_hq, "T-7", config, state)
    db = state / "queue.sqlite"
    assert db.exists()
    assert _python(_OPEN_QUEUE, str(db), "T-7") == {"alembic": False, "batch": 1, "status": "open"}
