"""Benchmark: a sale receipt with QR, from receipt model to the last byte on the virtual printer's socket.

The virtual printer runs in its own process (``smartpos sim printer --tcp 127.0.0.1:0 --json --no-png``) and
stamps each receipt with ``time.monotonic()`` when its last byte (the cut) arrived; monotonic time is one clock
for all processes on Linux, so ``received - start`` is the real time to last byte.

Series (same run):
- ``layout_encode``: layout + ESC/POS encoding with python-escpos (``render_escpos``), no I/O;
- ``sale_receipt``: layout + encoding + send on an open connection, until the printer has the last byte;
- ``spooler_path``: what the spooler does per job: connect, DLE EOT 1/4, render, send (to last byte);
- ``non_ascii``: sale receipt whose merchant line (accents, CJK and the euro sign) goes as an image.

Run:  .venv/bin/python bench/printing.py [--n 300]
Last line: one JSON object with sale_receipt_median_ms, sale_receipt_p99_ms and the other series.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers.printer import load_profile, open_printer  # noqa: E402
from terminal.receipt import receipt_for_transaction, render_escpos  # noqa: E402

MERCHANT = {"id": "M-0042", "name": "Corner Coffee", "address": ["12 Main Street", "1000 Springfield"]}
CJK_MERCHANT = {**MERCHANT, "name": "Caf\u00e9 Z\u00fcrich \u2013 \u5317\u4eac\u5e97 \u20ac"}
SALE = {
    "uuid": "6f1c2f7e-9a41-4c59-8a43-0c2b7d9e1a55", "sequence": 42, "batch": 3, "type": "sale",
    "created_at": "2026-11-23T12:34:56Z", "amount_minor": 1250, "currency": "EUR", "scheme": "visa",
    "masked_pan": "476173******0119", "aid": "A0000000031010", "label": "VISA CREDIT", "entry_mode": "contactless",
    "auth_mode": "online", "auth_code": "A1B2C3", "reference": "R-1001", "atc": "001C", "tvr": "0000008000",
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Sim:
    def __init__(self) -> None:
        self.out = tempfile.TemporaryDirectory(prefix="smartpos-bench-print-")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from terminal.cli import main; main()", "sim", "printer", "--tcp",
             "127.0.0.1:0", "--json", "--no-png", "--out", self.out.name],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        ready = json.loads(self.proc.stdout.readline())
        self.uri = ready["tcp"]

    def next_receipt(self) -> dict:
        while True:
            event = json.loads(self.proc.stdout.readline())
            if event.get("event") == "receipt":
                return event

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.out.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--profile", default="TM-T20II")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    model = receipt_for_transaction(SALE, merchant=MERCHANT, terminal_id="T-0001", copy="customer")
    cjk_model = receipt_for_transaction(SALE, merchant=CJK_MERCHANT, terminal_id="T-0001", copy="customer")
    sim = Sim()
    series: dict[str, list[float]] = {"layout_encode": [], "sale_receipt": [], "spooler_path": [], "non_ascii": []}
    size = len(render_escpos(model, profile))
    try:
        with open_printer(sim.uri, profile=profile, timeout=5) as conn:
            for i in range(args.n + 20):  # 20 warm-up rounds
                start = time.monotonic()
                data = render_escpos(model, profile)
                encoded = time.monotonic()
                conn.write(data)
                received = sim.next_receipt()["received_at_monotonic"]
                if i >= 20:
                    series["layout_encode"].append((encoded - start) * 1000)
                    series["sale_receipt"].append((received - start) * 1000)
            for i in range(args.n + 5):
                start = time.monotonic()
                with open_printer(sim.uri, profile=profile, timeout=5, status_timeout=0.5) as per_job:
                    assert per_job.status().ready
                    per_job.write(render_escpos(model, profile))
                    received = sim.next_receipt()["received_at_monotonic"]
                if i >= 5:
                    series["spooler_path"].append((received - start) * 1000)
            for i in range(args.n // 3 + 5):
                start = time.monotonic()
                conn.write(render_escpos(cjk_model, profile))
                received = sim.next_receipt()["received_at_monotonic"]
                if i >= 5:
                    series["non_ascii"].append((received - start) * 1000)
    finally:
        sim.stop()
    result: dict[str, float | int | str] = {"profile": profile.name, "n": args.n, "sale_receipt_bytes": size}
    for name, values in series.items():
        result[f"{name}_median_ms"] = round(statistics.median(values), 3)
        result[f"{name}_p99_ms"] = round(pct(values, 0.99), 3)
    result["target_median_ms"] = 20
    result["within_target"] = result["sale_receipt_median_ms"] <= 20
    for name in series:
        print(f"{name:>15}: median {result[f'{name}_median_ms']:.2f} ms  p99 {result[f'{name}_p99_ms']:.2f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
