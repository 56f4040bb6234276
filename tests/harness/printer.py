"""Printer fixtures: the virtual printer in-process on TCP (free port) and on a socat pty pair."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.printer import PrinterProfile, load_profile
from drivers.simulators.printer import ControlServer, SerialPrinterPort, TcpPrinterServer, VirtualPrinter
from tests.harness.procs import ProcessGroup, wait_until


@dataclass
class PrinterSink:
    printer: VirtualPrinter
    uri: str
    control: ControlServer | None = None

    @property
    def receipts(self) -> list:
        return self.printer.receipts

    def wait_receipts(self, count: int, timeout: float = 5.0) -> list:
        assert self.printer.wait_for_receipts(count, timeout), (
            f"expected {count} receipt(s), got {len(self.printer.receipts)}: {self.printer.snapshot()}"
        )
        return self.printer.receipts


@pytest.fixture(scope="session")
def printer_profile() -> PrinterProfile:
    return load_profile("TM-T20II")


@pytest.fixture
def tcp_printer(tmp_path: Path, printer_profile: PrinterProfile) -> Iterator[PrinterSink]:
    vp = VirtualPrinter(tmp_path / "printed", columns=printer_profile.columns, width_px=printer_profile.width_px)
    server = TcpPrinterServer(vp).start()
    control = ControlServer(vp).start()
    try:
        yield PrinterSink(vp, server.uri, control)
    finally:
        control.stop()
        server.stop()


def socat_pty_pair(procs: ProcessGroup) -> tuple[str, str]:
    """Start ``socat -d -d pty,raw,echo=0 pty,raw,echo=0`` and return its two pty paths."""
    if not shutil.which("socat"):
        pytest.skip("socat is not installed (Makefile APT_PACKAGES has it)")
    procs.spawn(["socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"], name="socat")
    paths: list[str] = []

    def ready() -> bool:
        paths[:] = re.findall(r"PTY is (\S+)", procs.log_text("socat"))
        return len(paths) == 2 and "starting data transfer loop" in procs.log_text("socat")

    wait_until(ready, timeout=5, what="socat pty pair")
    return paths[0], paths[1]


@pytest.fixture
def pty_printer(procs: ProcessGroup, tmp_path: Path, printer_profile: PrinterProfile) -> Iterator[PrinterSink]:
    """The virtual printer on one end of a socat pty pair; ``uri`` is ``serial:<other end>``."""
    printer_end, client_end = socat_pty_pair(procs)
    vp = VirtualPrinter(tmp_path / "printed", columns=printer_profile.columns, width_px=printer_profile.width_px)
    port = SerialPrinterPort.device(vp, printer_end).start()
    time.sleep(0.05)
    try:
        yield PrinterSink(vp, f"serial:{client_end}?baudrate=115200")
    finally:
        port.stop()
