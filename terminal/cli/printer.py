"""`smartpos printer status|test`: technician commands for the receipt printer."""

from __future__ import annotations

import json
import sys
from typing import Any

import click


def _printer_settings(uri: str | None, config: str | None, profile: str | None,
                      status_timeout: float | None) -> tuple[str, Any, float, float]:
    """URI, profile, send timeout and status timeout from the options, else from the config file's [printer]
    section (with its column, width, QR and codepage overrides, as the daemon prints)."""
    from drivers.printer import DEFAULT_TIMEOUT_S, load_profile, parse_uri
    from protocol.errors import ValidationError

    settings = None
    try:
        from config.loading import ConfigError, load_settings
    except ImportError:  # config package not part of this build
        pass
    else:
        try:
            settings, _path = load_settings(config)
        except ConfigError as exc:
            if uri is None or profile is None or status_timeout is None:
                raise click.ClickException(str(exc)) from None
    configured = settings is not None and uri is None  # the config's printer, not one named on the command line
    uri = uri or (settings.printer.uri if settings is not None else None)
    if not uri:
        raise click.ClickException("no printer: pass --printer URI or set [printer] uri in the config")
    timeout = settings.printer.timeout_s if settings is not None else DEFAULT_TIMEOUT_S
    if status_timeout is None:
        status_timeout = settings.printer.status_timeout_s if settings is not None else DEFAULT_STATUS_TIMEOUT_S
    try:
        parse_uri(uri)
        if configured:
            from terminal.receipts import configured_profile

            assert settings is not None
            prof = configured_profile(settings, profile)
        else:
            prof = load_profile(profile)
        return uri, prof, timeout, status_timeout
    except ValidationError as exc:  # PrinterUriError included
        raise click.ClickException(exc.message) from None


def _status_line(status: Any) -> str:
    online = {True: "online", False: "offline", None: "online state unknown"}[status.online]
    paper = {"ok": "paper ok", "near_end": "paper near end", "out": "paper OUT", "unknown": "paper unknown"}
    text = f"{online}, {paper[status.paper]}"
    return f"{text} ({status.detail})" if status.detail else text


def _emit(data: dict[str, Any], as_json: bool, human: str) -> None:
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
    else:
        from rich.console import Console

        Console(soft_wrap=True, emoji=False).print(human, highlight=False, markup=False)


_printer_option = click.option("--printer", "uri", metavar="URI",
                               help="tcp://HOST:PORT, usb://VID:PID, serial:DEVICE[?baudrate=N], file:PATH")
_config_option = click.option("--config", "config", metavar="FILE", help="config file (default: $SMARTPOS_CONFIG)")
_profile_option = click.option("--profile", metavar="NAME", help="python-escpos printer profile, e.g. TM-T88V")
DEFAULT_STATUS_TIMEOUT_S = 0.5
_timeout_option = click.option("--status-timeout", type=click.FloatRange(0.05, 30), default=None,
                               help="seconds to wait for each status reply (default: the config's "
                                    "[printer] status_timeout_s, else 0.5)")


@click.group()
def printer() -> None:
    """Check and test the receipt printer."""


@printer.command()
@_printer_option
@_config_option
@_profile_option
@_timeout_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(uri: str | None, config: str | None, profile: str | None, status_timeout: float | None,
           as_json: bool) -> None:
    """Online/offline and paper ok / near end / out / unknown (exit 1 unless ready to print)."""
    from drivers.printer import parse_uri, query_status

    uri, prof, _timeout, status_timeout = _printer_settings(uri, config, profile, status_timeout)
    st = query_status(uri, profile=prof, timeout=status_timeout)
    reports = parse_uri(uri).status_enabled
    if reports:
        human = f"{uri}: {_status_line(st)}"
    elif st.online is False:
        human = f"{uri}: offline ({st.detail})"
    else:
        human = f"{uri}: opens; this connection cannot report status"
    _emit({"printer": uri, "profile": prof.name, "reports_status": reports, **st.to_dict()}, as_json, human)
    # A connection that cannot report status (file:, ?status=0) is no failure as long as it opens: there is nothing
    # to ask. One that does not even open (no such device, no permission) is.
    sys.exit(0 if st.ready or (not reports and st.online is not False) else 1)


@printer.command()
@_printer_option
@_config_option
@_profile_option
@_timeout_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def test(uri: str | None, config: str | None, profile: str | None, status_timeout: float | None,
         as_json: bool) -> None:
    """Print the test page (profile, codepages, QR, cut) and report the status after it."""
    from drivers.printer import PrinterError, open_printer
    from terminal.receipt import make_test_page, render_escpos

    uri, prof, timeout, status_timeout = _printer_settings(uri, config, profile, status_timeout)
    result: dict[str, Any] = {"printer": uri, "profile": prof.name, "printed": False}
    try:
        with open_printer(uri, profile=prof, timeout=timeout, status_timeout=status_timeout) as conn:
            before = conn.status()
            result["before"] = before.to_dict()
            if conn.supports_status and not before.ready:
                raise PrinterError(f"not printing: {_status_line(before)}", code="not_ready")
            data = render_escpos(make_test_page(prof, status_before=before.summary), prof)
            conn.write(data)
            result["bytes"] = len(data)
            after = conn.status()
    except PrinterError as exc:
        result["error"] = {"code": exc.code, "message": str(exc)}
        if as_json:
            click.echo(json.dumps(result, sort_keys=True))
            sys.exit(1)
        raise click.ClickException(f"{uri}: {exc}") from None
    result["after"] = after.to_dict()
    ok = not conn.supports_status or (after.online is True and after.paper != "out")
    result["printed"] = ok
    after_text = f"after: {_status_line(after)}" if conn.supports_status else \
        "this connection cannot report status: check the paper"
    human = f"{uri}: test page sent ({result['bytes']} bytes); {after_text}"
    _emit(result, as_json, human)
    if not ok:
        sys.exit(1)
