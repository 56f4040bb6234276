"""Internet down in prefer-online: offline approvals within the limits, declines outside them with the reason,
and the queue syncs by itself when head office is back."""

import json
import time

import pytest

from tests.harness.daemon import wait_payment
from tests.harness.procs import wait_until

pytestmark = pytest.mark.pcscd


def test_head_office_down_then_back(pos_stack):
    stack = pos_stack
    stack.add_config("[payments]\nmode = \"prefer-online\"\nonline_timeout_s = 1.0\n\n[sync]\ninterval_s = 0.5\n\n"
                     "[risk]\ntxn_limit_minor = 2000")
    stack.start_daemon()
    hq = stack.hq
    stack.procs.stop(hq.proc)  # head office gone: connection refused from now on
    assert hq.proc.poll() is not None

    with stack.api() as client:
        started = time.monotonic()
        r = client.post("/v1/payments", json={"amount_minor": 1500, "currency": "EUR"},
                        headers={"Idempotency-Key": "in-limits"})
        inside = r.json()
        stack.tap("visa")
        inside = wait_payment(client, inside["id"], "approved", "declined", "failed", timeout=15)
        assert inside["state"] == "approved", inside
        assert inside["authorization"]["method"] == "offline"
        # within the online timeout (1 s) + card detection (pcscd polls every ~0.4 s) + reading
        assert time.monotonic() - started < 1.0 + 2.5

        r = client.post("/v1/payments", json={"amount_minor": 4500, "currency": "EUR"},
                        headers={"Idempotency-Key": "over-limit"})
        outside = r.json()
        stack.tap("mastercard")
        outside = wait_payment(client, outside["id"], "approved", "declined", "failed", timeout=15)
        assert outside["state"] == "declined"
        assert outside["authorization"]["reason"] == "over_txn_limit"
        assert outside["sequence"] is None  # nothing recorded for a decline

        status = client.get("/v1/status").json()
        assert status["headoffice"]["online"] is False
        assert status["queue"]["unsynced_count"] == 1
        assert status["queue"]["unsynced_amount"] == {"EUR": 1500}

        # Head office returns on the same address: the daemon notices and drains without being asked.
        hq.proc = stack.procs.spawn(hq.proc.args, name="hq2", env=hq.env)
        wait_until(lambda: client.get("/v1/status").json()["queue"]["unsynced_count"] == 0, timeout=25,
                   what="the queue to drain after head office came back")
        assert client.get(f"/v1/payments/{inside['id']}").json()["sync_state"] == "accepted"
        assert client.get("/v1/status").json()["headoffice"]["online"] is True


def test_a_late_online_answer_is_reversed_at_head_office(pos_stack):
    """The acquirer answers after the terminal stopped waiting. prefer-online approves offline and require-online
    declines; either way head office must not keep its own approval: the daemon reverses both."""
    stack = pos_stack
    stack.add_config("[payments]\nmode = \"prefer-online\"\nonline_timeout_s = 1.0\n\n[sync]\ninterval_s = 0.5\n")
    stack.hq.cli("acquirer", "set", "--approve", "--delay-ms", "2500")
    stack.start_daemon()
    with stack.api() as client:
        outcomes = {}
        for mode, profile in (("prefer-online", "visa"), ("require-online", "mastercard")):
            r = client.post("/v1/payments", json={"amount_minor": 1700, "currency": "EUR", "mode": mode},
                            headers={"Idempotency-Key": f"late-{mode}"})
            stack.tap(profile)
            outcomes[mode] = wait_payment(client, r.json()["id"], "approved", "declined", "failed", timeout=20)
        assert outcomes["prefer-online"]["state"] == "approved"
        assert outcomes["prefer-online"]["authorization"]["method"] == "offline"
        assert outcomes["require-online"]["state"] == "declined"
        assert outcomes["require-online"]["authorization"]["reason"] == "online_unavailable:timeout"

        def reversed_at_hq() -> dict:
            rows = json.loads(stack.hq.cli("authorizations", "list", "--json").stdout)
            return {r["key"]: r for r in rows if r["reversed_at"]}

        wait_until(lambda: all(p["id"] in reversed_at_hq() for p in outcomes.values()), timeout=20,
                   what="both late authorizations to be reversed at head office")
        for payment in outcomes.values():
            assert reversed_at_hq()[payment["id"]]["reversal_reason"] == "no_answer:timeout"
        # the offline approval itself reaches head office as the one sale
        wait_until(lambda: client.get("/v1/status").json()["queue"]["unsynced_count"] == 0, timeout=20,
                   what="the offline approval to sync")
        assert client.get("/v1/status").json()["headoffice"]["pending_reversals"] == 0
    stack.hq.cli("acquirer", "set", "--delay-ms", "0")


def test_a_technicians_sync_alongside_the_running_daemon_drains_the_backlog_once(pos_stack):
    """`smartpos sync --wait` on site while the daemon runs: both engines drain one queue at once. Head office ends
    with every transaction exactly once, and the technician is told that the daemon took part of the backlog
    (their own count alone would look like a shortfall)."""
    import sqlite3
    import subprocess

    from tests.harness.daemon import SMARTPOS
    from tests.harness.headoffice import record_backlog

    stack = pos_stack
    stack.add_config("[sync]\ninterval_s = 0.2")
    backlog = 3000
    total = record_backlog(stack.config_path, stack.state_dir, "T-1", backlog)  # a shop cut off for a while
    # One transaction per upload: the technician's sync is still early in the backlog when the daemon starts.
    sync = subprocess.Popen([*SMARTPOS, "sync", "--wait", "--page-size", "1", "--config", str(stack.config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**stack.daemon_env, "COLUMNS": "200"})
    hq_db = stack.hq.home / "headoffice.sqlite3"

    def hq_rows() -> tuple[int, int, int]:
        with sqlite3.connect(hq_db, timeout=10) as db:
            return db.execute("SELECT count(*), count(DISTINCT sequence), coalesce(sum(amount_minor), 0) "
                              "FROM transactions WHERE terminal_id = 'T-1' AND status = 'accepted'").fetchone()

    try:
        wait_until(lambda: hq_db.exists() and hq_rows()[0] > 0, timeout=20, what="the technician's first upload")
        stack.start_daemon()
        out, err = sync.communicate(timeout=120)
    finally:
        if sync.poll() is None:
            sync.kill()
            sync.communicate()
    assert sync.returncode == 0, err
    summary = out.splitlines()
    assert any("still queued 0" in line for line in summary), out
    meanwhile = [line for line in summary if "more left the queue meanwhile (uploaded by the running daemon)" in line]
    assert len(meanwhile) == 1, out
    by_daemon = int(meanwhile[0].split()[0])
    assert 0 < by_daemon < backlog
    assert hq_rows() == (backlog, backlog, total)
    with stack.api() as client:
        wait_until(lambda: client.get("/v1/status").json()["queue"]["unsynced_count"] == 0, timeout=10,
                   what="the daemon to see the drained queue")
        queue = client.get("/v1/status").json()["queue"]
        assert queue["rejected_count"] == 0 and queue["last_sequence"] == backlog
