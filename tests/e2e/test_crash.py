"""kill -9 of the daemon at random points during payments: no approval the front end saw is ever missing from the
queue or head office, no duplicate at head office, and in-flight payments resolve (recorded -> approved,
not recorded -> failed). Two terminals (one head office, one pcscd with two vpcd readers) are killed side by
side, so the 50 kills cost 25 daemon start-ups of wall time."""

import json
import random
import signal
import socket
import threading
import time

import httpx
import pytest

from tests.harness.procs import wait_until

pytestmark = pytest.mark.pcscd

ROUNDS = 25  # x 2 terminals = 50 kills
CONFIG = ("[payments]\nmode = \"force-offline\"\n\n[sync]\ninterval_s = 0.3\n\n[risk]\nvelocity_max_count_24h = 0\n"
          "velocity_max_amount_minor_24h = 0\noffline_max_count = 0\noffline_total_limit_minor = 0\n\n"
          "[readers]\npcsc_filter = \"{filter}\"")


class FrontEnd:
    """Polls a payment like a POS would and remembers every state it was shown."""

    def __init__(self, url, payment_id):
        self.seen = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, payment_id), daemon=True)
        self._thread.start()

    def _run(self, url, payment_id):
        with httpx.Client(base_url=url, timeout=1.0) as client:
            while not self._stop.is_set():
                try:
                    state = client.get(f"/v1/payments/{payment_id}").json()["state"]
                except (httpx.HTTPError, ValueError, KeyError):
                    return  # the daemon is gone
                self.seen.append(state)
                time.sleep(0.002)

    def stop(self):
        self._stop.set()
        self._thread.join(2)


def check_terminal(stack, client, payments):
    """After the kills: every payment resolved, every approval the front end saw still approved."""
    final = {pid: client.get(f"/v1/payments/{pid}").json() for pid in payments}
    for pid, seen in payments.items():
        state = final[pid]["state"]
        assert state in ("approved", "failed"), (pid, final[pid], stack.log()[-3000:])
        if "approved" in seen:
            assert state == "approved", f"front end saw {pid} approved, now {state}: {stack.log()[-3000:]}"
        if state == "approved":
            assert final[pid]["sequence"] is not None
        else:
            assert final[pid]["error"]["code"] == "interrupted", (final[pid], stack.log()[-3000:])
    return {pid for pid, p in final.items() if p["state"] == "approved"}, final


def at_head_office(stack, terminal_id, batch):
    listing = json.loads(stack.hq.cli("batches", "list", "--json").stdout)
    entry = next(b for b in listing if b["terminal_id"] == terminal_id and b["batch"] == batch)
    assert entry["status"] == "balanced", entry
    return json.loads(stack.hq.cli("batches", "pull", str(entry["id"]), "--format", "json").stdout)["transactions"]


def test_kill_minus_nine_at_random_points(pos_stack):
    one = pos_stack
    two = one.second_terminal("T-2")
    terminals = [one, two]
    for stack in terminals:
        stack.add_config(CONFIG.format(filter=stack.reader_filter))
    rng = random.Random(20261123)
    payments = {one.name: {}, two.name: {}}  # id -> states the front end saw
    for i in range(ROUNDS):
        for stack in terminals:
            stack.spawn_daemon()
        watchers = []
        for stack in terminals:
            url = stack.wait_daemon()
            with httpx.Client(base_url=url, timeout=5) as client:
                r = client.post("/v1/payments", json={"amount_minor": 100 + i, "currency": "EUR"},
                                headers={"Idempotency-Key": f"kill-{i}"})
                assert r.status_code == 201, r.text
            watchers.append((stack, r.json()["id"], FrontEnd(url, r.json()["id"]), stack.tap("visa", gap=0.0)))
        # Random points: mostly around the tap (pcscd sees it 0-0.4 s after the card connects), sometimes later,
        # while the receipts print and the sync uploads.
        for stack, pid, watcher, card in watchers:
            time.sleep(rng.uniform(0.0, 0.35))
            stack.kill_daemon()
            watcher.stop()
            card.stop(1)
            payments[stack.name][pid] = watcher.seen

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(one.tmp / "notify.sock"))
    notify.settimeout(10)
    two.spawn_daemon()
    url = one.start_daemon(env={"NOTIFY_SOCKET": str(one.tmp / "notify.sock"), "WATCHDOG_USEC": "400000"})
    assert notify.recv(4096).startswith(b"READY=1")
    assert notify.recv(4096) == b"WATCHDOG=1"  # the watchdog pings (every 0.2 s here) while healthy
    two.wait_daemon()

    closed = {}
    approved = {}
    finals = {}
    for stack in terminals:
        with stack.api() as client:
            approved[stack.name], finals[stack.name] = check_terminal(stack, client, payments[stack.name])
            wait_until(lambda c=client: c.get("/v1/status").json()["queue"]["unsynced_count"] == 0, timeout=30,
                       what="the queue to drain to head office")
            closed[stack.name] = client.post("/v1/batches/close").json()
            assert closed[stack.name]["headoffice"]["status"] == "balanced", (closed[stack.name], stack.log()[-3000:])
    total_approved = sum(len(a) for a in approved.values())
    assert total_approved, "no payment got approved in any run; the kill points never reached an approval"
    assert total_approved < 2 * ROUNDS, "every run approved: the kills never hit a payment in flight"

    with one.api() as client:
        # SIGTERM: the payment waiting for a tap ends cancelled, the daemon says STOPPING and exits 0.
        waiting = client.post("/v1/payments", json={"amount_minor": 5, "currency": "EUR"},
                              headers={"Idempotency-Key": "last"}).json()
    assert one.kill_daemon(signal.SIGTERM) == 0
    messages = []
    notify.settimeout(0.5)
    try:
        while True:
            messages.append(notify.recv(4096))
    except TimeoutError:
        pass
    notify.close()
    assert b"STOPPING=1" in messages
    events = [json.loads(line) for line in one.log().splitlines() if line.startswith("{")]
    cancelled = [e for e in events if e.get("event") == "payment.cancelled" and e.get("payment_id") == waiting["id"]]
    assert cancelled, "the waiting payment was not ended on SIGTERM"
    assert any(e.get("event") == "daemon.stopped" for e in events)

    for stack, terminal_id in ((one, "T-1"), (two, "T-2")):
        txns = at_head_office(stack, terminal_id, closed[stack.name]["batch"])
        sequences = [t["sequence"] for t in txns]
        uuids = [t["uuid"] for t in txns]
        assert len(uuids) == len(set(uuids)), "duplicate transaction at head office"
        assert sorted(sequences) == list(range(1, len(approved[stack.name]) + 1)), "gap or duplicate sequence"
        recorded = {finals[stack.name][pid]["transaction_id"] for pid in approved[stack.name]}
        assert recorded == set(uuids), "head office and the terminal disagree on the approved transactions"
