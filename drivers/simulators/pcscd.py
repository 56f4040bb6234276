"""A private pcscd with its own vpcd ports and its own client socket.

Tests, ``smartpos demo`` and ``smartpos sim pcscd`` use it so they never touch (or depend on) the machine's
pcscd, and several of them can run side by side. How: pcscd is started in its own mount namespace
(``unshare -m``) where ``/run/pcscd`` is bind-mounted over a private directory, with a reader configuration that
holds only the vpcd driver on a free port pair. Clients reach it by setting ``PCSCLITE_CSOCK_NAME`` to the private
socket (``env``); libpcsclite reads that variable once per process, so set it before the first PC/SC call.

Needs root for the namespace and the bind mount; otherwise the same command runs under ``sudo -n``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

VPCD_CONF = Path("/etc/reader.conf.d/vpcd")
VPCD_LIBPATHS = (
    Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so"),
    Path("/usr/lib64/pcsc/drivers/serial/libifdvpcd.so"),
)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the thread that started us ends, so a killed test run or demo
    never leaves a pcscd behind. (Call ``start()`` from a long-lived thread.)"""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class PcscdError(RuntimeError):
    """The private pcscd could not be started (pcscd or vpcd missing, no privileges, did not come up)."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A port P such that P and P+1 are free now (vpcd listens on both: readers ``00 00`` and ``00 01``)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65535 and _port_free(port) and _port_free(port + 1):
            return port
    raise PcscdError("no free port pair for vpcd")


def _vpcd_libpath() -> str:
    if VPCD_CONF.is_file():
        for line in VPCD_CONF.read_text().splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0] == "LIBPATH":
                return parts[1].strip()
    for path in VPCD_LIBPATHS:
        if path.is_file():
            return str(path)
    raise PcscdError("vpcd driver not found (install the vsmartcard-vpcd package)")


class PrivatePcscd:
    """pcscd with vpcd on ``vpcd_ports`` and its socket at ``socket_path``. ``start()``/``stop()``/``restart()``,
    or use as a context manager. ``env`` is what a client process needs in its environment."""

    READER_NAMES = ("Virtual PCD 00 00", "Virtual PCD 00 01")

    def __init__(self, base_dir: Path | str | None = None, *, port: int | None = None, debug: bool = False) -> None:
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="smartpos-pcscd-"))
        self.run_dir = self.base_dir / "run"
        self.conf_dir = self.base_dir / "reader.conf.d"
        self.log_path = self.base_dir / "pcscd.log"
        self.port = port if port is not None else free_port_pair()
        self.debug = debug
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "pcscd.comm"

    @property
    def vpcd_ports(self) -> tuple[int, int]:
        return (self.port, self.port + 1)

    @property
    def env(self) -> dict[str, str]:
        return {"PCSCLITE_CSOCK_NAME": str(self.socket_path)}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def _write_conf(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "vpcd").write_text(
            'FRIENDLYNAME "Virtual PCD"\n'
            f"DEVICENAME   /dev/null:0x{self.port:04X}\n"
            f"LIBPATH      {_vpcd_libpath()}\n"
            f"CHANNELID    0x{self.port:04X}\n"
        )

    def _command(self) -> list[str]:
        pcscd = shutil.which("pcscd") or ("/usr/sbin/pcscd" if Path("/usr/sbin/pcscd").exists() else None)
        if pcscd is None:
            raise PcscdError("pcscd not found (install the pcscd package)")
        unshare = shutil.which("unshare") or "/usr/bin/unshare"
        flags = "-f -d" if self.debug else "-f"
        script = (
            "mkdir -p /run/pcscd && "
            f"mount --bind '{self.run_dir}' /run/pcscd && "
            f"exec '{pcscd}' {flags} -c '{self.conf_dir}'"
        )
        cmd = [unshare, "-m", "--propagation", "private", "sh", "-c", script]
        if os.geteuid() != 0:
            cmd = ["sudo", "-n", *cmd]
        return cmd

    def start(self, timeout: float = 10.0) -> None:
        if self.pid is not None:
            return
        self._write_conf()
        for stale in ("pcscd.comm", "pcscd.pid"):
            try:
                (self.run_dir / stale).unlink()
            except FileNotFoundError:
                pass
            except PermissionError:
                pass
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-400:]
                self.proc = None
                raise PcscdError(f"pcscd exited at start: {tail.strip() or 'no output'}")
            if self._socket_up():
                return
            time.sleep(0.02)
        self.stop()
        raise PcscdError(f"pcscd did not open its socket within {timeout:.0f}s")

    def _socket_up(self) -> bool:
        if not self.socket_path.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(self.socket_path))
            except OSError:
                return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        except PermissionError:  # started through sudo: let sudo forward the signal
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait(5)

    def restart(self, *, pause: float = 0.0) -> None:
        self.stop()
        if pause:
            time.sleep(pause)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PrivatePcscd:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()
