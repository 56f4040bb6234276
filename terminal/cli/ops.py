"""Technician commands that talk to the running daemon's local API: status, pay, refund, void, reprint, batch close.

Amounts on the command line are in major units ("12.50"); the API gets integer minor units.
Exit status: 0 when the thing asked for happened (payment approved, batch closed), 1 otherwise.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

import click
import orjson

from protocol.amounts import MAX_AMOUNT_MINOR, exponent, format_amount, validate_amount, validate_currency
from protocol.errors import ValidationError

CONFIG_OPTION = click.option("--config", "config_file", type=click.Path(dir_okay=False), help="config file")
URL_OPTION = click.option("--url", help="local API URL (default: from the config / the running daemon)")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")


def _fail(message: str, *, as_json: bool = False, code: str = "error") -> None:
    if as_json:
        click.echo(orjson.dumps({"error": {"code": code, "message": message}}).decode())
    else:
        click.echo(f"smartpos: {message}", err=True)
    sys.exit(1)


def _client(config_file: str | None, url: str | None) -> Any:
    from config.loading import ConfigError, load_settings
    from terminal.apiclient import LocalApi, api_url

    try:
        settings, _ = load_settings(config_file)
    except ConfigError as exc:
        _fail(str(exc))
    return LocalApi(api_url(settings, url), token=settings.api.token), settings


def _call(fn: Any, *args: Any, as_json: bool = False) -> Any:
    from terminal.apiclient import ApiCallError

    try:
        return fn(*args)
    except ApiCallError as exc:
        _fail(exc.message if as_json else f"{exc.code}: {exc.message}", as_json=as_json, code=exc.code)


_AMOUNT_TEXT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)


def parse_amount(text: str, currency: str) -> int:
    """``"12.50", "EUR"`` -> 1250. More decimals than the currency has is an error, not a rounding."""
    currency = validate_currency(currency)
    # Digits and one decimal point only: Decimal alone would also take "1e3", "1_000", " 12 " and "Infinity",
    # none of which a technician means as an amount.
    if not _AMOUNT_TEXT.fullmatch(text):
        raise ValidationError("invalid_amount", f"{text!r} is not an amount like 12.50")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValidationError("invalid_amount", f"{text!r} is not an amount like 12.50") from None
    minor = value.scaleb(exponent(currency))
    if minor != minor.to_integral_value():
        raise ValidationError("invalid_amount", f"{currency} has {exponent(currency)} decimals; {text} has more")
    if minor <= 0:
        raise ValidationError("invalid_amount", f"the amount must be greater than zero, got {text}")
    if minor > MAX_AMOUNT_MINOR:
        raise ValidationError("invalid_amount", f"{text} {currency} is above the maximum of "
                                                f"{format_amount(MAX_AMOUNT_MINOR, currency)}")
    return validate_amount(int(minor))


# ----- status ---------------------------------------------------------------------------------------------------
@click.command()
@CONFIG_OPTION
@URL_OPTION
@JSON_OPTION
def status(config_file: str | None, url: str | None, as_json: bool) -> None:
    """Readers, printer, head office, queue and open batch of the running daemon."""
    api, _ = _client(config_file, url)
    with api:
        st = _call(api.status, as_json=as_json)
    if as_json:
        click.echo(orjson.dumps(st, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"smartpos terminal {st.get('terminal_id') or ''}".strip(), show_header=False)
    table.add_column("what", style="bold")
    table.add_column("state")
    for reader in st.get("readers") or []:
        table.add_row(f"reader {reader.get('name')}", f"{reader.get('state')}  {reader.get('detail') or ''}")
        for device in reader.get("readers") or []:
            table.add_row(f"  {device.get('name')}", str(device.get("state")))
    if st.get("reader_error"):
        table.add_row("last read error", f"{st['reader_error'].get('code')}: {st['reader_error'].get('message')}")
    printer = st.get("printer") or {}
    table.add_row("printer", f"{printer.get('state')}  {printer.get('detail') or ''}")
    hq = st.get("headoffice") or {}
    hq_text = "online" if hq.get("online") else "offline"
    if hq.get("last_contact_at"):
        hq_text += f"  last contact {hq['last_contact_at']}"
    if hq.get("last_error") and not hq.get("online"):
        hq_text += f"  ({hq['last_error']})"
    table.add_row("head office", hq_text)
    q = st.get("queue") or {}
    amounts = ", ".join(format_amount(v, c) for c, v in (q.get("unsynced_amount") or {}).items()) or "-"
    oldest = q.get("oldest_unsynced_age_s")
    queued = f"{q.get('unsynced_count', 0)} unsynced ({amounts})"
    if oldest is not None:
        queued += f", oldest {_age(float(oldest))}"
    table.add_row("queue", queued)
    if q.get("rejected_count"):
        # Dead letters: refused by head office, kept here; a technician looks (docs/headoffice.md, `sync --requeue`).
        shown = ", ".join(f"#{r['sequence']} {r.get('reason') or r.get('code')}" for r in q.get("rejected") or [])
        more = q["rejected_count"] - len(q.get("rejected") or [])
        table.add_row("rejected by head office",
                      f"{q['rejected_count']}: {shown}" + (f" and {more} more" if more > 0 else "")
                      + "  (`smartpos sync --requeue SEQ` sends one again)")
    if hq.get("pending_reversals"):
        table.add_row("reversals owed", f"{hq['pending_reversals']} (sent at the next sync)")
    batch = st.get("batch") or {}
    table.add_row("open batch", f"#{batch.get('number')}: {batch.get('count', 0)} transactions")
    payment = st.get("payment")
    table.add_row("payment", f"{payment['id']} {payment['state']}" if payment else "idle")
    table.add_row("version", str((st.get("versions") or {}).get("smartpos", "")))
    Console().print(table)


def _age(seconds: float) -> str:
    """``59 s``, ``12 min``, ``3 h 05 min``, ``2 d 4 h``: how long, to the precision a technician reads it."""
    whole = int(seconds)
    if whole < 120:
        return f"{whole} s"
    minutes = whole // 60
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


# ----- pay / refund ---------------------------------------------------------------------------------------------
def _pay(kind: str, amount: str, currency: str | None, mode: str | None, reference: str | None,
         config_file: str | None, url: str | None, as_json: bool, wait: bool) -> None:
    api, settings = _client(config_file, url)
    currency = (currency or settings.payments.currency).upper()
    try:
        amount_minor = parse_amount(amount, currency)
    except ValidationError as exc:
        _fail(exc.message, as_json=as_json, code=exc.code)
    body: dict[str, Any] = {"type": kind, "amount_minor": amount_minor, "currency": currency}
    if mode:
        body["mode"] = mode
    if reference:
        body["reference"] = reference
    with api:
        held = _hold_interrupts() if wait else None
        try:
            payment = _call(api.create_payment, body, as_json=as_json)
        except BaseException:
            _release_interrupts(held)
            raise
        if not as_json:
            click.echo(f"{kind} {format_amount(amount_minor, currency)}: payment {payment['id']} — tap a card")
        if wait:
            from terminal.apiclient import ApiCallError

            last = payment["state"]
            try:
                _release_interrupts(held)  # one that came while the payment was created is raised here
                for update in api.events(payment["id"]):
                    payment = update
                    if update["state"] != last and not as_json:
                        click.echo(f"  {update['state']}")
                    last = update["state"]
            except ApiCallError as exc:
                _fail(exc.message if as_json else f"{exc.code}: {exc.message}", as_json=as_json, code=exc.code)
            except KeyboardInterrupt:
                # Ctrl-C (or the session closed, or kill): the payment must not stay armed on the terminal (a tap
                # would still be charged).
                try:
                    payment = api.cancel(payment["id"])
                except ApiCallError:  # e.g. approved in that instant: show what it became, do not hide it
                    with contextlib.suppress(ApiCallError):
                        payment = api.payment(payment["id"])
                if not as_json:
                    click.echo(f"  interrupted: payment {payment['state']}", err=True)
    if as_json:
        click.echo(orjson.dumps(payment).decode())
    else:
        _print_outcome(payment)
    sys.exit(0 if payment["state"] == "approved" or not wait else 1)


_INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _hold_interrupts() -> set[signal.Signals]:
    """Before ``pay`` creates its payment: SIGTERM and SIGHUP (an SSH session closed, ``kill``) will end it the way
    Ctrl-C does, so that the payment it armed is cancelled instead of left waiting for a tap; and all three are held
    until the payment's id is known (one arriving in between used to kill ``pay`` with the payment armed). Returns
    the signal mask to give back to :func:`_release_interrupts`."""

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    return signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)


def _release_interrupts(mask: set[signal.Signals] | None) -> None:
    """Deliver what :func:`_hold_interrupts` held (raised as ``KeyboardInterrupt`` right here)."""
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _print_outcome(payment: dict[str, Any]) -> None:
    state = payment["state"]
    card = payment.get("card") or {}
    auth = payment.get("authorization") or {}
    line = f"{state.upper()}"
    if card:
        line += f"  {card.get('scheme')} {card.get('masked_pan')}"
    if auth:
        line += f"  {auth.get('method')} {auth.get('code') or ''}".rstrip()
        if auth.get("reason"):
            line += f"  reason: {auth['reason']}"
    if payment.get("error"):
        line += f"  ({payment['error'].get('code')}: {payment['error'].get('message')})"
    if payment.get("sequence") is not None:
        line += f"  seq {payment['sequence']} batch {payment.get('batch')}"
    click.echo(line)


_PAY_OPTIONS = [
    click.argument("amount"),
    click.option("--currency", help="ISO 4217 code (default: [payments] currency)"),
    click.option("--mode", type=click.Choice(["prefer-online", "require-online", "force-offline"])),
    click.option("--reference", help="your reference, printed on the receipt"),
    CONFIG_OPTION,
    URL_OPTION,
    JSON_OPTION,
    click.option("--wait/--no-wait", default=True, help="follow the payment until it ends (default)"),
]


def _with_pay_options(fn: Any) -> Any:
    for option in reversed(_PAY_OPTIONS):
        fn = option(fn)
    return fn


@click.command()
@_with_pay_options
def pay(amount: str, currency: str | None, mode: str | None, reference: str | None, config_file: str | None,
        url: str | None, as_json: bool, wait: bool) -> None:
    """Start a sale of AMOUNT (major units, e.g. 12.50) and follow it until approved/declined."""
    _pay("sale", amount, currency, mode, reference, config_file, url, as_json, wait)


@click.command()
@_with_pay_options
def refund(amount: str, currency: str | None, mode: str | None, reference: str | None, config_file: str | None,
           url: str | None, as_json: bool, wait: bool) -> None:
    """Refund AMOUNT (major units) to the card that is tapped."""
    _pay("refund", amount, currency, mode, reference, config_file, url, as_json, wait)


# ----- void / reprint / batch -----------------------------------------------------------------------------------
@click.command()
@click.argument("payment_id")
@CONFIG_OPTION
@URL_OPTION
@JSON_OPTION
def void(payment_id: str, config_file: str | None, url: str | None, as_json: bool) -> None:
    """Void an approved payment of the open batch."""
    api, _ = _client(config_file, url)
    with api:
        result = _call(api.void, payment_id, as_json=as_json)
    if as_json:
        click.echo(orjson.dumps(result).decode())
    else:
        click.echo(f"voided {payment_id}: void {result['id']} {result['state']}")


@click.command()
@click.argument("payment_id", required=False)
@CONFIG_OPTION
@URL_OPTION
@JSON_OPTION
def reprint(payment_id: str | None, config_file: str | None, url: str | None, as_json: bool) -> None:
    """Print the receipt of PAYMENT_ID again (default: the latest approved payment)."""
    api, _ = _client(config_file, url)
    with api:
        if payment_id is None:
            recent = _call(api.payments, 50, as_json=as_json)
            approved = [p for p in recent if p.get("state") == "approved"]
            if not approved:
                _fail("no approved payment to reprint", as_json=as_json, code="not_found")
            payment_id = approved[0]["id"]
        result = _call(api.reprint, payment_id, as_json=as_json)
    if as_json:
        click.echo(orjson.dumps(result).decode())
    else:
        click.echo(f"receipt of {payment_id} queued for printing")


@click.group()
def batch() -> None:
    """Settlement batches."""


@batch.command("close")
@CONFIG_OPTION
@URL_OPTION
@JSON_OPTION
@click.option("--batch", "number", type=click.IntRange(1), metavar="N",
              help="Close batch N only if it is the open one (default: the open batch as `smartpos status` shows it).")
def batch_close(config_file: str | None, url: str | None, as_json: bool, number: int | None) -> None:
    """Close the open batch: totals, settlement report printed, head office told. Safe to run again when the
    answer went missing: the batch it was about to close is answered as closed, the next one is left open."""
    api, _ = _client(config_file, url)
    with api:
        if number is None:
            number = (_call(api.status, as_json=as_json).get("batch") or {}).get("number")
        result = _call(api.close_batch, number, as_json=as_json)
    if as_json:
        click.echo(orjson.dumps(result).decode())
        return
    from rich.console import Console
    from rich.table import Table

    totals = result.get("totals") or {}
    if result.get("already_closed"):
        click.echo(f"batch {result.get('batch')} was already closed, at {result.get('closed_at')}: nothing closed now")
    table = Table(title=f"batch {result.get('batch')} closed: {totals.get('count', 0)} transactions")
    for col in ("scheme", "currency", "sales", "refunds", "voids", "net"):
        table.add_column(col, justify="left" if col in ("scheme", "currency") else "right")

    def money(line: dict, key: str) -> str:  # the currency is in its own column
        return format_amount(int(line.get(key) or 0), str(line.get("currency"))).split(" ")[0]

    def cell(line: dict, kind: str) -> str:
        return f"{line.get(f'{kind}_count', 0)} x {money(line, f'{kind}_amount_minor')}"

    for line in [*totals.get("by_scheme", []), *({**c, "scheme": "all"} for c in totals.get("by_currency", []))]:
        cur = str(line.get("currency"))
        table.add_row(str(line.get("scheme")), cur, cell(line, "sale"), cell(line, "refund"), cell(line, "void"),
                      money(line, "net_amount_minor"))
    Console(emoji=False).print(table)
    hq = result.get("headoffice")
    if hq:
        click.echo(f"head office: {hq.get('status') or hq}")
