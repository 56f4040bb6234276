"""Tap to approval, through the real stacks: daemon (`smartpos run`) + pyscard -> private pcscd -> vpcd ->
simulated card, `force-offline`, durable queue, virtual printer over TCP, head office (SQLite) for enrollment/sync.

Measured per payment (CLOCK_MONOTONIC is shared by all processes on Linux, so the daemon's and the printer's
timestamps compare directly):
- approval: card detected by the reader layer -> payment approved *and* durably recorded (daemon's own stamps);
- receipt: card detected -> last byte of the customer's receipt at the virtual printer (printed first; the
  merchant copy follows and is reported as both_copies_*).
pcscd's ~400 ms polling of the virtual reader happens before "card detected" and is not counted (the
simulator's delay, see hardware-simulation.md). Also: idle RSS and CPU of the daemon, start-to-ready time.

Usage: python bench/tap_to_approval.py [--payments 80]. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True, cwd=REPO)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def warm_up_instrument(printer) -> None:
    """The virtual printer runs in this process and is the stopwatch for "last receipt byte": decode one receipt
    through it before timing, so its own first-call cost (imports, QR decoding set-up) is not charged to the
    daemon's first receipt. The daemon under test is not touched."""
    from drivers.printer import load_profile
    from terminal.receipt import make_test_page, render_escpos

    profile = load_profile()
    session = printer.open_session()
    printer.handle(session, render_escpos(make_test_page(profile), profile))
    printer.end_session(session)
    printer.reset()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--payments", type=int, default=80)
    parser.add_argument("--profile", default="visa")
    parser.add_argument("--idle-s", type=float, default=10.0)
    args = parser.parse_args()

    from drivers.simulators.pcscd import PrivatePcscd
    from drivers.simulators.printer import TcpPrinterServer, VirtualPrinter
    from drivers.simulators.vpcd import VpcdCard

    base = Path(tempfile.mkdtemp(prefix="smartpos-bench-"))
    hq_env = {"SMARTPOS_HQ_HOME": str(base / "hq")}
    hq_port = free_port()
    hq_url = f"http://127.0.0.1:{hq_port}"
    procs: list[subprocess.Popen] = []
    pcscd = PrivatePcscd(base / "pcscd")
    printer = VirtualPrinter(None, png=False)
    warm_up_instrument(printer)
    server = TcpPrinterServer(printer, "127.0.0.1", 0)
    try:
        procs.append(spawn([str(BIN / "smartpos-hq"), "serve", "--port", str(hq_port)], base / "hq.log", hq_env))

        def hq_up() -> bool:
            try:
                return httpx.get(f"{hq_url}/openapi.json", timeout=0.5).status_code == 200
            except httpx.TransportError:
                return False

        wait(hq_up, 30, "head office")
        subprocess.run([str(BIN / "smartpos-hq"), "merchants", "set", "M-B", "--name", "Bench Shop"],
                       capture_output=True, text=True, env={**os.environ, **hq_env}, check=True)
        code = subprocess.run([str(BIN / "smartpos-hq"), "codes", "create", "--merchant", "M-B", "--terminal", "T-B"],
                              capture_output=True, text=True, env={**os.environ, **hq_env}, check=True
                              ).stdout.splitlines()[0]
        config = base / "smartpos.toml"
        state = base / "state"
        subprocess.run([str(BIN / "smartpos"), "enroll", "--hq", hq_url, "--code", code, "--config", str(config),
                        "--state-dir", str(state)], check=True, capture_output=True)
        pcscd.start()
        server.start()
        # Offline limits out of the way: the benchmark repeats one card; the rules themselves still run.
        with open(config, "a") as f:
            f.write(f'\n[api]\nport = 0\n\n[printer]\nuri = "{server.uri}"\n\n[payments]\nmode = "force-offline"\n\n'
                    "[risk]\nvelocity_max_count_24h = 0\nvelocity_max_amount_minor_24h = 0\noffline_max_count = 0\n"
                    "offline_total_limit_minor = 0\n\n[logging]\nlevel = \"warning\"\n")
        env = {**pcscd.env, "SMARTPOS_CONFIG": str(config)}

        t0 = time.monotonic()
        daemon = spawn([str(BIN / "smartpos"), "run"], base / "daemon.log", env)
        procs.append(daemon)
        api_file = state / "api.json"
        wait(lambda: api_file.exists() or daemon.poll() is not None, 30, "the daemon")
        start_to_ready = time.monotonic() - t0
        if daemon.poll() is not None:
            raise SystemExit((base / "daemon.log").read_text()[-2000:])
        url = json.loads(api_file.read_text())["url"]
        client = httpx.Client(base_url=url, timeout=30)

        # Idle: let start-up work settle, then measure RSS and CPU over a quiet window.
        time.sleep(2.0)
        cpu0, w0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(args.idle_s)
        idle_cpu = 100 * (cpu_seconds(daemon.pid) - cpu0) / (time.monotonic() - w0)
        idle_rss = rss_mb(daemon.pid)

        approvals, receipts, reads, both = [], [], [], []
        for i in range(args.payments):
            before = len(printer.receipts)
            r = client.post("/v1/payments", json={"type": "sale", "amount_minor": 100 + i, "currency": "EUR"},
                            headers={"Idempotency-Key": f"bench-{i}"})
            r.raise_for_status()
            pid = r.json()["id"]
            card = VpcdCard(args.profile, "127.0.0.1", pcscd.vpcd_ports[0], taps=1, gap=0.0).start()
            # Follow it like a POS front end: server-sent events, no polling load on the daemon.
            with client.stream("GET", f"/v1/payments/{pid}/events") as events:
                for line in events.iter_lines():
                    if line.startswith("data: "):
                        p = json.loads(line[6:])
            for _ in range(100):  # the daemon's timing stamp lands a moment after the approval commit
                if p["state"] != "approved" or "timings_ms" in p:
                    break
                time.sleep(0.002)
                p = client.get(f"/v1/payments/{pid}").json()
            if p["state"] != "approved":
                raise SystemExit(f"payment {i} ended {p['state']}: {p.get('error') or p.get('authorization')}")
            approvals.append(p["timings_ms"]["card_to_approved"])
            reads.append(p["timings_ms"]["card_read"])
            if not printer.wait_for_receipts(before + 2, 10):
                raise SystemExit(f"payment {i}: receipts did not arrive")
            customer, merchant = printer.receipts[before], printer.receipts[before + 1]
            if "CUSTOMER" not in customer.text.upper():
                raise SystemExit(f"payment {i}: first receipt is not the customer copy")
            receipts.append((customer.received_at - p["card_detected_monotonic"]) * 1000)
            both.append((merchant.received_at - p["card_detected_monotonic"]) * 1000)
            card.wait(5)
            card.stop(1)

        result = {
            "payments": len(approvals),
            "approval_p50_ms": round(statistics.median(approvals), 2),
            "approval_p99_ms": round(percentile(approvals, 99), 2),
            "card_read_p50_ms": round(statistics.median(reads), 2),
            "receipt_p50_ms": round(statistics.median(receipts), 2),
            "receipt_p99_ms": round(percentile(receipts, 99), 2),
            "both_copies_p50_ms": round(statistics.median(both), 2),
            "both_copies_p99_ms": round(percentile(both, 99), 2),
            "idle_rss_mb": round(idle_rss, 1),
            "idle_cpu_percent": round(idle_cpu, 2),
            "start_to_ready_s": round(start_to_ready, 3),
        }
        print(f"approval (card detected -> approved+durable): p50 {result['approval_p50_ms']} ms, "
              f"p99 {result['approval_p99_ms']} ms (card read alone p50 {result['card_read_p50_ms']} ms)")
        print(f"receipt (card detected -> last byte of the customer copy): p50 {result['receipt_p50_ms']} ms, "
              f"p99 {result['receipt_p99_ms']} ms; merchant copy too: p50 {result['both_copies_p50_ms']} ms, "
              f"p99 {result['both_copies_p99_ms']} ms")
        print(f"daemon idle: {result['idle_rss_mb']} MB RSS, {result['idle_cpu_percent']} % CPU; "
              f"start to ready {result['start_to_ready_s']} s")
        print(json.dumps(result))
    finally:
        for proc in reversed(procs):
            stop(proc)
        server.stop()
        pcscd.stop()


if __name__ == "__main__":
    main()
