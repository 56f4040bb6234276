"""A shop's day through the real stacks: POS front end (HTTP) -> daemon -> pcscd+vpcd simulated card -> queue ->
virtual printer -> sync -> head office -> batch pulled as CSV."""

import csv
import io
import json
import os
import threading

import httpx
import pytest

from drivers.simulators.nfc_phone import run_phone
from tests.harness.daemon import SMARTPOS, run_cli
from tests.harness.nfc import free_udp_port, udp_port_bound
from tests.harness.procs import wait_until

pytestmark = pytest.mark.pcscd

VISA_TEST_PAN = "4761739001010010"


def pay(client, stack, body, key, profile="visa"):
    r = client.post("/v1/payments", json=body, headers={"Idempotency-Key": key})
    assert r.status_code == 201, r.text
    payment = r.json()
    assert payment["state"] == "waiting_for_card"
    stack.tap(profile)
    states = []
    with client.stream("GET", f"/v1/payments/{payment['id']}/events") as events:
        for line in events.iter_lines():
            if line.startswith("data: "):
                states.append(json.loads(line[6:])["state"])
    return client.get(f"/v1/payments/{payment['id']}").json(), states


def test_sales_refund_void_reach_head_office_and_reconcile(pos_stack):
    stack = pos_stack
    stack.add_config("[sync]\ninterval_s = 1.0")
    stack.start_daemon()
    with stack.api() as client:
        online, states = pay(client, stack, {"type": "sale", "amount_minor": 1250, "currency": "EUR",
                                             "reference": "R-1"}, "k-online")
        assert online["state"] == "approved", online
        assert states[-1] == "approved" and "authorizing" in states
        assert online["authorization"]["method"] == "online" and online["authorization"]["code"]
        assert online["card"]["masked_pan"] == "476173******0010"
        assert online["sequence"] == 1

        offline, _ = pay(client, stack, {"type": "sale", "amount_minor": 840, "currency": "EUR",
                                         "mode": "force-offline"}, "k-offline")
        assert offline["state"] == "approved"
        assert offline["authorization"]["method"] == "offline"

        refund, _ = pay(client, stack, {"type": "refund", "amount_minor": 500, "currency": "EUR"}, "k-refund")
        assert refund["state"] == "approved" and refund["type"] == "refund"

        extra, _ = pay(client, stack, {"type": "sale", "amount_minor": 300, "currency": "EUR"}, "k-extra")
        void = client.post(f"/v1/payments/{extra['id']}/void")
        assert void.status_code == 201 and void.json()["type"] == "void" and void.json()["state"] == "approved"
        assert client.get(f"/v1/payments/{extra['id']}").json()["voided_by"]

        # Same Idempotency-Key again: the same payment, nothing new recorded.
        again = client.post("/v1/payments", json={"type": "sale", "amount_minor": 1250, "currency": "EUR",
                                                   "reference": "R-1"}, headers={"Idempotency-Key": "k-online"})
        assert again.status_code == 201 and again.json()["id"] == online["id"]

        # Receipts: merchant + customer copy per approval, decoded from what reached the printer.
        assert stack.printer.wait_for_receipts(10, 15), f"{len(stack.printer.receipts)} receipts"
        texts = [r.text for r in stack.printer.receipts]
        printed = "\n".join(texts)
        assert VISA_TEST_PAN not in printed
        assert "0010" in printed and "12.50" in printed and "8.40" in printed and "5.00" in printed
        assert "476173" not in printed  # receipts carry the last 4 only
        assert all(r.complete for r in stack.printer.receipts)
        assert client.get(f"/v1/payments/{online['id']}").json()["receipt"] == "printed"

        # The queue drains to head office by itself.
        wait_until(lambda: client.get("/v1/status").json()["queue"]["unsynced_count"] == 0, timeout=20,
                   what="sync to head office")
        assert client.get(f"/v1/payments/{online['id']}").json()["sync_state"] == "accepted"

        closed = client.post("/v1/batches/close")
        assert closed.status_code == 200, closed.text
        result = closed.json()
        assert result["count"] == 5
        eur = next(t for t in result["totals"]["by_currency"] if t["currency"] == "EUR")
        assert eur["sale_amount_minor"] == 1250 + 840 + 300 and eur["refund_amount_minor"] == 500
        assert eur["net_amount_minor"] == 1250 + 840 - 500
        assert result["headoffice"]["status"] == "balanced", result["headoffice"]

    # Settlement report printed after the receipts.
    assert stack.printer.wait_for_receipts(11, 10)
    assert "2090" in stack.printer.receipts[-1].text.replace(".", "").replace(",", "") or \
        "15.90" in stack.printer.receipts[-1].text

    # Head office staff pull the batch as CSV: one line per transaction, totals match the terminal's.
    listing = json.loads(stack.hq.cli("batches", "list", "--json").stdout)
    batch = next(b for b in listing if b["batch"] == result["batch"])
    assert batch["status"] == "balanced"
    text = stack.hq.cli("batches", "pull", str(batch["id"]), "--format", "csv").stdout
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0]
    lines = [dict(zip(header, row, strict=False)) for row in rows[1:] if len(row) == len(header)
             and row[header.index("sequence")].isdigit()]
    assert sorted(int(r["sequence"]) for r in lines) == [1, 2, 3, 4, 5]
    assert VISA_TEST_PAN not in text
    by_seq = {int(r["sequence"]): r for r in lines}
    assert by_seq[1]["type"] == "sale" and int(by_seq[1]["amount_minor"]) == 1250
    assert by_seq[3]["type"] == "refund"
    assert by_seq[5]["type"] == "void"


def test_technician_commands_against_the_running_daemon(pos_stack):
    """`smartpos status/pay/refund/reprint/void/batch close/selftest` as a technician runs them."""
    stack = pos_stack
    phone_port = free_udp_port()
    stack.add_config(f"[metrics]\nport = 0\n\n[readers]\nnfcpy = [\"udp:127.0.0.1:{phone_port}\"]")
    stack.start_daemon()
    env = {"SMARTPOS_CONFIG": str(stack.config_path)}
    with stack.api() as client:
        wait_until(lambda: any(r["state"] == "ready" for r in client.get("/v1/status").json()["readers"]),
                   timeout=10, what="the reader to show up")

    status = run_cli([*SMARTPOS, "status", "--json"], env=env)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["terminal_id"] == "T-1" and doc["queue"]["unsynced_count"] == 0 and doc["batch"]["number"] == 1
    table = run_cli([*SMARTPOS, "status"], env=env)
    assert table.returncode == 0 and "T-1" in table.stdout and "printer" in table.stdout

    stack.tap("visa")
    sale = run_cli([*SMARTPOS, "pay", "3.20", "--mode", "force-offline", "--json"], env=env)
    assert sale.returncode == 0, sale.stdout + sale.stderr
    paid = json.loads(sale.stdout.strip().splitlines()[-1])
    assert paid["state"] == "approved" and paid["amount_minor"] == 320 and paid["currency"] == "EUR"
    from terminal.api_docs import PaymentView

    PaymentView.model_validate(paid)  # the object the OpenAPI document describes is the one the daemon sends

    stack.tap("mastercard")
    refund = run_cli([*SMARTPOS, "refund", "1.00", "--mode", "force-offline"], env=env)
    assert refund.returncode == 0, refund.stdout + refund.stderr
    assert "APPROVED" in refund.stdout and "mastercard" in refund.stdout

    # A phone wallet on the nfcpy reader (udp driver): same daemon, same flow, the other reader stack.
    phone = threading.Thread(target=run_phone, args=("phone", phone_port), kwargs={"taps": 1}, daemon=True)
    phone.start()
    wallet = run_cli([*SMARTPOS, "pay", "2.10", "--mode", "force-offline", "--json"], env=env)
    phone.join(10)
    assert wallet.returncode == 0, wallet.stdout + wallet.stderr
    wallet_payment = json.loads(wallet.stdout.strip().splitlines()[-1])
    assert wallet_payment["state"] == "approved" and wallet_payment["card"]["entry_mode"] == "contactless"
    assert wallet_payment["card"]["masked_pan"] != paid["card"]["masked_pan"]  # the phone's token PAN

    bad = run_cli([*SMARTPOS, "pay", "3.205"], env=env)
    assert bad.returncode == 1 and "decimals" in bad.stderr and "Traceback" not in bad.stderr

    assert stack.printer.wait_for_receipts(6, 10)  # two copies each of the sale, the refund and the wallet sale
    reprint = run_cli([*SMARTPOS, "reprint"], env=env)  # the latest approved payment: the wallet sale
    assert reprint.returncode == 0, reprint.stderr
    assert stack.printer.wait_for_receipts(7, 10)
    assert "2.10" in stack.printer.receipts[6].text and "DUPLICATE" in stack.printer.receipts[6].text.upper()

    voided = run_cli([*SMARTPOS, "void", paid["id"], "--json"], env=env)
    assert voided.returncode == 0, voided.stderr
    assert json.loads(voided.stdout)["type"] == "void"
    again = run_cli([*SMARTPOS, "void", "00000000-0000-0000-0000-000000000000"], env=env)
    assert again.returncode == 1 and "not_found" in again.stderr
    # A copy of the voided sale says it was voided, and by which transaction: it must not pass for a payment.
    assert stack.printer.wait_for_receipts(9, 10)  # + both copies of the void
    void_seq = json.loads(voided.stdout)["sequence"]
    assert run_cli([*SMARTPOS, "reprint", paid["id"]], env=env).returncode == 0
    assert stack.printer.wait_for_receipts(10, 10)
    copy = stack.printer.receipts[9].text.upper()
    assert "3.20" in copy and "DUPLICATE" in copy and f"VOIDED BY #{void_seq:06d}" in copy, copy
    assert "NOTHING WAS CHARGED" in copy

    before = len(stack.printer.receipts)
    selftest = run_cli([*SMARTPOS, "selftest", "--print", "--json"], env=env)
    report = json.loads(selftest.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert selftest.returncode == 0, report
    # Through the daemon's print queue, which owns the printer (it used to write to the printer itself, beside it).
    assert checks["printer"]["ok"] and "test page printed by the daemon (job " in checks["printer"]["detail"], checks
    job_id = int(checks["printer"]["detail"].split("(job ")[1].rstrip(")"))
    with stack.api() as client:
        job = client.get(f"/v1/printer/jobs/{job_id}").json()
        assert (job["kind"], job["state"]) == ("test", "printed") and "payload" not in job, job
        assert client.get("/v1/printer/jobs/x1").status_code == 404
        assert client.get("/v1/printer/jobs/999999").status_code == 404
    assert stack.printer.wait_for_receipts(before + 1, 10)
    assert "TEST" in stack.printer.receipts[-1].text.upper()
    assert checks["queue database"]["ok"] and "chain verified" in checks["queue database"]["detail"]
    assert checks["head office auth"]["ok"] and checks["clock"]["ok"]

    # As a technician reads it: the totals table (sale 3.20 + wallet 2.10, the 3.20 sale voided, refund 1.00).
    closed = run_cli([*SMARTPOS, "batch", "close"], env=env)
    assert closed.returncode == 0, closed.stderr
    assert "batch 1 closed: 4 transactions" in closed.stdout
    (all_eur,) = [line for line in closed.stdout.splitlines() if " all " in line and "EUR" in line]
    assert "2 x 5.30" in all_eur and "1 x 1.00" in all_eur and "1 x 3.20" in all_eur
    assert all_eur.rstrip(" │|").endswith(" 1.10")  # net: 5.30 - 1.00 - 3.20
    empty = run_cli([*SMARTPOS, "batch", "close", "--json"], env=env)
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout)["count"] == 0 and json.loads(empty.stdout)["batch"] == 2
    # Run again after its answer went missing, the close of batch 2 answers batch 2 as it was closed; it used to
    # close batch 3 empty (and print its report). A batch that is not the open one is refused.
    again = run_cli([*SMARTPOS, "batch", "close", "--batch", "2", "--json"], env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["already_closed"] is True and json.loads(again.stdout)["batch"] == 2
    shown = run_cli([*SMARTPOS, "batch", "close", "--batch", "1"], env=env)
    assert shown.returncode == 0 and "batch 1 was already closed, at 20" in shown.stdout, shown.stdout
    assert "batch 1 closed: 4 transactions" in shown.stdout
    wrong = run_cli([*SMARTPOS, "batch", "close", "--batch", "9"], env=env)
    assert wrong.returncode == 1 and "batch_not_open" in wrong.stderr and "(open: 3)" in wrong.stderr, wrong.stderr
    assert json.loads(run_cli([*SMARTPOS, "status", "--json"], env=env).stdout)["batch"]["number"] == 3
    with stack.api() as client:
        for body in ({"batch": True}, {"batch": "3"}, {"batch": 0}, {"number": 3}):
            r = client.post("/v1/batches/close", json=body)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", (body, r.text)
    assert json.loads(run_cli([*SMARTPOS, "status", "--json"], env=env).stdout)["batch"]["number"] == 3

    # Prometheus metrics on the port the daemon logged
    events = [json.loads(line) for line in stack.log().splitlines() if line.startswith("{")]
    port = next(e["port"] for e in events if e.get("event") == "metrics.listening")
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'smartpos_payments_total{method="offline",state="approved",type="sale"} 2.0' in metrics
    assert "smartpos_queue_unsynced" in metrics and 'smartpos_printer_state{state="ok"}' in metrics


def test_daemon_refuses_bad_config_and_missing_enrollment(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[payments]\nmode = "fast"\n')
    result = run_cli([*SMARTPOS, "run", "--config", str(bad)])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "payments.mode" in result.stderr
    empty = tmp_path / "empty.toml"
    empty.write_text(f'[terminal]\nstate_dir = "{tmp_path / "state"}"\n')
    result = run_cli([*SMARTPOS, "run", "--config", str(empty)])
    assert result.returncode == 1 and "not enrolled" in result.stderr and "Traceback" not in result.stderr


def write_enrollment(state_dir):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    keys = state_dir / "keys"
    keys.mkdir(parents=True, mode=0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())
    (keys / "terminal_ed25519.pem").write_bytes(pem)
    (keys / "hq_x25519_public.pem").write_bytes(X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (keys / "token.key").write_bytes(b"t" * 32)
    for f in keys.iterdir():
        f.chmod(0o600)
    (state_dir / "enrollment.json").write_text(json.dumps({"terminal_id": "T-9", "merchant": {"name": "x"},
                                                           "hq_url": "", "parameters": {}}))


def test_daemon_refuses_a_corrupt_queue_and_loose_key_permissions(tmp_path):
    state = tmp_path / "state"
    write_enrollment(state)
    config = tmp_path / "smartpos.toml"
    config.write_text(f'[terminal]\nstate_dir = "{state}"\n\n[readers]\npcsc = false\n'
                      'nfcpy = ["udp:127.0.0.1:30999"]\n')
    (state / "queue.sqlite").write_bytes(b"this is not a database" * 100)
    result = run_cli([*SMARTPOS, "run", "--config", str(config)])
    assert result.returncode == 1 and "queue.sqlite" in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert (state / "queue.sqlite").read_bytes() == b"this is not a database" * 100  # nothing created over it

    (state / "queue.sqlite").unlink()
    (state / "keys" / "token.key").chmod(0o644)
    result = run_cli([*SMARTPOS, "run", "--config", str(config)])
    assert result.returncode == 1 and "token.key" in result.stderr and "chmod 600" in result.stderr



@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_ctrl_c_during_smartpos_pay_cancels_the_payment(pos_stack, signame):
    """A technician who interrupts `smartpos pay` (Ctrl-C, a closed SSH session, kill) must not leave the payment
    armed: a tap would still charge."""
    import signal
    import subprocess

    stack = pos_stack
    stack.start_daemon()
    env = {"SMARTPOS_CONFIG": str(stack.config_path)}
    import os

    proc = subprocess.Popen([*SMARTPOS, "pay", "4.00", "--json"], env={**os.environ, **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with stack.api() as client:
        wait_until(lambda: (client.get("/v1/status").json().get("payment") or {}).get("state") == "waiting_for_card",
                   timeout=10, what="the payment to wait for a card")
        proc.send_signal(getattr(signal, signame))
        out, _err = proc.communicate(timeout=10)
        payment = json.loads(out.strip().splitlines()[-1])
        assert payment["state"] == "cancelled" and proc.returncode == 1
        assert client.get(f"/v1/payments/{payment['id']}").json()["state"] == "cancelled"
        # The terminal takes the next payment at once (no terminal_busy until the card timeout).
        again = client.post("/v1/payments", json={"type": "sale", "amount_minor": 100, "currency": "EUR"},
                            headers={"Idempotency-Key": "after-ctrl-c"})
        assert again.status_code == 201, again.text


def test_closed_loop_uid_card_pays_when_enabled(pos_stack):
    """A campus/membership card (UID only, no EMV application) pays on a closed-loop terminal: online through head
    office and offline within the rules, receipt with the UID's last 4, the sale at head office."""
    stack = pos_stack
    stack.add_config("[payments]\nclosed_loop_uid = true\n\n[sync]\ninterval_s = 0.5")
    stack.start_daemon()
    with stack.api() as client:
        online, states = pay(client, stack, {"type": "sale", "amount_minor": 450, "currency": "EUR"}, "uid-1", "uid")
        assert online["state"] == "approved", online
        assert online["authorization"]["method"] == "online" and "authorizing" in states
        assert online["card"]["scheme"] == "uid" and online["card"]["masked_pan"] is None
        offline, _ = pay(client, stack, {"type": "sale", "amount_minor": 300, "currency": "EUR",
                                         "mode": "force-offline"}, "uid-2", "uid")
        assert offline["state"] == "approved" and offline["authorization"]["method"] == "offline"
        assert stack.printer.wait_for_receipts(4, 10)
        customer = stack.printer.receipts[0].text
        assert "Card UID" in customer and "91E2" in customer and "4.50" in customer
        assert "7A3C91E2" not in customer  # the last 4 only, as for a PAN
        wait_until(lambda: client.get("/v1/status").json()["queue"]["unsynced_count"] == 0, timeout=20,
                   what="the closed-loop sales to reach head office")
        for payment in (online, offline):
            assert client.get(f"/v1/payments/{payment['id']}").json()["sync_state"] == "accepted"
    rows = json.loads(stack.hq.cli("authorizations", "list", "--json").stdout)
    assert [r["amount_minor"] for r in rows if r["key"] == online["id"]] == [450]


def test_the_front_end_sees_reading_for_as_long_as_the_card_is_read(pos_stack):
    """A slow card (0.1 s per command, half a second for the read, as real contactless cards can take): the
    payment shows `reading` from the moment the card is sensed, while its commands are still being answered, then
    `authorizing` and `approved`. (It used to announce `reading` only once the read was over.)"""
    stack = pos_stack
    stack.start_daemon()
    with stack.api() as client:
        r = client.post("/v1/payments", json={"type": "sale", "amount_minor": 990, "currency": "EUR",
                                              "mode": "force-offline"}, headers={"Idempotency-Key": "slow-card"})
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        card = None
        seen = []  # (state, commands the card had answered when the event arrived, card shown)
        polled = None
        with client.stream("GET", f"/v1/payments/{pid}/events") as events:
            for line in events.iter_lines():
                if line.startswith("data: "):
                    doc = json.loads(line[6:])
                    if card is None:  # the tap comes once the stream shows the payment waiting
                        card = stack.tap("visa", apdu_delay=0.1)
                    seen.append((doc["state"], card.apdus_served, doc.get("card")))
                    if doc["state"] == "reading" and polled is None:
                        polled = (client.get(f"/v1/payments/{pid}").json()["state"], card.apdus_served)
        final = client.get(f"/v1/payments/{pid}").json()
    assert final["state"] == "approved" and final["card"]["masked_pan"] == "476173******0010"
    states = [state for i, (state, _, _) in enumerate(seen) if i == 0 or seen[i - 1][0] != state]
    assert states == ["waiting_for_card", "reading", "authorizing", "approved"], seen  # (approved: then receipts)
    total = card.apdus_served  # the read's commands (5 for this card: about 0.5 s)
    _, answered_when_reading, shown = seen[1]
    assert total >= 4 and answered_when_reading <= 1 and not shown  # the read had only begun, nothing shown yet
    assert polled is not None and polled[0] == "reading" and polled[1] < total  # GET says so too, mid-read
    assert seen[2][2]["masked_pan"] == "476173******0010"  # the card shown with authorizing


def test_the_front_end_reads_a_member_tag_through_the_daemon(pos_stack):
    """NDEF member tags and coupons while the daemon owns the readers (`smartpos read` cannot open a reader the
    daemon holds): POST /v1/reads waits for the tap on the daemon's nfcpy reader and answers the tag's records. A
    payment asked for meanwhile is refused; nothing is recorded; a read with no tap ends 408."""
    import time

    from drivers.cardread import NdefRecord
    from drivers.simulators.nfc_tag import run_tag

    stack = pos_stack
    tag_port = free_udp_port()
    stack.add_config(f"[readers]\nnfcpy = [\"udp:127.0.0.1:{tag_port}\"]")
    stack.start_daemon()
    with stack.api() as client:
        wait_until(lambda: any(r["state"] == "ready" for r in client.get("/v1/status").json()["readers"]),
                   timeout=10, what="the nfcpy reader to show up")
        answers = []
        waiting = threading.Thread(target=lambda: answers.append(client.post("/v1/reads", json={"timeout_s": 20})))
        waiting.start()
        time.sleep(1.0)  # the read is waiting by now
        during = client.post("/v1/payments", json={"type": "sale", "amount_minor": 100, "currency": "EUR"},
                             headers={"Idempotency-Key": "during-read"})
        assert during.status_code == 409 and during.json()["error"]["code"] == "terminal_busy", during.text
        records = [NdefRecord("text", "MEMBER-0042", lang="en"), NdefRecord("uri", "https://shop.example/c/SAVE10")]
        tag = threading.Thread(target=run_tag, args=(records, tag_port), kwargs={"taps": 1}, daemon=True)
        tag.start()
        waiting.join(30)
        tag.join(10)
        [answer] = answers
        assert answer.status_code == 200, answer.text
        read = answer.json()["read"]
        assert read["kind"] == "ndef" and [r["value"] for r in read["records"]] == [
            "MEMBER-0042", "https://shop.example/c/SAVE10"]
        assert client.get("/v1/payments").json()["payments"] == []  # nothing was recorded or created
        nothing = client.post("/v1/reads", json={"timeout_s": 1})
        assert nothing.status_code == 408 and nothing.json()["error"]["code"] == "card_timeout"
        bad = client.post("/v1/reads", json={"timeout_s": 0})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
        # and payments are taken again
        again = client.post("/v1/payments", json={"type": "sale", "amount_minor": 100, "currency": "EUR"},
                            headers={"Idempotency-Key": "after-read"})
        assert again.status_code == 201, again.text


def test_smartpos_read_direct_leaves_the_daemons_pcsc_readers_to_it(pos_stack):
    """`smartpos read --direct` beside the daemon opens only readers the daemon does not read: on a PC/SC reader
    both used to read the same tap, one after the other (the card counting two transactions)."""
    stack = pos_stack
    stack.start_daemon()
    with stack.api() as client:
        wait_until(lambda: any(r["state"] == "ready" for r in client.get("/v1/status").json()["readers"]),
                   timeout=10, what="the reader to show up")
    for args in (["--direct"], ["--reader", "PCD"]):
        done = run_cli([*SMARTPOS, "read", *args, "--timeout", "5"], env=stack.daemon_env, timeout=30)
        assert done.returncode == 1, (args, done.returncode, done.stderr)
        assert "the running smartpos daemon reads the PC/SC readers itself" in done.stderr, done.stderr


def test_smartpos_read_goes_through_the_running_daemon_and_a_hang_up_frees_the_readers(pos_stack):
    """A technician runs `smartpos read` while the daemon holds the nfcpy reader: the tag is read through the
    daemon. A read whose caller gives up (Ctrl-C on the command, a front end closing its connection, or
    POST /v1/reads/cancel) ends then, not at its timeout, so the next payment is taken at once."""
    import signal
    import subprocess
    import time

    from drivers.cardread import NdefRecord
    from drivers.simulators.nfc_tag import run_tag
    from tests.harness.daemon import REPO

    stack = pos_stack
    tag_port = free_udp_port()
    # The tag binds its port before the daemon starts (it used to bind it seconds later, after the daemon's start,
    # and twice found it taken; its error now names the holder). No reader polls it until a read is asked for.
    tag_errors: list[BaseException] = []

    def serve_tag() -> None:
        try:
            run_tag([NdefRecord("text", "MEMBER-0077", lang="en")], tag_port, taps=1)
        except BaseException as exc:  # shown by the assertion below, not lost in a thread
            tag_errors.append(exc)

    tag = threading.Thread(target=serve_tag, daemon=True)
    tag.start()
    wait_until(lambda: udp_port_bound(tag_port) or bool(tag_errors), timeout=10, what="the tag on its port")
    assert not tag_errors, tag_errors
    stack.add_config(f"[readers]\nnfcpy = [\"udp:127.0.0.1:{tag_port}\"]")
    stack.start_daemon()
    env = stack.daemon_env
    with stack.api() as client:
        wait_until(lambda: any(r["state"] == "ready" for r in client.get("/v1/status").json()["readers"]),
                   timeout=10, what="the nfcpy reader to show up")
        done = run_cli([*SMARTPOS, "read", "--json", "--timeout", "20"], env=env, timeout=40)
        tag.join(10)
        assert not tag_errors, tag_errors
        assert done.returncode == 0, done.stderr
        read = json.loads(done.stdout)
        assert read["kind"] == "ndef" and [r["value"] for r in read["records"]] == ["MEMBER-0077"]
        assert "Waiting" not in done.stderr  # --json: one object, no progress line

        def payment_taken(key):
            r = client.post("/v1/payments", json={"type": "sale", "amount_minor": 100, "currency": "EUR"},
                            headers={"Idempotency-Key": key})
            if r.status_code == 201:
                client.post(f"/v1/payments/{r.json()['id']}/cancel")
                return True
            assert r.status_code == 409 and r.json()["error"]["code"] == "terminal_busy", r.text
            return False

        # Ctrl-C on a waiting `smartpos read` (30 s): the daemon's read ends as the command hangs up
        waiting = subprocess.Popen([*SMARTPOS, "read", "--timeout", "30"], env={**os.environ, **env}, cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            line = waiting.stderr.readline()
            assert "readers of the daemon at" in line, line
            time.sleep(1.0)  # its POST /v1/reads is waiting by now
            assert not payment_taken("during-cli-read")
            waiting.send_signal(signal.SIGINT)
            waiting.wait(10)
            # well before the read's 30 s: the hang-up ended it
            wait_until(lambda: payment_taken("after-cli-read"), timeout=5, what="a payment to be taken again")
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait(5)

        # POST /v1/reads/cancel: the waiting read answers 409 read_cancelled
        answers = []
        reader = threading.Thread(target=lambda: answers.append(client.post("/v1/reads", json={"timeout_s": 30},
                                                                            timeout=40)))  # fmt: skip
        reader.start()
        wait_until(lambda: client.post("/v1/reads/cancel").json()["cancelled"], timeout=5, what="the read to wait")
        reader.join(10)
        [answer] = answers
        assert answer.status_code == 409 and answer.json()["error"]["code"] == "read_cancelled", answer.text
        assert client.post("/v1/reads/cancel").json() == {"cancelled": False}
        assert payment_taken("after-cancel")
