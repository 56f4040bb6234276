"""`smartpos-hq`: run the head-office service and administer it (codes, tokens, batches, parameters, deny list).

Administration commands work on the database directly (same ``--database-url``/``--home`` as ``serve``) and
bring its schema up to date first, so a fresh install needs no separate set-up step.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from protocol import __version__

F = TypeVar("F", bound=Callable[..., Any])


def _db_options(func: F) -> F:
    @click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="SMARTPOS_HQ_HOME",
                  help="Directory for the default SQLite database and keystore (default ~/.local/share/smartpos-hq).")
    @click.option("--database-url", envvar="SMARTPOS_HQ_DATABASE_URL",
                  help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db (default: SQLite file in --home).")
    @click.option("--keystore", type=click.Path(file_okay=False, path_type=Path), envvar="SMARTPOS_HQ_KEYSTORE",
                  help="Directory holding head office's private keys (default: HOME/keys).")
    @functools.wraps(func)
    def wrapper(*args: Any, home: Path | None, database_url: str | None, keystore: Path | None,
                **kwargs: Any) -> Any:
        from headoffice.settings import HQSettings

        settings = HQSettings.resolve(home=home, database_url=database_url, keystore=keystore)
        return func(*args, settings=settings, **kwargs)

    return wrapper  # type: ignore[return-value]


def _session_run(settings: Any, work: Callable[[Any], Any], *, reading: bool = False) -> Any:
    """``work(session)`` in one transaction, the schema upgraded first. ``reading``: a command that only shows
    what is there changes nothing: it refuses a SQLite file that does not exist and a database without head
    office's schema at this version (a mistyped --database-url or --home) instead of creating an empty database or
    a schema where none belongs, and showing nothing."""
    from headoffice.db import READ_ONLY_OPTION, make_engine, session_factory, upgrade

    if reading:
        _refuse_missing_sqlite(settings)
    engine = make_engine(settings.database_url)
    try:
        if reading:
            _require_schema(engine)
        else:
            upgrade(engine)
        with session_factory(engine)() as session, session.begin():
            if reading:  # no write lock: a long export does not hold the terminals' uploads
                session.connection(execution_options={READ_ONLY_OPTION: True})
            return work(session)
    finally:
        engine.dispose()


def _require_schema(engine: Any) -> None:
    """The database holds head office's schema at the revision this code needs, or one line says what to run."""
    from sqlalchemy.exc import SQLAlchemyError

    from headoffice.db import current_revision, head_revision

    where = engine.url.render_as_string(hide_password=True)
    try:
        found = current_revision(engine)
    except SQLAlchemyError as exc:
        why = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"cannot read the head-office database {where}: {why}") from None
    if found is None:
        raise click.ClickException(
            f"no head-office schema in {where} (check --home / --database-url; `smartpos-hq serve` or "
            "`smartpos-hq db upgrade` creates it)")
    if found != head_revision():
        from alembic.script import ScriptDirectory

        from headoffice.db import alembic_config

        known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()}
        if found not in known:  # migrated by a newer smartpos-hq: upgrading cannot help this one
            raise click.ClickException(
                f"the head-office schema in {where} is at revision {found}, newer than this smartpos-hq knows "
                f"(its newest is {head_revision()}): use the smartpos-hq version that serves it")
        raise click.ClickException(
            f"the head-office schema in {where} is at revision {found}, this smartpos-hq needs {head_revision()}: "
            "run `smartpos-hq db upgrade`")


def _refuse_missing_sqlite(settings: Any) -> None:
    """A SQLite file that does not exist is a mistyped --database-url or --home: say so instead of creating it."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not Path(url.database).exists():
        raise click.ClickException(
            f"no head-office database at {url.database} (check --home / --database-url; `smartpos-hq serve` or "
            "`smartpos-hq db upgrade` creates it)")


def _when(value: Any) -> str | None:
    """A stored time as ISO 8601 UTC with its offset, the same from SQLite (which returns it naive) and PostgreSQL."""
    if value is None:
        return None
    from headoffice.clock import as_utc

    return str(as_utc(value).isoformat(timespec="seconds"))


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="smartpos-hq")
def cli() -> None:
    """smartpos head office: ingestion, online authorization, settlement batches."""


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8480, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes (all stateless; several serve commands may share one PostgreSQL too).")
@click.option("--access-log/--no-access-log", default=False, show_default=True)
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), help="Serve HTTPS with this certificate.")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), help="Private key of --ssl-certfile.")
@click.option("--acquirer", envvar="SMARTPOS_HQ_ACQUIRER",
              help="Acquirer connector factory package.module:callable (default: the built-in simulated acquirer).")
@_db_options
def serve(settings: Any, host: str, port: int, workers: int, access_log: bool, log_level: str,
          ssl_certfile: str | None, ssl_keyfile: str | None, acquirer: str | None) -> None:
    """Run the head-office HTTP API (OpenAPI at /openapi.json)."""
    import uvicorn

    from headoffice.app import ENV_ACQUIRER, load_connector
    from headoffice.db import make_engine, upgrade
    from headoffice.keystore import FileKeystore
    from headoffice.logs import log_config

    if acquirer:
        try:
            load_connector(acquirer)  # fail here, in one line, rather than in every worker
        except (ImportError, AttributeError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="--acquirer") from None
        os.environ[ENV_ACQUIRER] = acquirer

    engine = make_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    FileKeystore(settings.keystore_dir)  # create or check the keys once, before workers race for them
    os.environ.update(settings.to_env())
    # httptools + uvloop: stock h11 with several workers never sets TCP_NODELAY and stalls every
    # kept-alive response ~40 ms (measured); httptools does not.
    uvicorn.run(
        "headoffice.app:create_app_from_env", factory=True, host=host, port=port, workers=workers,
        http="httptools", loop="uvloop", access_log=access_log, log_level=log_level,
        log_config=log_config(log_level),
        ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, timeout_keep_alive=30,
    )


# -- database and keys -----------------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@_db_options
def db_upgrade(settings: Any) -> None:
    """Create or migrate the schema to the newest revision."""
    from headoffice.db import current_revision, make_engine, upgrade

    engine = make_engine(settings.database_url)
    upgrade(engine)
    click.echo(f"schema at revision {current_revision(engine)}")
    engine.dispose()


@cli.group()
def keys() -> None:
    """Head office's keystore (envelope key, token key, data key)."""


@keys.command("init")
@_db_options
def keys_init(settings: Any) -> None:
    """Create the keystore if missing and print the envelope public key."""
    from headoffice.keystore import FileKeystore

    store = FileKeystore(settings.keystore_dir)
    click.echo(f"keystore: {settings.keystore_dir}")
    click.echo(store.envelope_public_pem().rstrip())


# -- merchants, codes, terminals -------------------------------------------------------------------------------


@cli.group()
def merchants() -> None:
    """Merchants (name and address lines go to terminals when they enroll; receipt lines that change later:
    `parameters set receipt_header=[...]`)."""


@merchants.command("set")
@click.argument("merchant_id")
@click.option("--name")
@click.option("--address", multiple=True, help="Address line (repeat for several lines).")
@_db_options
def merchants_set(settings: Any, merchant_id: str, name: str | None, address: tuple[str, ...]) -> None:
    """Create or update a merchant."""
    from headoffice import enrollment

    doc = _session_run(settings, lambda s: enrollment.merchant_doc(
        enrollment.upsert_merchant(s, merchant_id, name=name, address=list(address) if address else None)))
    _print_json(doc)


@cli.group()
def codes() -> None:
    """One-time enrollment codes."""


@codes.command("create")
@click.option("--merchant", "merchant_id", required=True)
@click.option("--terminal", "terminal_id", required=True)
@click.option("--expires", default="24h", show_default=True, help="Validity, e.g. 30m, 24h, 7d.")
@click.option("--json", "as_json", is_flag=True)
@_db_options
def codes_create(settings: Any, merchant_id: str, terminal_id: str, expires: str, as_json: bool) -> None:
    """Issue a one-time code with which terminal TERMINAL of merchant MERCHANT enrolls."""
    from headoffice import enrollment
    from headoffice.clock import parse_duration

    try:
        ttl = parse_duration(expires)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from None
    issued = _session_run(settings, lambda s: enrollment.create_code(s, merchant_id, terminal_id, ttl))
    if as_json:
        _print_json(issued.__dict__)
    else:
        click.echo(issued.code)
        click.echo(f"terminal {issued.terminal_id} of merchant {issued.merchant_id}; single use, "
                   f"expires {issued.expires_at}", err=True)


@cli.group()
def terminals() -> None:
    """Enrolled terminals."""


@terminals.command("list")
@click.option("--json", "as_json", is_flag=True)
@_db_options
def terminals_list(settings: Any, as_json: bool) -> None:
    from sqlalchemy import select

    from headoffice.models import Terminal

    def work(session: Any) -> list[dict[str, Any]]:
        return [{"id": t.id, "merchant": t.merchant_id, "enrolled_at": _when(t.enrolled_at),
                 "head_sequence": t.head_sequence, "last_seen_at": _when(t.last_seen_at) or ""}
                for t in session.execute(select(Terminal).order_by(Terminal.id)).scalars()]

    rows = _session_run(settings, work, reading=True)
    if as_json:
        _print_json(rows)
        return
    _table(["id", "merchant", "enrolled_at", "head_sequence", "last_seen_at"], rows)


@cli.group()
def authorizations() -> None:
    """Online authorizations head office answered, and the terminals' reversals of them."""


@authorizations.command("list")
@click.option("--terminal", "terminal_id", help="Only this terminal's.")
@click.option("--reversed", "only_reversed", is_flag=True, help="Only reversed ones.")
@click.option("--owed", "only_owed", is_flag=True,
              help="Only approvals head office still owes the acquirer a reversal of (retried by `serve`).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_db_options
def authorizations_list(settings: Any, terminal_id: str | None, only_reversed: bool, only_owed: bool, limit: int,
                        as_json: bool) -> None:
    """Newest first: key (the terminal's payment id), amount, approved, whether and why it was reversed, and
    whether head office still owes the acquirer that reversal (``acquirer_owed``: when it is tried next)."""
    from sqlalchemy import select

    from headoffice.models import Authorization

    def work(session: Any) -> list[dict[str, Any]]:
        query = select(Authorization).order_by(Authorization.created_at.desc()).limit(limit)
        if terminal_id:
            query = query.where(Authorization.terminal_id == terminal_id)
        if only_reversed:
            query = query.where(Authorization.reversed_at.is_not(None))
        if only_owed:
            query = query.where(Authorization.acquirer_reversal_due_at.is_not(None))
        return [{"auth_id": a.auth_id, "terminal": a.terminal_id, "key": a.idempotency_key, "type": a.type,
                 "amount_minor": a.amount_minor, "currency": a.currency, "approved": a.approved, "code": a.code,
                 "reason": a.reason, "created_at": _when(a.created_at),
                 "reversed_at": _when(a.reversed_at), "reversal_reason": a.reversal_reason,
                 "acquirer_owed": _when(a.acquirer_reversal_due_at),
                 "acquirer_attempts": a.acquirer_reversal_attempts}
                for a in session.execute(query).scalars()]

    rows = _session_run(settings, work, reading=True)
    if as_json:
        _print_json(rows)
        return
    _table(["terminal", "key", "type", "amount_minor", "currency", "approved", "reason", "reversed_at",
            "reversal_reason", "acquirer_owed"],
           [{**r, "reversed_at": r["reversed_at"] or "", "acquirer_owed": r["acquirer_owed"] or ""} for r in rows])


@authorizations.command("reverse-owed")
@click.option("--acquirer", envvar="SMARTPOS_HQ_ACQUIRER", metavar="MODULE:FACTORY",
              help="The acquirer connector `serve` uses (default $SMARTPOS_HQ_ACQUIRER, else the simulated one).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_db_options
def authorizations_reverse_owed(settings: Any, acquirer: str | None, limit: int, as_json: bool) -> None:
    """Send every reversal head office owes the acquirer now, once each, without waiting out the back-off of the
    serve processes' retry pass (say, once the acquirer's link is back after an outage). Exit 1 if any is still
    owed afterwards."""
    from headoffice.app import HeadOffice, load_connector, pay_owed_reversals
    from headoffice.db import upgrade
    from headoffice.keystore import KeystoreError

    connector_for = None
    if acquirer:
        try:
            connector_for = load_connector(acquirer)
        except (ImportError, AttributeError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="--acquirer") from None
    _refuse_missing_sqlite(settings)
    try:
        hq = HeadOffice(settings, connector_for=connector_for)
    except KeystoreError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        upgrade(hq.engine)
        attempts = pay_owed_reversals(hq, waiting_too=True, limit=limit)
        known = {a["auth_id"]: a for a in _reversal_rows(hq, [auth_id for auth_id, _ in attempts])}
    finally:
        hq.engine.dispose()
    outcome = {True: "confirmed", False: "failed", None: "nothing owed any more"}
    rows = [{"auth_id": auth_id, "terminal": known[auth_id]["terminal"], "key": known[auth_id]["key"],
             "result": outcome[confirmed], "next_try": _when(known[auth_id]["due"]),
             "attempts": known[auth_id]["attempts"]}
            for auth_id, confirmed in attempts]
    if as_json:
        _print_json(rows)
    elif rows:
        _table(["terminal", "key", "result", "next_try", "attempts"],
               [{**r, "next_try": r["next_try"] or ""} for r in rows])
    else:
        click.echo("no reversal is owed to the acquirer")
    failed = sum(1 for r in rows if r["result"] == "failed")
    if failed:
        raise click.ClickException(f"{failed} reversal(s) still owed; the serve processes keep retrying them")


def _reversal_rows(hq: Any, auth_ids: list[str]) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from headoffice.models import Authorization

    query = select(Authorization).where(Authorization.auth_id.in_(auth_ids))
    return hq.run(lambda s: [{"auth_id": a.auth_id, "terminal": a.terminal_id, "key": a.idempotency_key,
                              "due": a.acquirer_reversal_due_at, "attempts": a.acquirer_reversal_attempts}
                             for a in s.execute(query).scalars()])


# -- API tokens --------------------------------------------------------------------------------------------------


@cli.group()
def tokens() -> None:
    """API tokens for head-office staff and systems (batches API)."""


@tokens.command("create")
@click.option("--name", help="Who or what uses it, to list and revoke it by (default: token-<UTC time>-<4 hex>).")
@_db_options
def tokens_create(settings: Any, name: str | None) -> None:
    """Create a token; it is printed once (the only line on stdout) and stored only as a hash."""
    import secrets

    from headoffice import apitokens
    from headoffice.clock import utcnow

    named = name or f"token-{utcnow():%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"
    click.echo(_session_run(settings, lambda s: apitokens.create_token(s, named)))
    if name is None:
        click.echo(f"token named {named!r}; revoke it with: smartpos-hq tokens revoke --name {named}", err=True)


@tokens.command("revoke")
@click.option("--name", required=True)
@_db_options
def tokens_revoke(settings: Any, name: str) -> None:
    from headoffice import apitokens

    if not _session_run(settings, lambda s: apitokens.revoke_token(s, name)):
        raise click.ClickException(f"no active token named {name!r}")
    click.echo(f"revoked {name}")


@tokens.command("list")
@_db_options
def tokens_list(settings: Any) -> None:
    from headoffice import apitokens

    rows = _session_run(settings, lambda s: [
        {"name": t.name, "created_at": _when(t.created_at), "revoked_at": _when(t.revoked_at) or ""}
        for t in apitokens.list_tokens(s)], reading=True)
    _table(["name", "created_at", "revoked_at"], rows)


# -- batches -----------------------------------------------------------------------------------------------------


@cli.group()
def batches() -> None:
    """Settlement batches."""


@batches.command("list")
@click.option("--status", type=click.Choice(["open", "balanced", "out_of_balance"]))
@click.option("--terminal")
@click.option("--after", type=click.IntRange(0, 2**63 - 1), help="Only batches with an id above this one.")
@click.option("--limit", type=click.IntRange(1, 1000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_db_options
def batches_list(settings: Any, status: str | None, terminal: str | None, after: int | None, limit: int,
                 as_json: bool) -> None:
    """Batches in the order they were opened, LIMIT at a time (the next ones with --after LAST_ID)."""
    from headoffice import batches as batch_service
    from protocol.amounts import format_amount

    docs = _session_run(settings, lambda s: batch_service.list_batches(s, status=status, terminal_id=terminal,
                                                                         after=after, limit=limit), reading=True)
    if len(docs) == limit:
        click.echo(f"{limit} batches shown; there may be more: --after {docs[-1]['id']}", err=True)
    if as_json:
        _print_json(docs)
        return
    rows = []
    for doc in docs:
        totals = ", ".join(
            f"{t['type']} {t['count']}x {format_amount(t['amount_minor'], t['currency'])}" for t in doc["totals"])
        rows.append({"id": doc["id"], "terminal": doc["terminal_id"], "batch": doc["batch"],
                     "status": doc["status"], "closed_at": doc["closed_at"] or "", "totals": totals})
    _table(["id", "terminal", "batch", "status", "closed_at", "totals"], rows)


@batches.command("pull")
@click.argument("batch_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Write to this file, whole or not at all (default, or -: stdout).")
@_db_options
def batches_pull(settings: Any, batch_id: int, fmt: str, out: Path | None) -> None:
    """Export batch BATCH_ID as CSV (header, one line per transaction, trailer) or JSON."""
    from headoffice import batches as batch_service
    from headoffice import exports

    doc = _session_run(settings, lambda s: batch_service.batch_doc(s, batch_id), reading=True)
    text = exports.batch_csv(doc) if fmt == "csv" else json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if out is None or str(out) == "-":
        click.echo(text, nl=False)
        return
    try:
        _write_whole(out, text.encode("utf-8"))
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror or exc}; nothing was written") from None
    click.echo(f"batch {batch_id}: {doc['count']} transactions written to {out}", err=True)


def _write_whole(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` in full, or keeps what it held: a settlement file cut short by a full disk or a
    crash would be imported as a batch missing its last lines (the trailer would not match, but only if checked).
    Written beside it and renamed over it; a symlink is followed (the link stays), an existing file keeps its mode.
    What is not a regular file (/dev/stdout, a pipe) is written to as it is: it cannot be replaced."""
    import stat
    import tempfile

    try:
        mode = path.stat().st_mode  # of what a symlink points to
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        with open(path, "wb") as fh:
            fh.write(data)
        return
    path = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, stat.S_IMODE(mode) if mode is not None else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- parameters, deny list, acquirer -----------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@cli.group("parameters")
def parameters_group() -> None:
    """Terminal parameters (offline risk limits, receipt header); versioned, fetched by terminals on sync."""


@parameters_group.command("show")
@_db_options
def parameters_show(settings: Any) -> None:
    from headoffice import parameters

    _print_json(_session_run(settings, lambda s: parameters.document(parameters.peek(s)), reading=True))


@parameters_group.command("set")
@click.argument("assignments", nargs=-1)
@click.option("--unset", multiple=True, help="Remove a key (terminal default applies).")
@_db_options
def parameters_set(settings: Any, assignments: tuple[str, ...], unset: tuple[str, ...]) -> None:
    """Set KEY=VALUE pairs (VALUE is JSON if it parses, else text); prints the new version."""
    from headoffice import parameters

    updates = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        updates[key.strip()] = _parse_value(value)
    if not updates and not unset:
        raise click.UsageError("nothing to set")
    row = _session_run(settings, lambda s: parameters.document(parameters.set_parameters(s, updates,
                                                                                         unset=list(unset))))
    click.echo(f"parameters version {row['version']}")


@cli.group()
def deny() -> None:
    """Deny list of card tokens (pushed to terminals, checked on online authorization)."""


def _tokens_from(settings: Any, tokens: tuple[str, ...], pan_stdin: bool) -> list[str]:
    out = list(tokens)
    if pan_stdin:
        from headoffice.keystore import FileKeystore
        from protocol.carddata import luhn_ok, mask_pan, validate_pan
        from protocol.errors import ValidationError
        from protocol.tokens import card_token  # type: ignore[attr-defined]

        key = FileKeystore(settings.keystore_dir).token_key()
        for number, line in enumerate(sys.stdin, start=1):
            pan = line.strip().replace(" ", "")
            if not pan:
                continue
            try:
                validate_pan(pan)
            except ValidationError:
                raise click.ClickException(f"line {number}: not a card number (12 to 19 digits); nothing was "
                                           "changed") from None
            if not luhn_ok(pan):
                # A mistyped number would deny some other token and leave the card meant still accepted.
                raise click.ClickException(f"line {number}: {mask_pan(pan)} fails the check digit (mistyped?); "
                                           "nothing was changed")
            out.append(card_token(key, pan))
    if not out:
        raise click.UsageError("give card tokens, or --pan-stdin with PANs on standard input")
    return out


@deny.command("add")
@click.argument("tokens", nargs=-1)
@click.option("--pan-stdin", is_flag=True, help="Read PANs (one per line) from stdin and deny their tokens.")
@_db_options
def deny_add(settings: Any, tokens: tuple[str, ...], pan_stdin: bool) -> None:
    from headoffice import parameters

    checked = _tokens_from(settings, tokens, pan_stdin)
    row = _session_run(settings, lambda s: parameters.document(parameters.deny_add(s, checked)))
    click.echo(f"deny list: {len(row['deny_list'])} tokens, parameters version {row['version']}")


@deny.command("remove")
@click.argument("tokens", nargs=-1)
@click.option("--pan-stdin", is_flag=True)
@_db_options
def deny_remove(settings: Any, tokens: tuple[str, ...], pan_stdin: bool) -> None:
    from headoffice import parameters

    checked = _tokens_from(settings, tokens, pan_stdin)
    row = _session_run(settings, lambda s: parameters.document(parameters.deny_remove(s, checked)))
    click.echo(f"deny list: {len(row['deny_list'])} tokens, parameters version {row['version']}")


@deny.command("list")
@_db_options
def deny_list(settings: Any) -> None:
    from headoffice import parameters

    for token in _session_run(settings, lambda s: list(parameters.peek(s).deny_list), reading=True):
        click.echo(token)


@cli.group()
def acquirer() -> None:
    """Rules of the built-in simulated acquirer (shared by all serve processes)."""


@acquirer.command("show")
@_db_options
def acquirer_show(settings: Any) -> None:
    from headoffice.acquirer import SETTING_KEY, rules_from_setting
    from headoffice.models import Setting

    def work(session: Any) -> dict[str, Any]:
        row = session.get(Setting, SETTING_KEY)
        return rules_from_setting(row.value if row else None).model_dump()

    _print_json(_session_run(settings, work, reading=True))


@acquirer.command("set")
@click.option("--approve/--decline-all", default=None, help="Approve by default, or decline everything.")
@click.option("--decline-over", type=click.IntRange(min=0), help="Decline amounts above this (minor units).")
@click.option("--no-limit", is_flag=True, help="Remove --decline-over.")
@click.option("--delay-ms", type=click.IntRange(0, 120_000), help="Answer this much later (tests of timeouts).")
@click.option("--decline-deny-listed/--ignore-deny-list", default=None)
@_db_options
def acquirer_set(settings: Any, approve: bool | None, decline_over: int | None, no_limit: bool,
                 delay_ms: int | None, decline_deny_listed: bool | None) -> None:
    from headoffice.acquirer import SETTING_KEY, rules_from_setting
    from headoffice.models import Setting

    def work(session: Any) -> dict[str, Any]:
        row = session.get(Setting, SETTING_KEY)
        rules = rules_from_setting(row.value if row else None).model_dump()
        if approve is not None:
            rules["approve"] = approve
        if decline_over is not None:
            rules["decline_over_minor"] = decline_over
        if no_limit:
            rules["decline_over_minor"] = None
        if delay_ms is not None:
            rules["delay_ms"] = delay_ms
        if decline_deny_listed is not None:
            rules["decline_deny_listed"] = decline_deny_listed
        value = rules_from_setting(rules).model_dump()
        if row is None:
            session.add(Setting(key=SETTING_KEY, value=value))
        else:
            row.value = value
        return value

    _print_json(_session_run(settings, work))


def _table(columns: list[str], rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    # Piped into a file or another program there is no terminal width to fit: keep whole timestamps and ids.
    Console(width=None if sys.stdout.isatty() else 250, emoji=False).print(table)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: known errors are one line and exit status 1, never a traceback."""
    from headoffice.errors import HQError
    from headoffice.keystore import KeystoreError
    from headoffice.logs import setup_cli_logging

    setup_cli_logging()
    try:
        cli.main(args=argv, prog_name="smartpos-hq", standalone_mode=True)
    except SystemExit:
        raise
    except HQError as exc:
        click.echo(f"smartpos-hq: error: {exc.message}", err=True)
        sys.exit(1)
    except KeystoreError as exc:
        click.echo(f"smartpos-hq: error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        from protocol.carddata import redact

        first = str(exc).splitlines()[0] if str(exc) else ""
        click.echo(f"smartpos-hq: error: {redact(first) or type(exc).__name__}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
