"""`smartpos read`: wait for one tap and show what was read (masked), for technicians.

While the daemon (``smartpos run``) answers on its local API, the read goes through it (``POST /v1/reads``): it
owns the readers, and an nfcpy reader it holds cannot be opened a second time. Otherwise, or with ``--direct``,
``--reader`` or ``--nfc``, this process opens the readers itself: every PC/SC reader (or those whose name contains
``--reader``) plus the nfcpy readers from the config (``[readers] nfcpy``) and ``--nfc PATH``. ``--reader`` with an
nfcpy path (``udp:...``, ``usb:...``, ``tty:...``) reads only that nfcpy reader.

Exit status: 0 read, 1 failed read (bad card, reader gone), 3 no card before the timeout.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import click

EXIT_FAILED = 1
EXIT_TIMEOUT = 3


def _fail(code: str, message: str, *, as_json: bool, status: int) -> None:
    from protocol.carddata import redact

    message = redact(message)
    if as_json:
        import orjson

        click.echo(orjson.dumps({"error": {"code": code, "message": message}}).decode())
    else:
        click.echo(f"smartpos read: {message} [{code}]", err=True)
    sys.exit(status)


def _settings(config: str | None, as_json: bool) -> Any:
    from config.loading import ConfigError, load_settings

    try:
        return load_settings(config)[0]
    except ConfigError as exc:
        _fail("config", str(exc), as_json=as_json, status=EXIT_FAILED)


def _daemon_pcsc(settings: Any) -> str | None:
    """What names the PC/SC readers a running daemon of this config reads ("" all of them), or None."""
    from terminal.daemon import Daemon

    if not settings.readers.pcsc:
        return None
    try:
        running = Daemon.running_pid(settings.state_dir) is not None
    except PermissionError:  # the service's state dir, not ours to read: ask its API whether it runs
        from terminal.apiclient import ApiCallError, LocalApi, api_url

        try:
            with LocalApi(api_url(settings), token=settings.api.token, timeout=2.0) as api:
                api.status()
            running = True
        except ApiCallError as exc:
            running = exc.code != "daemon_unreachable"
    return (settings.readers.pcsc_filter or "") if running else None


def _build_readers(reader: str | None, nfc: tuple[str, ...], settings: Any) -> list[Any]:
    readers: list[Any] = []
    from drivers.nfc_reader import is_nfcpy_path

    nfc_paths = list(nfc)
    if reader is not None and is_nfcpy_path(reader):
        nfc_paths = [reader]
    else:
        from drivers.pcsc import PcscReaders

        use_pcsc = settings.readers.pcsc or reader is not None
        if use_pcsc:
            # The running daemon reads its PC/SC readers itself: both would read the same tap (one after the
            # other, each with its own GENERATE AC). Only the others are read here.
            held = _daemon_pcsc(settings)
            readers.append(PcscReaders(reader if reader is not None else settings.readers.pcsc_filter, exclude=held))
        if reader is None:
            nfc_paths = [*settings.readers.nfcpy, *nfc_paths]
    if nfc_paths:
        from drivers.nfc_reader import NfcpyReader

        readers.extend(NfcpyReader(path) for path in dict.fromkeys(nfc_paths))
    return readers


def _show(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    order = ["kind", "reader", "scheme", "masked_pan", "aid", "label", "preferred_name", "wallet", "atc",
             "track2_present", "uid", "atr", "tag_type", "entry_mode", "read_ms"]  # fmt: skip
    for key in order:
        if key in data and data[key] is not None:
            table.add_row(key, str(data[key]))
    for i, rec in enumerate(data.get("records", []), 1):
        lang = f" ({rec['lang']})" if rec.get("lang") else ""
        table.add_row(f"record {i}", f"{rec['type']}{lang}: {rec['value']}")
    Console().print(table)


@click.command()
@click.option("--reader", default=None, metavar="NAME", help="PC/SC reader name (substring) or an nfcpy path.")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=3600), default=30.0, show_default=True,
              help="Seconds to wait for a tap.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--nfc", multiple=True, metavar="PATH", help="Also wait on this nfcpy reader (repeatable).")
@click.option("--direct", is_flag=True,
              help="Open the readers here even when the daemon runs (only readers it does not hold).")
@click.option("--config", "config_file", default=None, envvar="SMARTPOS_CONFIG", help="Config file.")
def read(reader: str | None, timeout: float, as_json: bool, nfc: tuple[str, ...], direct: bool,
         config_file: str | None) -> None:
    """Wait for a card, phone or tag and show what was read (PAN masked)."""
    settings = _settings(config_file, as_json)
    if not (direct or reader is not None or nfc):
        through_daemon = _read_through_daemon(settings, timeout, as_json)
        if through_daemon is not None:
            _output(through_daemon, as_json)
            return
    _output(_read_here(settings, reader, nfc, timeout, as_json), as_json)


def _output(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        import orjson

        click.echo(orjson.dumps(data).decode())
    else:
        _show(data)


def _read_through_daemon(settings: Any, timeout: float, as_json: bool) -> dict[str, Any] | None:
    """What the running daemon's readers read, or None when no daemon answers. The daemon takes reads of 1 to
    60 s, so a longer ``--timeout`` is asked for in turns; Ctrl-C hangs up, which ends the daemon's read at once."""
    import time

    from terminal.apiclient import ApiCallError, LocalApi, api_url

    with LocalApi(api_url(settings), token=settings.api.token, timeout=5.0) as api:
        try:
            api.status()
        except ApiCallError as exc:
            if exc.code == "daemon_unreachable":
                return None
            _fail(exc.code, f"the daemon at {api.base_url} refused: {exc.message}", as_json=as_json,
                  status=EXIT_FAILED)  # fmt: skip
        if not as_json:
            click.echo(f"Waiting up to {timeout:g} s for a tap on the readers of the daemon at {api.base_url} ...",
                       err=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            turn = max(1.0, min(60.0, deadline - time.monotonic()))
            try:
                return api.read_card(turn)
            except ApiCallError as exc:
                if exc.code == "card_timeout" and deadline - time.monotonic() >= 1.0:
                    continue
                if exc.code == "card_timeout":
                    _fail(exc.code, f"no card was tapped within {timeout:g} s", as_json=as_json, status=EXIT_TIMEOUT)
                _fail(exc.code, f"the daemon's read failed: {exc.message}", as_json=as_json, status=EXIT_FAILED)


def _read_here(settings: Any, reader: str | None, nfc: tuple[str, ...], timeout: float,
               as_json: bool) -> dict[str, Any]:
    from drivers.emv import TerminalData
    from drivers.errors import CardError, ReadTimeout
    from drivers.readers import MultiReader

    # The reader layer logs outages as warnings; here the outcome is reported as one line, so keep them quiet.
    logging.getLogger("drivers").addHandler(logging.NullHandler())
    try:
        readers = _build_readers(reader, nfc, settings)
    except CardError as exc:
        _fail(exc.code, exc.message, as_json=as_json, status=EXIT_FAILED)
    except (ValueError, OSError) as exc:
        _fail("reader_unavailable", str(exc), as_json=as_json, status=EXIT_FAILED)
    if not readers:
        _fail("reader_unavailable", "no reader configured (PC/SC disabled and no nfcpy reader)", as_json=as_json,
              status=EXIT_FAILED)  # fmt: skip
    multi = MultiReader(readers)
    _fail_fast_without_pcscd(readers, min(timeout, 2.0), as_json, reader)
    td = TerminalData(amount_minor=0, currency=settings.payments.currency,
                      country_numeric=settings.payments.country_code)
    if not as_json:
        click.echo(f"Waiting up to {timeout:g} s for a tap on {multi.name} ...", err=True)
    try:
        result = multi.wait_for_card(td, timeout=timeout, cancel=threading.Event())
    except ReadTimeout as exc:
        detail = _unavailable_detail(multi)
        _fail(exc.code, exc.message + detail, as_json=as_json, status=EXIT_TIMEOUT)
    except CardError as exc:
        _fail(exc.code, exc.message, as_json=as_json, status=EXIT_FAILED)
    finally:
        multi.close()
    return dict(result.to_public_dict())


def _fail_fast_without_pcscd(readers: list[Any], wait: float, as_json: bool, name: str | None = None) -> None:
    """With PC/SC as the only reader stack, say now (not after the whole timeout) that pcscd is down, or that no
    reader matches the ``--reader`` name asked for (a mistyped name; without one, a reader may still be plugged in)."""
    from drivers.pcsc import PcscReaders

    if len(readers) != 1 or not isinstance(readers[0], PcscReaders):
        return
    pcsc = readers[0]
    pcsc.wait_ready(wait)
    status = pcsc.status()
    if status["state"] == "error":
        pcsc.close()
        _fail("reader_unavailable", f"PC/SC not usable: {status['detail']}", as_json=as_json, status=EXIT_FAILED)
    if pcsc.exclude is not None and status["state"] == "absent":
        pcsc.close()
        which = f" whose name contains {pcsc.exclude!r}" if pcsc.exclude else ""
        _fail("reader_unavailable", f"the running smartpos daemon reads the PC/SC readers{which} itself (a tap would "
              "be read by both): run `smartpos read` without --direct/--reader to read through it, or stop it",
              as_json=as_json, status=EXIT_FAILED)
    if name is not None and status["state"] == "absent":
        pcsc.close()
        _fail("reader_unavailable", f"no PC/SC reader matches {name!r} (`smartpos selftest` lists the readers)",
              as_json=as_json, status=EXIT_FAILED)


def _unavailable_detail(multi: Any) -> str:
    """Why nothing was read, when a reader stack was down the whole time (e.g. pcscd not running)."""
    try:
        status = multi.status()
    except Exception:
        return ""
    stacks = status.get("readers", [status]) if status.get("stack") == "multi" else [status]
    broken = [f"{s.get('name')}: {s.get('detail')}" for s in stacks if s.get("state") in ("error", "absent")]
    return f" ({'; '.join(broken)})" if broken else ""
