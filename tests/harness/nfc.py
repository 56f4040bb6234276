"""nfcpy ``udp`` emulators for tests: free ports, phone/tag emulators in subprocesses, readers closed on teardown.

Emulators run as ``python -m tests.harness.nfc phone|tag JSON`` under the ``procs`` fixture, so they are stopped
by PID when the test ends (also when it fails). ``python -m`` keeps them to the simulator functions the CLI uses.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.nfc_reader import udp_port_problem
from drivers.simulators.nfc_target import udp_sockets
from tests.harness.procs import ProcessGroup, wait_until

ROOT = Path(__file__).resolve().parents[2]

# Seconds a multi-tap emulator stays out of the field between its taps. Longer than the udp driver's ~1 s poll, so
# the reader sees the field empty and the next tap is a new presentation; ``gap=0.0`` is a card left on the reader,
# which the reader must not read again (see "Card removal" in drivers/nfc_reader.py).
RETAP_GAP_S = 1.5


# Emulator ports come from below the kernel's ephemeral range (``ip_local_port_range``, 32768-60999 by default).
# A port the kernel handed out is handed out again: every sense of nfcpy's udp reader opens a new socket on a
# random ephemeral port, so a daemon polling for a card could take an emulator's port in the moment between
# choosing it and binding it (seen once: the tag emulator found its port taken and the read timed out).
_EMULATOR_PORTS = range(20000, 32000)
_pick = random.Random()


def free_udp_port() -> int:
    """A UDP port nobody holds right now (the emulator binds it a moment later), outside the ephemeral range."""
    for _ in range(200):
        port = _pick.choice(_EMULATOR_PORTS)
        if udp_port_problem(port):  # 6 of them (22125, 27374 "asp", ...): nfcpy cannot open those
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port in 20000-31999")


def udp_port_bound(port: int) -> bool:
    """True once some process has bound UDP ``port`` (read from /proc: probing by binding would race it)."""
    return bool(udp_sockets(port))


class NfcSims:
    """Starts phone and tag emulators on udp ports, each in its own process."""

    def __init__(self, procs: ProcessGroup) -> None:
        self.procs = procs
        self.count = 0

    def _spawn(self, kind: str, spec: dict[str, Any], *, port: int) -> subprocess.Popen[bytes]:
        self.count += 1
        proc = self.procs.python(
            "-m", "tests.harness.nfc", kind, json.dumps(spec), name=f"nfc-{kind}-{self.count}",
            env={"PYTHONPATH": str(ROOT)},
        )  # fmt: skip

        def up() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"{kind} emulator exited early: {self.procs.log_text(f'nfc-{kind}-{self.count}')}")
            return udp_port_bound(port)

        wait_until(up, timeout=10, what=f"{kind} emulator on udp port {port}")
        return proc

    def phone(self, port: int, *, profile: str = "phone", taps: int | None = None, mode: str | None = None,
              bad_taps: int | None = None, gap: float = RETAP_GAP_S) -> subprocess.Popen[bytes]:  # fmt: skip
        spec = {"profile": profile, "port": port, "taps": taps, "mode": mode, "bad_taps": bad_taps, "gap": gap}
        return self._spawn("phone", spec, port=port)

    def tag(self, port: int, records: list[dict[str, Any]], *, tag_type: str = "type4",
            taps: int | None = None, gap: float = RETAP_GAP_S) -> subprocess.Popen[bytes]:  # fmt: skip
        spec = {"records": records, "port": port, "tag_type": tag_type, "taps": taps, "gap": gap}
        return self._spawn("tag", spec, port=port)


@pytest.fixture
def nfc_sims(procs: ProcessGroup) -> NfcSims:
    return NfcSims(procs)


@pytest.fixture
def nfc_port() -> int:
    return free_udp_port()


@pytest.fixture
def nfc_reader() -> Iterator[Callable[..., Any]]:
    """Factory ``nfc_reader(port, **options) -> NfcpyReader``; every reader made is closed at teardown."""
    from drivers.nfc_reader import NfcpyReader

    made: list[NfcpyReader] = []

    def make(port: int, **options: Any) -> NfcpyReader:
        reader = NfcpyReader(f"udp:127.0.0.1:{port}", **options)
        made.append(reader)
        return reader

    yield make
    for reader in made:
        reader.close()


def _main(argv: list[str]) -> int:
    kind, spec = argv[0], json.loads(argv[1])
    stop = threading.Event()
    if kind == "phone":
        from drivers.simulators.nfc_phone import run_phone

        served = run_phone(spec["profile"], spec["port"], spec.get("taps"), stop, mode=spec.get("mode"),
                           bad_taps=spec.get("bad_taps"), gap=spec.get("gap", 0.0))  # fmt: skip
    else:
        from drivers.cardread import NdefRecord
        from drivers.simulators.nfc_tag import run_tag

        records = [NdefRecord(r["type"], r["value"], r.get("lang")) for r in spec["records"]]
        served = run_tag(records, spec["port"], spec.get("taps"), stop, tag_type=spec.get("tag_type", "type4"),
                         gap=spec.get("gap", 0.0))  # fmt: skip
    print(f"served {served} taps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
