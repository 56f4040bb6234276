"""Head office's logs: its own lines reach the log, and nothing that looks like a PAN does (card data rules)."""

from __future__ import annotations

import logging
import sys

import httpx

from tests.harness.headoffice import HQ, TEST_PANS, WireTerminal

PAN = TEST_PANS[0]
MASKED = "411111******1111"


def test_serve_logs_its_own_errors_and_the_access_log_with_pans_masked(tmp_path):
    """An acquirer integration that puts the card number in its error, and a request path carrying one: the
    traceback and the access line are logged, the PAN only masked. (Before, head office's errors went out
    unredacted through Python's last-resort handler, and the access log printed paths as they came.)"""
    from tests.harness.headoffice import _start_hq
    from tests.harness.procs import ProcessGroup

    down = tmp_path / "acquirer-down"
    base, _ = _start_hq("sqlite", tmp_path, None)
    base.stop()
    (tmp_path / "logged").mkdir()
    group = ProcessGroup(tmp_path / "logged")
    hq = HQ(base.url, base.database_url, base.home, base.port, group, "sqlite",
            env={**base.env, "SMARTPOS_HQ_ACQUIRER": "tests.headoffice.acquirer_plugin:connector",
                 "PLUGIN_ACQUIRER_DOWN": str(down)},
            serve_args=("--access-log", "--log-level", "info"))
    hq.start()
    terminal = WireTerminal.enroll(hq)
    try:
        down.write_text(f"timeout talking about card {PAN}")
        reversal = {"idempotency_key": "log-1", "type": "refund", "amount_minor": 300, "currency": "EUR",
                    "reason": "no_answer"}
        answer = terminal.request("POST", "/api/v1/authorizations/reversals", reversal)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "acquirer_unavailable"
        assert PAN not in answer.text
        assert httpx.get(f"{hq.url}/api/v1/batches/{PAN}").status_code == 401
    finally:
        terminal.http.close()
        group.stop_all()
    log = group.log_text(f"hq-{hq.port}")
    assert PAN not in log
    assert "ERROR:    smartpos.headoffice: acquirer reversal of log-1 failed\nTraceback" in log
    assert f"ConnectionError: acquirer link down: timeout talking about card {MASKED}\n" in log
    assert f'"GET /api/v1/batches/{MASKED} HTTP/1.1" 401' in log
    assert '"POST /api/v1/authorizations/reversals HTTP/1.1" 503' in log


def test_the_formatters_mask_pans_in_messages_arguments_and_tracebacks():
    from headoffice.logs import RedactingAccessFormatter, RedactingFormatter

    try:
        raise ValueError(f"declined {PAN}")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("smartpos.headoffice", logging.ERROR, __file__, 1, "card %s: %s", (PAN, "x"), exc_info)
    text = RedactingFormatter("%(levelprefix)s %(name)s: %(message)s", use_colors=False).format(record)
    assert PAN not in text
    assert text.startswith(f"ERROR:    smartpos.headoffice: card {MASKED}: x")
    assert f"ValueError: declined {MASKED}" in text
    access = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", f"/x?pan={PAN}", "1.1", 404), None)
    line = RedactingAccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)
    assert line.format(access) == f'127.0.0.1:5 - "GET /x?pan={MASKED} HTTP/1.1" 404 Not Found'
