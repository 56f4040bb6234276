"""`smartpos pay` interrupted while the daemon is still creating its payment: the signal is held until the payment's
id is known, then the payment is cancelled, so no tap can charge it. The real `smartpos` process against a local API
on loopback that answers the creation late (the window is a few milliseconds against the real daemon: the end-to-end
tests of Ctrl-C in tests/e2e/test_checkout.py hit it only now and then)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


class SlowDaemon(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.creating = threading.Event()  # the POST has arrived and is not answered yet
        self.answer = threading.Event()  # the test lets it be answered
        self.calls: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    server: SlowDaemon

    def log_message(self, *_args: object) -> None:
        pass

    def _send(self, status: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.calls.append(f"POST {self.path}")
        if self.path == "/v1/payments":
            self.server.creating.set()
            self.server.answer.wait(10)
            self._send(201, {"id": "pay-1", "state": "waiting_for_card", "type": "sale", "amount_minor": 400,
                             "currency": "EUR"})
        elif self.path == "/v1/payments/pay-1/cancel":
            self._send(200, {"id": "pay-1", "state": "cancelled", "type": "sale", "amount_minor": 400,
                             "currency": "EUR"})
        else:
            self._send(404, {"error": {"code": "not_found", "message": self.path}})

    def do_GET(self) -> None:
        self.server.calls.append(f"GET {self.path}")
        self._send(404, {"error": {"code": "not_found", "message": self.path}})


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_an_interrupt_while_the_payment_is_being_created_cancels_it(tmp_path, signame):
    server = SlowDaemon()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "smartpos.toml"
    config.write_text(f'[terminal]\nstate_dir = "{tmp_path / "state"}"\n')
    try:
        proc = subprocess.Popen(
            [str(BIN / "smartpos"), "pay", "4.00", "--currency", "EUR", "--json",
             "--url", f"http://127.0.0.1:{server.server_address[1]}"],
            env={**os.environ, "SMARTPOS_CONFIG": str(config)}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert server.creating.wait(30), "smartpos pay never asked for a payment"
        proc.send_signal(getattr(signal, signame))  # the payment exists at the daemon; pay does not know its id
        threading.Event().wait(0.3)
        assert proc.poll() is None, "pay died with the payment armed"
        server.answer.set()
        out, err = proc.communicate(timeout=20)
        assert server.calls[:2] == ["POST /v1/payments", "POST /v1/payments/pay-1/cancel"], (server.calls, err)
        assert json.loads(out.strip().splitlines()[-1])["state"] == "cancelled"
        assert proc.returncode == 1 and "Traceback" not in err
    finally:
        server.answer.set()
        server.shutdown()
        server.server_close()
