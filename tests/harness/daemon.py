"""The whole terminal stack for end-to-end tests: head office (SQLite) + enrollment + private pcscd with vpcd
+ virtual printer over TCP + the daemon as a real `smartpos run` process. Everything stopped by PID on teardown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.harness.procs import ProcessGroup, wait_until

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SMARTPOS = [str(BIN / "smartpos")]
SMARTPOS_HQ = [str(BIN / "smartpos-hq")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout,
                          cwd=REPO)


@dataclass
class HeadOffice:
    url: str
    home: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"SMARTPOS_HQ_HOME": str(self.home)}

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        result = run_cli([*SMARTPOS_HQ, *args], env=self.env)
        assert result.returncode == 0, f"smartpos-hq {' '.join(args)}: {result.stdout}{result.stderr}"
        return result

    def enrollment_code(self, merchant: str = "M-1", terminal: str = "T-1") -> str:
        self.cli("merchants", "set", merchant, "--name", merchant)  # codes are only issued for known merchants
        return self.cli("codes", "create", "--merchant", merchant, "--terminal", terminal).stdout.splitlines()[0]


@dataclass
class PosStack:
    procs: ProcessGroup
    tmp: Path
    hq: HeadOffice
    config_path: Path
    state_dir: Path
    pcscd: object
    printer: object
    printer_server: object
    daemon: subprocess.Popen | None = None
    api_url: str | None = None
    cards: list = field(default_factory=list)
    name: str = "daemon"
    reader_index: int = 0  # which vpcd reader this terminal's cards tap on

    # ----- daemon --------------------------------------------------------------------------------------------
    @property
    def daemon_env(self) -> dict[str, str]:
        return {**self.pcscd.env, "SMARTPOS_CONFIG": str(self.config_path), "PYTHONUNBUFFERED": "1"}

    def spawn_daemon(self, env: dict[str, str] | None = None) -> None:
        (self.state_dir / "api.json").unlink(missing_ok=True)
        self.daemon = self.procs.spawn([*SMARTPOS, "run"], name=self.name, env={**self.daemon_env, **(env or {})},
                                       cwd=REPO)

    def wait_daemon(self, timeout: float = 15) -> str:
        api_file = self.state_dir / "api.json"
        wait_until(lambda: api_file.exists() or self.daemon.poll() is not None, timeout=timeout,
                   what="the daemon to listen")
        assert self.daemon.poll() is None, f"daemon exited: {self.log()[-3000:]}"
        self.api_url = json.loads(api_file.read_text())["url"]
        return self.api_url

    def start_daemon(self, timeout: float = 15, env: dict[str, str] | None = None) -> str:
        self.spawn_daemon(env)
        return self.wait_daemon(timeout)

    def second_terminal(self, terminal_id: str = "T-2") -> PosStack:
        """Another terminal of the same merchant on the same head office, pcscd and printer, tapping on the
        second vpcd reader. Both terminals then need ``[readers] pcsc_filter`` (see ``reader_filter``)."""
        tmp = self.tmp / terminal_id
        tmp.mkdir()
        state_dir, config_path = tmp / "state", tmp / "smartpos.toml"
        enroll(self.hq, terminal_id, config_path, state_dir)
        write_config(config_path, state_dir=state_dir, hq_url=self.hq.url, printer_uri=self.printer_server.uri)
        return PosStack(self.procs, tmp, self.hq, config_path, state_dir, self.pcscd, self.printer,
                        self.printer_server, name=f"daemon-{terminal_id}", reader_index=1)

    @property
    def reader_filter(self) -> str:
        return f"PCD 00 0{self.reader_index}"

    def kill_daemon(self, sig: int = signal.SIGKILL) -> int:
        """Signal the daemon process itself (not its group: SIGTERM must reach only the daemon) and reap it."""
        assert self.daemon is not None
        try:
            os.kill(self.daemon.pid, sig)
        except ProcessLookupError:
            pass
        code = self.daemon.wait(20)
        self.procs.procs.remove(self.daemon)
        self.daemon = None
        return code

    def api(self, timeout: float = 10) -> httpx.Client:
        assert self.api_url
        return httpx.Client(base_url=self.api_url, timeout=timeout)

    # ----- cards ---------------------------------------------------------------------------------------------
    def tap(self, profile: str = "visa", *, taps: int = 1, **kwargs) -> object:
        from drivers.simulators.vpcd import VpcdCard

        card = VpcdCard(profile, "127.0.0.1", self.pcscd.vpcd_ports[self.reader_index], taps=taps, **kwargs).start()
        self.cards.append(card)
        return card

    def stop_cards(self) -> None:
        for card in self.cards:
            card.stop(2)
        self.cards.clear()

    def add_config(self, text: str) -> None:
        """Append TOML sections (e.g. ``[payments] mode``); call before ``start_daemon``."""
        self.config_path.write_text(self.config_path.read_text() + "\n" + text + "\n")

    def log(self) -> str:
        return self.procs.log_text(self.name)


def enroll(hq: HeadOffice, terminal_id: str, config_path: Path, state_dir: Path) -> None:
    code = hq.enrollment_code(terminal=terminal_id)
    result = run_cli([*SMARTPOS, "enroll", "--hq", hq.url, "--code", code, "--config", str(config_path),
                      "--state-dir", str(state_dir)])
    assert result.returncode == 0, f"enroll failed: {result.stdout}{result.stderr}"


def write_config(path: Path, *, state_dir: Path, hq_url: str, printer_uri: str | None) -> None:
    """Adds the daemon's settings for tests to what enrollment wrote (terminal id, state_dir, head office url)."""
    existing = path.read_text() if path.exists() else ""
    lines = [existing.rstrip(), ""]
    if "[terminal]" not in existing:
        lines += ["[terminal]", f'state_dir = "{state_dir}"', ""]
    if "[headoffice]" not in existing:
        lines += ["[headoffice]", f'url = "{hq_url}"', ""]
    lines += ["[api]", 'host = "127.0.0.1"', "port = 0", ""]
    if printer_uri:
        lines += ["[printer]", f'uri = "{printer_uri}"', "timeout_s = 1.0", ""]
    path.write_text("\n".join(lines))


@pytest.fixture
def daemon_hq(procs: ProcessGroup, tmp_path: Path) -> Iterator[HeadOffice]:
    home = tmp_path / "hq"
    home.mkdir()
    port = free_port()
    hq = HeadOffice(url=f"http://127.0.0.1:{port}", home=home, port=port)
    hq.proc = procs.spawn([*SMARTPOS_HQ, "serve", "--host", "127.0.0.1", "--port", str(port)], name="hq",
                          env=hq.env, cwd=REPO)

    def up() -> bool:
        try:
            return httpx.get(f"{hq.url}/openapi.json", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return hq.proc.poll() is not None

    wait_until(up, timeout=20, what="head office to listen")
    assert hq.proc.poll() is None, procs.log_text("hq")[-3000:]
    yield hq


@pytest.fixture
def pos_stack(procs: ProcessGroup, tmp_path: Path, daemon_hq: HeadOffice):
    """Enrolled terminal with pcscd+vpcd and the virtual printer; the daemon is started by the test
    (``stack.start_daemon()``) after it adjusts ``stack.config_path`` if it wants to."""
    from drivers.simulators.pcscd import PrivatePcscd
    from drivers.simulators.printer import TcpPrinterServer, VirtualPrinter

    state_dir = tmp_path / "state"
    config_path = tmp_path / "smartpos.toml"
    enroll(daemon_hq, "T-1", config_path, state_dir)

    pcscd = PrivatePcscd(tmp_path / "pcscd")
    pcscd.start()
    printer = VirtualPrinter(tmp_path / "printed")
    server = TcpPrinterServer(printer, "127.0.0.1", 0).start()
    write_config(config_path, state_dir=state_dir, hq_url=daemon_hq.url, printer_uri=server.uri)
    stack = PosStack(procs, tmp_path, daemon_hq, config_path, state_dir, pcscd, printer, server)
    try:
        yield stack
    finally:
        stack.stop_cards()
        procs.stop_all()
        server.stop()
        pcscd.stop()


def wait_payment(client: httpx.Client, payment_id: str, *states: str, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = client.get(f"/v1/payments/{payment_id}").json()
        if last.get("state") in states:
            return last
        time.sleep(0.02)
    raise AssertionError(f"payment {payment_id} is {last and last.get('state')}, wanted one of {states}")
