"""`smartpos sim card|pcscd|phone|tag`: simulated cards for the vpcd reader, a private pcscd, and nfcpy emulators."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click

_MODES = ("bad-tlv", "wrong-length", "error-sw", "drop", "t0", "no-ppse")


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _profile_arg(name: str) -> Any:
    from drivers.simulators.emv_card import load_profile

    try:
        return load_profile(name)
    except (ValueError, KeyError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="--profile") from None


@click.command()
@click.option("--profile", default="visa", show_default=True,
              help="visa | mastercard | phone | uid, or a profile TOML file.")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Host of pcscd's vpcd reader.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, envvar="SMARTPOS_VPCD_PORT",
              help="vpcd port (default 35963, the system pcscd's 'Virtual PCD 00 00'; `smartpos sim pcscd` prints its own).")  # noqa: E501  # fmt: skip
@click.option("--taps", type=click.IntRange(min=1), default=None, help="Tap this many times, then exit (default: until stopped).")  # noqa: E501
@click.option("--mode", type=click.Choice(_MODES), default=None, help="Bad-card / T=0 behaviour.")
@click.option("--bad-taps", type=click.IntRange(min=0), default=None, help="Apply --mode to the first N taps only.")
@click.option("--hold", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Longest time in the field per tap (s).")  # fmt: skip
@click.option("--gap", type=click.FloatRange(min=0.0), default=0.6, show_default=True,
              help="Time out of the field between taps (s).")  # fmt: skip
@click.option("--stay", is_flag=True, help="Stay in the field until stopped (one long insertion).")
def card(profile: str, host: str, port: int | None, taps: int | None, mode: str | None, bad_taps: int | None,
         hold: float, gap: float, stay: bool) -> None:  # fmt: skip
    """Tap a virtual EMV card (or phone / UID card) on pcscd's vpcd reader."""
    from drivers.simulators.vpcd import DEFAULT_PORT, VpcdCard

    prof = _profile_arg(profile)
    sim = VpcdCard(prof, host, port or DEFAULT_PORT, taps=1 if stay else taps, mode=mode, bad_taps=bad_taps,
                   hold=hold, gap=gap, stay=stay)  # fmt: skip
    _stop_on_signals(sim.stop_event)
    what = f"{prof.name}" + (f" (mode {mode})" if mode else "")
    click.echo(f"card {what} tapping on vpcd {host}:{port or DEFAULT_PORT}" + (f", {taps} tap(s)" if taps else ""))
    sim.on_tap = _print_tap
    sim.on_waiting = lambda why: click.echo(
        f"{why}: is pcscd running with the vpcd driver? (`smartpos sim pcscd` starts a private one and prints its "
        "port for --port); still trying", err=True)
    sys.stdout.flush()
    sim.run()


@click.command()
@click.option("--port", type=click.IntRange(1, 65534), default=None, help="vpcd port (default: a free one).")
@click.option("--debug", is_flag=True, help="Run pcscd with debug output (in its log file).")
def pcscd(port: int | None, debug: bool) -> None:
    """Run a private pcscd (own socket, own vpcd ports) in the foreground until stopped."""
    from drivers.simulators.pcscd import PcscdError, PrivatePcscd

    daemon = PrivatePcscd(port=port, debug=debug)
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        daemon.start()
    except PcscdError as exc:
        click.echo(f"smartpos sim pcscd: {exc}", err=True)
        sys.exit(1)
    try:
        p0, p1 = daemon.vpcd_ports
        click.echo(f"pcscd running (pid {daemon.pid}), log {daemon.log_path}")
        click.echo(f"readers: '{daemon.READER_NAMES[0]}' on vpcd port {p0}, '{daemon.READER_NAMES[1]}' on {p1}")
        click.echo("clients use:")
        click.echo(f"export PCSCLITE_CSOCK_NAME={daemon.socket_path}")
        click.echo(f"cards:  smartpos sim card --profile visa --port {p0}")
        sys.stdout.flush()
        while not stop.wait(0.5):
            if daemon.pid is None:
                click.echo("smartpos sim pcscd: pcscd exited", err=True)
                sys.exit(1)
    finally:
        daemon.cleanup()


@click.command()
@click.option("--profile", default="phone", show_default=True, help="Card profile the phone presents.")
@click.option("--port", type=click.IntRange(1, 65535), default=54321, show_default=True,
              help="nfcpy udp port (the reader uses udp:127.0.0.1:PORT).")  # fmt: skip
@click.option("--taps", type=click.IntRange(min=1), default=None, help="Number of taps (default: until stopped).")
@click.option("--mode", type=click.Choice(_MODES), default=None, help="Bad-card behaviour.")
@click.option("--bad-taps", type=click.IntRange(min=0), default=None, help="Apply --mode to the first N taps only.")
@click.option("--gap", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
              help="Time out of the field between taps (s).")  # fmt: skip
def phone(profile: str, port: int, taps: int | None, mode: str | None, bad_taps: int | None, gap: float) -> None:
    """Emulate a phone wallet (ISO-DEP Type 4A) for an nfcpy reader on the udp driver."""
    from drivers.simulators.nfc_phone import run_phone

    prof = _profile_arg(profile)
    stop = threading.Event()
    _stop_on_signals(stop)
    click.echo(f"phone {prof.name} on nfcpy udp:127.0.0.1:{port}" + (f", {taps} tap(s)" if taps else ""))
    sys.stdout.flush()
    try:
        run_phone(prof, port, taps, stop, mode=mode, bad_taps=bad_taps, gap=gap, on_tap=_print_nfc_tap)
    except (OSError, ValueError) as exc:
        click.echo(f"smartpos sim phone: {exc}", err=True)
        sys.exit(1)


@click.command()
@click.option("--text", "texts", multiple=True, help="NDEF text record (repeatable), e.g. a member number.")
@click.option("--uri", "uris", multiple=True, help="NDEF URI record (repeatable), e.g. a coupon link.")
@click.option("--lang", default="en", show_default=True, help="Language of the text records.")
@click.option("--type", "tag_type", type=click.Choice(["type4", "type3"]), default="type4", show_default=True,
              help="NFC Forum tag type to emulate.")  # fmt: skip
@click.option("--port", type=click.IntRange(1, 65535), default=54322, show_default=True, help="nfcpy udp port.")
@click.option("--taps", type=click.IntRange(min=1), default=None, help="Number of taps (default: until stopped).")
@click.option("--gap", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
              help="Time out of the field between taps (s).")  # fmt: skip
def tag(texts: tuple[str, ...], uris: tuple[str, ...], lang: str, tag_type: str, port: int, taps: int | None,
        gap: float) -> None:  # fmt: skip
    """Emulate an NFC Forum tag with NDEF text/URI records for an nfcpy reader on the udp driver."""
    from drivers.cardread import NdefRecord

    records = [NdefRecord("text", t, lang) for t in texts] + [NdefRecord("uri", u) for u in uris]
    if not records:
        records = [NdefRecord("text", "MEMBER-0001", lang)]
    stop = threading.Event()
    _stop_on_signals(stop)
    click.echo(f"{tag_type} tag with {len(records)} record(s) on nfcpy udp:127.0.0.1:{port}")
    sys.stdout.flush()
    from drivers.simulators.nfc_tag import run_tag

    try:
        run_tag(records, port, taps, stop, tag_type=tag_type, gap=gap, on_tap=_print_nfc_tap)
    except (OSError, ValueError) as exc:
        click.echo(f"smartpos sim tag: {exc}", err=True)
        sys.exit(1)


def _print_tap(n: int, outcome: Any) -> None:
    click.echo(f"tap {n}: {outcome.apdus} APDUs, ended: {outcome.ended}")
    sys.stdout.flush()


def _print_nfc_tap(n: int, outcome: Any) -> None:
    _print_tap(n + 1, outcome)  # the nfcpy emulators count taps from 0
