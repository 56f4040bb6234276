"""`smartpos sim printer`: the virtual ESC/POS printer on TCP and/or a pty (see drivers/simulators/printer.py)."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import click


def _host_port(value: str, option: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint=option)
    return host.strip("[]") or "127.0.0.1", int(port)


@click.command()
@click.option("--tcp", "tcp", metavar="HOST:PORT", help="listen like a network printer (port 0: any free port)")
@click.option("--pty", "use_pty", is_flag=True, help="create a pty; clients open the printed path (serial:PATH)")
@click.option("--device", metavar="PATH", help="serve an existing tty, e.g. one end of a socat pty pair")
@click.option("--link", metavar="PATH", help="with --pty: also make a symlink to the pty at PATH")
@click.option("--control", metavar="HOST:PORT", default="127.0.0.1:0", show_default=True,
              help="control channel: 'mode out', 'mode ok', 'mode out after 300', 'drop after 300', 'status'")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("printed"),
              show_default=True, help="directory for receipt-NNNN.txt / .png")
@click.option("--profile", default="TM-T20II", show_default=True, help="printer profile (columns, paper width)")
@click.option("--mode", type=click.Choice(["ok", "near_end", "out", "offline", "silent", "close"]), default="ok",
              show_default=True, help="initial state")
@click.option("--no-png", is_flag=True, help="keep receipts as text only")
@click.option("--json", "as_json", is_flag=True, help="JSON lines: one 'ready' line, then one per receipt")
def printer(tcp: str | None, use_pty: bool, device: str | None, link: str | None, control: str, out_dir: Path,
            profile: str, mode: str, no_png: bool, as_json: bool) -> None:
    """Virtual ESC/POS printer: decodes what it receives, keeps each receipt as text and PNG, answers DLE EOT.

    Switch its state at run time through the control channel (one command per line, e.g.
    `echo 'mode out' | nc 127.0.0.1 PORT`) or with signals: SIGUSR1 paper out, SIGUSR2 paper ok."""
    from drivers.printer import load_profile
    from drivers.simulators.printer import ControlServer, SerialPrinterPort, TcpPrinterServer, VirtualPrinter
    from protocol.errors import ValidationError

    if not (tcp or use_pty or device):
        tcp = "127.0.0.1:9100"
    try:
        prof = load_profile(profile)
    except ValidationError as exc:
        raise click.ClickException(exc.message) from None
    lock = threading.Lock()

    def on_receipt(receipt: Any) -> None:
        with lock:
            if as_json:
                click.echo(json.dumps({"event": "receipt", **receipt.to_dict()}), nl=True)
            else:
                state = "complete" if receipt.complete else "INCOMPLETE (no cut)"
                click.echo(f"receipt {receipt.index}: {state}, {receipt.text.count(chr(10))} lines"
                           + (f", {receipt.png_path}" if receipt.png_path else ""))

    vp = VirtualPrinter(out_dir, columns=prof.columns, width_px=prof.width_px, png=not no_png, on_receipt=on_receipt)
    vp.set_mode(mode)
    transports: list[Any] = []
    ready: dict[str, Any] = {"event": "ready", "out": str(out_dir), "profile": prof.name}
    try:
        if tcp:
            host, port = _host_port(tcp, "--tcp")
            server = TcpPrinterServer(vp, host, port).start()
            transports.append(server)
            ready["tcp"] = server.uri
        if use_pty:
            port_ = SerialPrinterPort.pty(vp).start()
            transports.append(port_)
            ready["pty"] = port_.path
            if link:
                Path(link).unlink(missing_ok=True)
                Path(link).symlink_to(port_.path)
                ready["link"] = link
        if device:
            port_ = SerialPrinterPort.device(vp, device).start()
            transports.append(port_)
            ready["device"] = device
        chost, cport = _host_port(control, "--control")
        ctl = ControlServer(vp, chost, cport).start()
        transports.append(ctl)
        ready["control"] = f"{ctl.address[0]}:{ctl.address[1]}"
    except OSError as exc:
        for t in transports:
            t.stop()
        raise click.ClickException(f"cannot start the virtual printer: {exc.strerror or exc}") from None

    stop = threading.Event()

    def _stop(_signum: int, _frame: object) -> None:
        stop.set()

    def _status_line(_signum: int, _frame: object) -> None:
        click.echo(json.dumps({"event": "status", **vp.snapshot()}))

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGUSR1, lambda *_: vp.set_mode("out"))
    signal.signal(signal.SIGUSR2, lambda *_: vp.set_mode("ok"))
    signal.signal(signal.SIGHUP, _status_line)
    if as_json:
        click.echo(json.dumps(ready))
    else:
        where = ", ".join(f"{k} {ready[k]}" for k in ("tcp", "pty", "device", "control") if k in ready)
        click.echo(f"virtual printer ({prof.name}) on {where}; receipts in {out_dir}")
    try:
        while not stop.wait(0.2):
            pass
    finally:
        for t in transports:
            t.stop()
        if link:
            Path(link).unlink(missing_ok=True)
