"""Reader gone / pcscd restarted / printer out of paper while the daemon runs: status shows it, payments go on or
fail with a clear reason, and everything recovers without restarting the daemon."""

import pytest

from tests.harness.daemon import wait_payment
from tests.harness.procs import wait_until

pytestmark = pytest.mark.pcscd


def readers(client):
    return client.get("/v1/status").json()["readers"]


def test_printer_out_of_paper_then_refilled(pos_stack):
    stack = pos_stack
    stack.add_config("[payments]\nmode = \"force-offline\"")
    stack.start_daemon()
    stack.printer.set_mode("out")
    with stack.api() as client:
        r = client.post("/v1/payments", json={"amount_minor": 700, "currency": "EUR"},
                        headers={"Idempotency-Key": "paper"})
        stack.tap("visa")
        payment = wait_payment(client, r.json()["id"], "approved", "declined", "failed")
        assert payment["state"] == "approved"  # a printer problem never fails a sale
        wait_until(lambda: client.get("/v1/status").json()["printer"]["state"] == "paper_out", timeout=10,
                   what="status to show paper out")
        assert client.get(f"/v1/payments/{payment['id']}").json()["receipt"] in ("pending", "failed")
        assert stack.printer.receipts == []
        stack.printer.set_mode("ok")
        wait_until(lambda: client.get(f"/v1/payments/{payment['id']}").json()["receipt"] == "printed",
                   timeout=20, what="the receipt to print after the paper came back")
        assert client.get("/v1/status").json()["printer"]["state"] == "ok"
    assert any("7.00" in r.text for r in stack.printer.receipts)


def test_idle_printer_running_out_of_paper_shows_within_the_status_interval(pos_stack):
    """No receipt needs to fail first: the idle printer is asked every [printer] status_interval_s."""
    stack = pos_stack
    text = stack.config_path.read_text()
    stack.config_path.write_text(text.replace('timeout_s = 1.0\n', 'timeout_s = 1.0\nstatus_interval_s = 1\n', 1))
    stack.start_daemon()
    with stack.api() as client:
        wait_until(lambda: client.get("/v1/status").json()["printer"]["state"] == "ok", timeout=10,
                   what="the printer to be seen ok")
        stack.printer.set_mode("out")
        wait_until(lambda: client.get("/v1/status").json()["printer"]["state"] == "paper_out", timeout=5,
                   what="status to show paper out without a receipt")
        assert stack.printer.receipts == []


def test_pcscd_restart_and_reader_gone(pos_stack):
    stack = pos_stack
    stack.add_config("[payments]\nmode = \"force-offline\"\ncard_timeout_s = 30")
    stack.start_daemon()
    with stack.api() as client:
        wait_until(lambda: any(r["state"] == "ready" for r in readers(client)), timeout=10,
                   what="reader ready")
        stack.pcscd.stop()  # the reader (and pcscd) vanish
        wait_until(lambda: all(r["state"] in ("error", "absent") for r in readers(client)), timeout=10,
                   what="status to show the reader gone")
        r = client.post("/v1/payments", json={"amount_minor": 900, "currency": "EUR"},
                        headers={"Idempotency-Key": "no-reader"})
        assert r.status_code == 201
        status = client.get("/v1/status").json()
        # The payment keeps waiting (the reader may come back before the card timeout); status says why no tap works.
        assert status["payment"]["id"] == r.json()["id"] and status["payment"]["state"] == "waiting_for_card"
        assert status["readers"][0]["state"] == "error" and status["readers"][0]["detail"]
        assert client.get(f"/v1/payments/{r.json()['id']}").json()["state"] == "waiting_for_card"
        stack.pcscd.start()
        wait_until(lambda: any(x["state"] == "ready" for x in readers(client)), timeout=15,
                   what="the reader to come back")
        stack.tap("mastercard")
        payment = wait_payment(client, r.json()["id"], "approved", "declined", "failed", timeout=15)
        assert payment["state"] == "approved"
        assert payment["card"]["scheme"] == "mastercard"

        stack.pcscd.restart()
        wait_until(lambda: any(x["state"] == "ready" for x in readers(client)), timeout=15,
                   what="the reader after a pcscd restart")
        r = client.post("/v1/payments", json={"amount_minor": 901, "currency": "EUR"},
                        headers={"Idempotency-Key": "after-restart"})
        stack.tap("visa")
        assert wait_payment(client, r.json()["id"], "approved", "declined", "failed")["state"] == "approved"
