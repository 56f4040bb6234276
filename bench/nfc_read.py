"""Benchmark: card and tag reads over the real nfcpy stack (NfcpyReader -> nfcpy udp driver -> emulator process).

Measured in one run, emulators in their own processes (``smartpos sim phone`` / ``smartpos sim tag``):
- ``apdu``: round trip of one APDU (SELECT PPSE) through ``NfcpyTransport.transmit`` on an activated phone, and
  the floor: bare nfcpy ``tag.transceive`` of the same APDU on the same activation;
- ``phone``: full EMV read of the phone profile, software time from "card detected" (sense returned) to the
  result;
- ``type4`` / ``type3``: NDEF tag read, detected -> result;
- ``cancel``: from ``cancel.set()`` to ``ReadTimeout`` while nfcpy is blocked in an empty poll.
nfcpy's udp sense waits ~1 s per technology that does not answer; that is the simulator's, so it is excluded
from the read figures. A card left in the field is not read twice (the reader waits until it has seen the field
empty), so every read here is a new tap: the emulator leaves the field for ``RETAP_GAP_S`` between taps and the
reader polls only the emulator's technology, which makes a read cost ~2.5 s of wall time (hence fewer reads).

Run:  .venv/bin/python bench/nfc_read.py [--reads 40] [--apdus 2000] [--cancels 20]
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/queue.py would shadow the standard library's queue module (nfc_reader needs it): keep bench/ off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from drivers.emv import TerminalData  # noqa: E402
from drivers.errors import ReadTimeout  # noqa: E402
from drivers.nfc_reader import NfcpyReader, NfcpyTransport, import_nfc  # noqa: E402

TD = TerminalData(amount_minor=1250, currency="EUR")
SMARTPOS = str(Path(sys.executable).parent / "smartpos")
SELECT_PPSE = bytes.fromhex("00A404000E325041592E5359532E444446303100")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def emulator(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen([SMARTPOS, "sim", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # import + bind; a reader polling earlier would only wait one more sense cycle
    if proc.poll() is not None:
        raise SystemExit(f"emulator failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def ms(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values) * 1000, 3), "p99_ms": round(pct(values, 99) * 1000, 3)}


def bench_apdu(apdus: int) -> dict[str, float]:
    nfc = import_nfc()
    port = free_port()
    proc = emulator("phone", "--profile", "phone", "--port", str(port))
    clf = nfc.ContactlessFrontend(f"udp:127.0.0.1:{port}")
    try:
        target = None
        while target is None:
            target = clf.sense(nfc.clf.RemoteTarget("106A"))
        tag = nfc.tag.activate(clf, target)
        transport = NfcpyTransport(tag)
        ours, floor = [], []
        for _ in range(apdus):
            t0 = time.perf_counter()
            transport.transmit(SELECT_PPSE)
            t1 = time.perf_counter()
            tag.transceive(bytearray(SELECT_PPSE))
            t2 = time.perf_counter()
            ours.append(t1 - t0)
            floor.append(t2 - t1)
    finally:
        clf.close()
        stop(proc)
    out = {f"apdu_{k}": v for k, v in ms(ours).items()}
    out.update({f"apdu_floor_{k}": v for k, v in ms(floor).items()})
    out["apdu_overhead_ratio"] = round(statistics.median(ours) / statistics.median(floor), 3)
    return out


# Out of the field between taps: longer than one unanswered udp poll (~1 s), so the reader sees the field empty.
RETAP_GAP_S = 1.5


def bench_reads(label: str, args: list[str], reads: int, technology: str = "106A") -> dict[str, float]:
    port = free_port()
    proc = emulator(*args, "--port", str(port), "--gap", str(RETAP_GAP_S))
    reader = NfcpyReader(f"udp:127.0.0.1:{port}", technologies=(technology,))
    read_s = []
    try:
        reader.wait_for_card(TD, timeout=10)  # warm-up: imports, first sense
        for _ in range(reads):
            result = reader.wait_for_card(TD, timeout=10)
            read_s.append(result.read_at - result.detected_at)
    finally:
        reader.close()
        stop(proc)
    return {f"{label}_read_{k}": v for k, v in ms(read_s).items()}


def bench_cancel(count: int) -> dict[str, float]:
    """Time from ``cancel.set()`` to ``ReadTimeout`` while nfcpy polls an empty udp port (each poll blocks ~1 s)."""
    reader = NfcpyReader(f"udp:127.0.0.1:{free_port()}")
    latencies = []
    try:
        for i in range(count):
            cancel = threading.Event()
            fired: list[float] = []

            def fire(delay: float, cancel: threading.Event = cancel, fired: list[float] = fired) -> None:
                time.sleep(delay)
                fired.append(time.monotonic())
                cancel.set()

            # Land at different points of nfcpy's ~1 s poll.
            threading.Thread(target=fire, args=(0.05 + 0.37 * (i % 5),), daemon=True).start()
            try:
                reader.wait_for_card(TD, timeout=10, cancel=cancel)
            except ReadTimeout:
                latencies.append(time.monotonic() - fired[0])
    finally:
        reader.close()
    return {f"cancel_{k}": v for k, v in ms(latencies).items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reads", type=int, default=40)
    parser.add_argument("--apdus", type=int, default=2000)
    parser.add_argument("--cancels", type=int, default=20)
    opts = parser.parse_args()
    results: dict[str, float] = {}
    results.update(bench_apdu(opts.apdus))
    results.update(bench_cancel(opts.cancels))
    results.update(bench_reads("phone", ["phone", "--profile", "phone"], opts.reads))
    results.update(bench_reads("type4", ["tag", "--text", "MEMBER-0042", "--uri", "https://shop.example/c/1"],
                               opts.reads))  # fmt: skip
    results.update(bench_reads("type3", ["tag", "--type", "type3", "--text", "MEMBER-0042"], max(5, opts.reads // 4),
                               technology="212F"))
    for key, value in results.items():
        print(f"{key:28s} {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
