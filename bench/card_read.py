"""Benchmark: full EMV read of each card profile over the real stack (pyscard -> private pcscd -> vpcd -> card).

Measured: software time from "card detected" to "card read result" (connect, PPSE, SELECT, GPO, READ RECORDs,
parsing, result, disconnect), and in the same run the floor: bare pyscard ``SCardTransmit`` replaying the very
same APDUs over the same connect/disconnect. The card runs in its own process (``smartpos sim card --stay``) so
it does not share our GIL. pcscd's ~400 ms presence poll is the simulator's and is not part of either figure;
``tap_median_ms`` adds a few real taps where detection and the read happen in our ``SCardGetStatusChange``
monitor thread, exactly as in service (time from the status change that showed the card to the result).

Run:  .venv/bin/python bench/card_read.py [--reads 300] [--rounds 3] [--taps 5]
Last line: one JSON object (median_ms, p99_ms, floor_median_ms, overhead_ratio, per profile).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.emv import TerminalData
from drivers.pcsc import PcscReaders, PcscTransport
from drivers.simulators.pcscd import PrivatePcscd

PROFILES = ("visa", "mastercard", "phone")
TD = TerminalData(amount_minor=1250, currency="EUR")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def card_process(profile: str, port: int, *extra: str) -> subprocess.Popen:
    code = "from terminal.cli import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "sim", "card", "--profile", profile, "--port", str(port), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Recording(PcscTransport):
    apdus: list[bytes]

    def transmit(self, apdu: bytes):
        self.apdus.append(bytes(apdu))
        return super().transmit(apdu)


def wait_empty(readers: PcscReaders, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    readers.wait_ready(timeout)
    while time.monotonic() < deadline:
        if readers.status()["state"] == "ready":
            return
        time.sleep(0.01)
    raise SystemExit("reader did not become empty")


def wait_present(readers: PcscReaders, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if readers.status()["state"] == "card_present":
            return
        time.sleep(0.01)
    raise SystemExit("card did not appear in the reader")


def bench_profile(profile: str, daemon: PrivatePcscd, reads: int) -> dict:
    from smartcard import scard

    reader = daemon.READER_NAMES[0]
    readers = PcscReaders(reader).start()
    wait_empty(readers)
    proc = card_process(profile, daemon.vpcd_ports[0], "--stay")
    try:
        wait_present(readers)
        # In service the monitor thread performs the read itself, so no status wait of ours runs during a read;
        # here the reads are driven from this thread, so stop the monitor to measure the same situation.
        readers.close()
        # Record the exact APDUs one read sends (61xx/6Cxx follow-ups included), for the floor replay.
        import drivers.pcsc as pcsc_mod

        recorded: list[bytes] = []
        Recording.apdus = recorded
        original = pcsc_mod.PcscTransport
        pcsc_mod.PcscTransport = Recording  # type: ignore[misc]
        try:
            readers.read_present(reader, TD, detected_at=time.monotonic())
        finally:
            pcsc_mod.PcscTransport = original  # type: ignore[misc]

        ours: list[float] = []
        floor: list[float] = []
        hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        for i in range(reads * 2):
            if i % 2 == 0:
                t0 = time.perf_counter()
                result = readers.read_present(reader, TD, detected_at=time.monotonic())
                ours.append((time.perf_counter() - t0) * 1000)
                assert result.masked_pan, result
            else:
                t0 = time.perf_counter()
                hr, handle, proto = scard.SCardConnect(
                    ctx, reader, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
                )
                pci = scard.SCARD_PCI_T0 if proto == scard.SCARD_PROTOCOL_T0 else scard.SCARD_PCI_T1
                for apdu in recorded:
                    hr, resp = scard.SCardTransmit(handle, pci, list(apdu))
                scard.SCardDisconnect(handle, scard.SCARD_UNPOWER_CARD)
                floor.append((time.perf_counter() - t0) * 1000)
                assert hr == 0 and resp[-2:] == [0x90, 0x00], "floor replay failed"
        scard.SCardReleaseContext(ctx)
        return {"apdus": len(recorded), "ours": ours, "floor": floor}
    finally:
        readers.close()
        stop(proc)


def bench_taps(profile: str, daemon: PrivatePcscd, taps: int) -> list[float]:
    """Real taps: detection by our monitor thread, then the read; time from detection to result."""
    reader = daemon.READER_NAMES[0]
    readers = PcscReaders(reader).start()
    wait_empty(readers)
    proc = card_process(profile, daemon.vpcd_ports[0], "--taps", str(taps), "--gap", "0.5")
    out = []
    try:
        for _ in range(taps):
            result = readers.wait_for_card(TD, timeout=10, cancel=threading.Event())
            out.append((result.read_at - result.detected_at) * 1000)
    finally:
        readers.close()
        stop(proc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reads", type=int, default=300, help="reads per profile (and as many floor replays)")
    ap.add_argument("--rounds", type=int, default=3, help="spread each profile's reads over this many rounds")
    ap.add_argument("--taps", type=int, default=5, help="real taps per profile")
    args = ap.parse_args()
    ours: dict[str, list[float]] = {p: [] for p in PROFILES}
    floor: dict[str, list[float]] = {p: [] for p in PROFILES}
    apdus: dict[str, int] = {}
    taps: dict[str, list[float]] = {p: [] for p in PROFILES}
    with PrivatePcscd() as daemon:
        os.environ.update(daemon.env)
        # Rounds rotate the profiles, so a burst of load from elsewhere on the machine does not land on one profile.
        for _ in range(args.rounds):
            for profile in PROFILES:
                r = bench_profile(profile, daemon, max(1, args.reads // args.rounds))
                ours[profile] += r["ours"]
                floor[profile] += r["floor"]
                apdus[profile] = r["apdus"]
        for profile in PROFILES:
            taps[profile] = bench_taps(profile, daemon, args.taps) if args.taps else []
    per: dict[str, dict] = {}
    for profile in PROFILES:
        o, f, t = ours[profile], floor[profile], taps[profile]
        per[profile] = {
            "apdus": apdus[profile],
            "median_ms": round(statistics.median(o), 3),
            "p99_ms": round(pct(o, 99), 3),
            "floor_median_ms": round(statistics.median(f), 3),
            "overhead_ratio": round(statistics.median(o) / statistics.median(f), 3),
            "tap_median_ms": round(statistics.median(t), 3) if t else None,
        }
        print(f"{profile:10s} {apdus[profile]:2d} APDUs  read median {per[profile]['median_ms']:.3f} ms  "
              f"p99 {per[profile]['p99_ms']:.3f} ms  floor {per[profile]['floor_median_ms']:.3f} ms  "
              f"ratio {per[profile]['overhead_ratio']:.2f}x  tap median {per[profile]['tap_median_ms']} ms")
    all_ours = [x for p in PROFILES for x in ours[p]]
    all_floor = [x for p in PROFILES for x in floor[p]]
    all_taps = [x for p in PROFILES for x in taps[p]]
    summary = {
        "reads_per_profile": len(all_ours) // len(PROFILES),
        "median_ms": round(statistics.median(all_ours), 3),
        "p99_ms": round(pct(all_ours, 99), 3),
        "floor_median_ms": round(statistics.median(all_floor), 3),
        "overhead_ratio": round(statistics.median(all_ours) / statistics.median(all_floor), 3),
        "tap_median_ms": round(statistics.median(all_taps), 3) if all_taps else None,
        "tap_p99_ms": round(pct(all_taps, 99), 3) if all_taps else None,
        "profiles": per,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
