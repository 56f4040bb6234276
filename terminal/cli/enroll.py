"""`smartpos enroll --hq URL --code CODE`: technician enrollment of this terminal with head office.

The terminal's Ed25519 key is generated here and never leaves the machine. It is written (0600) before the
request is sent, so an answer lost on the way can be retried with the same code: head office recognises the same
key and answers the same enrollment again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from protocol.signing import CLOCK_TOLERANCE_S, DEFAULT_WINDOW_S

KEYS_DIR = "keys"
PENDING_KEY = "keys/terminal_ed25519.pending.pem"
PENDING_CODE = "keys/enrollment.pending"


def _write_private(path: Path, data: bytes, *, like: os.stat_result | None = None) -> None:
    """Atomic replace with 0600 from the first byte (never briefly world-readable). ``like``: the file being
    replaced, whose mode and owner the new one keeps (a config an administrator made 0640 root:smartpos)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a stale one of an earlier run (or a planted symlink): O_EXCL below refuses to follow it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            if like is not None:
                with contextlib.suppress(PermissionError):  # only root may give a file away; others keep their own
                    os.fchown(fd, like.st_uid, like.st_gid)
                os.fchmod(fd, stat.S_IMODE(like.st_mode))
            view = memoryview(data)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()  # no half-written temporary left beside the file
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_config(path: Path, data: bytes) -> None:
    """Replace the config atomically, keeping its mode and owner; where its directory is not writable (e.g.
    /etc/smartpos owned by root, the file group-writable for the smartpos user) rewrite the file in place."""
    path = path.resolve()  # a symlinked config (configuration management) is updated where it lives
    try:
        try:
            old = path.stat()
        except FileNotFoundError:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            _write_private(path, data)
            return
        if os.access(path.parent, os.W_OK | os.X_OK):
            _write_private(path, data, like=old)
            return
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}. The terminal is enrolled: add "
                                   "[terminal] id / state_dir and [headoffice] url by hand (see `smartpos enroll "
                                   "--help`), or free space and enroll again with --force") from None
    before = path.read_bytes()
    try:
        _write_in_place(path, data)
    except OSError as exc:
        # Disk full or an I/O error half-way: put the old text back rather than leave a config the daemon refuses.
        with contextlib.suppress(OSError):
            _write_in_place(path, before)
        raise click.ClickException(f"cannot rewrite {path}: {exc.strerror}; it was left as it was. The terminal "
                                   "is enrolled: add [terminal] id / state_dir and [headoffice] url by hand, or "
                                   "free space and enroll again with --force") from None


def _write_in_place(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _config_write_problem(path: Path) -> str | None:
    """Why the config could not be written by this user, found before head office spends the code."""
    if path.exists():
        if os.access(path.parent, os.W_OK | os.X_OK) or os.access(path, os.W_OK):
            return None
        return f"neither {path} nor its directory is writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if os.access(parent, os.W_OK | os.X_OK):
        return None
    return f"{parent} is not writable, so {path} cannot be created"


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def update_config_text(text: str, values: dict[str, dict[str, str]]) -> str:
    """Set ``values[section][key]`` in a TOML document, keeping every other line (and comments) as it was."""
    lines = text.splitlines()
    for section, keys in values.items():
        header = re.compile(rf"^\s*\[\s*{re.escape(section)}\s*\]\s*(#.*)?$")
        start = next((i for i, line in enumerate(lines) if header.match(line)), None)
        if start is None:
            if lines and lines[-1].strip():
                lines.append("")
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {_toml_string(v)}" for k, v in keys.items())
            continue
        end = next((i for i in range(start + 1, len(lines)) if re.match(r"^\s*\[", lines[i])), len(lines))
        for key, value in keys.items():
            pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
            hit = next((i for i in range(start + 1, end) if pattern.match(lines[i])), None)
            if hit is not None:
                lines[hit] = f"{key} = {_toml_string(value)}"
            else:
                lines.insert(start + 1, f"{key} = {_toml_string(value)}")
                end += 1
    return "\n".join(lines) + "\n"


def _queue_owner(db_path: Path) -> tuple[str | None, int, int, int]:
    """(terminal id, transactions, of them not yet accepted by head office, reversals or payments still owed to
    head office) of an existing queue, read-only."""
    import sqlite3

    from offline_queue.tables import UNSYNCED_SQL

    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'terminal_id'").fetchone()
            total, unsynced = conn.execute(
                f"SELECT count(*), coalesce(sum({UNSYNCED_SQL}), 0) FROM transactions").fetchone()
            owed = 0
            for sql in ("SELECT count(*) FROM reversals WHERE state = 'pending'",
                        "SELECT count(*) FROM payments WHERE state IN ('waiting_for_card', 'reading', 'authorizing')"):
                try:
                    owed += conn.execute(sql).fetchone()[0]
                except sqlite3.OperationalError:  # a queue of a version without that table holds none
                    pass
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise click.ClickException(f"queue {db_path} cannot be read ({exc}); re-enrolling would lose it: "
                                   "move it aside first") from None
    return (row[0] if row else None), int(total), int(unsynced), int(owed)


def _check_queue_before_reenroll(db_path: Path) -> None:
    """Re-enrolling replaces the key that signs uploads: transactions still queued under the old key would never
    reach head office. Refused until they are synced."""
    if not db_path.exists():
        return
    owner, _total, unsynced, owed = _queue_owner(db_path)
    if unsynced:
        raise click.ClickException(
            f"queue {db_path} holds {unsynced} transaction(s) of terminal {owner} not yet accepted by head office; "
            "run `smartpos sync --wait` before enrolling again (the new key could not upload them)")
    if owed:
        # An authorization head office holds for this terminal must be released as this terminal: under a new
        # terminal id its reversal would be sent for the wrong terminal (or, with the queue set aside, never).
        raise click.ClickException(
            f"queue {db_path} holds {owed} reversal(s) or unfinished payment(s) of terminal {owner} that head "
            "office must still hear about; start the daemon until `smartpos status` shows none pending, then "
            "enroll again")


def _set_aside_other_terminals_queue(db_path: Path, terminal_id: str) -> str | None:
    """A fully synced queue of the terminal this one was enrolled as before is kept, renamed, so the new terminal
    starts with its own queue. Returns a note for the technician."""
    if not db_path.exists():
        return None
    owner, total, _unsynced, _owed = _queue_owner(db_path)
    if owner in (None, terminal_id) or not total:
        return None
    import time

    kept = db_path.with_name(f"{db_path.name}.{owner}.{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{db_path}{suffix}")
        if source.exists():
            source.rename(f"{kept}{suffix}")
    return f"the synced queue of terminal {owner} was kept as {kept}"


def _create_queue(db_path: Path, terminal_id: str) -> str | None:
    """Create the offline queue at enrollment, so the daemon finds it at the packaged schema: it then opens it
    without loading Alembic (~10 MB it would otherwise keep resident for its whole life). Best effort: the daemon
    creates the queue itself when it is missing. Returns a note for the technician when it could not."""
    if db_path.exists():
        return None  # an existing queue is the daemon's to check (terminal id, schema) when it starts
    from offline_queue.errors import StoreError
    from offline_queue.store import QueueStore
    from protocol.errors import ValidationError

    try:
        with QueueStore.open(db_path, terminal_id=terminal_id) as store:
            store.continue_chain(0, None, 0)  # head office has just enrolled this terminal: it holds none of its chain
    except (StoreError, ValidationError) as exc:
        return f"queue {db_path} not created now ({exc.message}); the daemon creates it when it starts"
    except OSError as exc:
        return f"queue {db_path} not created now ({exc.strerror}); the daemon creates it when it starts"
    return None


def _enrolled_config_text(existing: str | None, terminal_id: str, state: Path, hq_url: str) -> str:
    old_text = existing if existing is not None else (
        "# smartpos terminal configuration, written by `smartpos enroll`.\n"
        "# Every key with its default is documented in config/smartpos.toml of the smartpos package.\n")
    return update_config_text(old_text, {"terminal": {"id": terminal_id, "state_dir": str(state)},
                                         "headoffice": {"url": hq_url}})


def _clock_offset(answer: dict[str, Any]) -> float | None:
    import time

    server = answer.get("server_time")
    return float(server) - time.time() if isinstance(server, int | float) else None


def _existing_config(config_file: Path) -> tuple[str | None, Any]:
    """The config as it is now (text, settings), checked before head office is asked: a config the daemon would
    refuse, or one enroll could not update, is reported while the code is still unused. (None, None) when there
    is no file yet."""
    from config.loading import ConfigError, parse_settings

    unused = "nothing was sent to head office and the code is still unused"
    try:
        text = config_file.read_text("utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"config {config_file}: cannot read it ({exc}); {unused}") from None
    try:
        return text, parse_settings(tomllib.loads(text), path=config_file)
    except tomllib.TOMLDecodeError as exc:
        raise click.ClickException(f"config {config_file}: invalid TOML: {exc}; fix it first ({unused})") from None
    except ConfigError as exc:  # its message already names the file and the key
        raise click.ClickException(f"{exc}; fix it first ({unused})") from None


@click.command()
@click.option("--hq", "hq_url", required=True, help="Head-office base URL, e.g. https://hq.example.com")
@click.option("--code", required=True, help="One-time enrollment code from `smartpos-hq codes create`.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Config file to create or update (default $SMARTPOS_CONFIG or /etc/smartpos/smartpos.toml).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where keys and the queue live (default: from the config file, else /var/lib/smartpos).")
@click.option("--force", is_flag=True, help="Replace an existing enrollment of this state directory.")
@click.option("--timeout", default=15.0, show_default=True, type=click.FloatRange(min=0.1))
@click.option("--json", "as_json", is_flag=True)
def enroll(hq_url: str, code: str, config_file: Path | None, state_dir: Path | None, force: bool, timeout: float,
           as_json: bool) -> None:
    """Enroll this terminal with head office: writes keys and enrollment under the state directory (0700/0600)
    and [terminal] id / state_dir and [headoffice] url into the config file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from config.loading import ConfigError, config_path, parse_settings
    from config.provisioning import ENROLLMENT, HQ_PUBLIC_KEY, TERMINAL_KEY, TOKEN_KEY
    from config.settings import DEFAULT_STATE_DIR, QUEUE_FILE, checked_http_url
    from offline_queue.hqclient import HeadOfficeBadAnswer, HeadOfficeRejected, HeadOfficeUnreachable, parameters_doc
    from offline_queue.hqclient import enroll as hq_enroll
    from protocol.envelope import EnvelopeError, announced_versions, load_public_key, public_key_pem
    from protocol.signing import public_key_to_text

    try:
        hq_url = checked_http_url(hq_url.strip())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--hq") from None
    cfg_path = config_path(config_file)
    existing_text, existing = _existing_config(cfg_path)
    state = (state_dir or (existing.state_dir if existing is not None else None) or DEFAULT_STATE_DIR)
    state = state.expanduser().absolute()
    if (state / ENROLLMENT).exists() and not force:
        raise click.ClickException(f"{state} is already enrolled; use --force to enroll it again")
    _check_queue_before_reenroll(state / QUEUE_FILE)  # before the code is spent
    try:  # what enrollment will write into the config must make one the daemon takes (dotted keys, ...)
        parse_settings(tomllib.loads(_enrolled_config_text(existing_text, "T-CHECK", state, hq_url)), path=cfg_path)
    except (ConfigError, tomllib.TOMLDecodeError) as exc:
        raise click.ClickException(f"config {cfg_path}: enroll cannot add its keys to this file ({exc}); "
                                   "nothing was sent to head office and the code is still unused") from None
    problem = _config_write_problem(cfg_path.resolve())  # where _write_config writes (a symlink's target)
    if problem:
        raise click.ClickException(
            f"cannot write the config as this user ({problem}); nothing was sent to head office and the code is "
            "still unused: run enroll as a user who may write it (docs/terminal.md, systemd service)")
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"state dir {state}: {exc.strerror}; nothing was sent to head office") from None
    os.chmod(state, 0o700)
    (state / KEYS_DIR).mkdir(mode=0o700, exist_ok=True)
    os.chmod(state / KEYS_DIR, 0o700)

    code_digest = hashlib.sha256(code.strip().upper().replace("-", "").encode()).hexdigest()
    pending_key, pending_code = state / PENDING_KEY, state / PENDING_CODE
    key: Ed25519PrivateKey | None = None
    if pending_key.exists() and pending_code.exists() and pending_code.read_text().strip() == code_digest:
        loaded = serialization.load_pem_private_key(pending_key.read_bytes(), password=None)
        key = loaded if isinstance(loaded, Ed25519PrivateKey) else None
    if key is None:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        _write_private(pending_key, pem)
        _write_private(pending_code, code_digest.encode())

    try:
        answer = hq_enroll(hq_url, code, public_key_to_text(key.public_key()), timeout=timeout)
    except HeadOfficeRejected as exc:
        raise click.ClickException(f"head office refused the enrollment ({exc.code}): {exc.message}") from None
    except HeadOfficeUnreachable as exc:
        raise click.ClickException(f"{exc.message}; nothing changed, run the same command again") from None

    try:
        if not isinstance(answer, dict):
            raise ValueError("it is not a JSON object")
        terminal_id = answer.get("terminal_id")
        if not isinstance(terminal_id, str) or not terminal_id.strip():
            raise ValueError("no terminal_id")
        hq_public = load_public_key(str(answer["hq_public_key"]).encode())
        import base64

        if not isinstance(answer.get("token_key"), str):
            raise ValueError("no token_key")
        token_key = base64.b64decode(answer["token_key"], validate=True)
        if len(token_key) != 32:
            raise ValueError("token key must be 32 bytes")
        if not isinstance(answer.get("merchant") or {}, dict):
            raise ValueError("merchant is not an object")
        # The parameters and deny list it starts with, checked as a sync checks them: a doc the daemon could not
        # apply would stop it from starting, after the one-time code was spent.
        parameters_doc({"version": answer.get("parameters_version") or 0,
                        "parameters": answer.get("parameters") or {}, "deny_list": answer.get("deny_list") or []})
    except (KeyError, ValueError, EnvelopeError) as exc:
        raise click.ClickException(f"head office answer is incomplete: {exc}") from None
    except HeadOfficeBadAnswer as exc:
        raise click.ClickException(f"head office answer is not usable: {exc.message}") from None

    # Checked before the request too; again with the real terminal id, before anything final is written.
    try:
        new_text = _enrolled_config_text(existing_text, terminal_id, state, hq_url)
        settings = parse_settings(tomllib.loads(new_text), path=cfg_path)
    except ConfigError as exc:  # its message already names the file
        raise click.ClickException(str(exc)) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.ClickException(f"config {cfg_path}: {exc}") from None

    enrollment_doc: dict[str, Any] = {
        "terminal_id": terminal_id,
        "merchant": answer.get("merchant") or {},
        "hq_url": hq_url,
        "parameters": answer.get("parameters") or {},
        "deny_list": answer.get("deny_list") or [],
        "parameters_version": answer.get("parameters_version"),
        "envelope_versions": list(announced_versions(answer) or ()),
        "enrolled_at": datetime.now(UTC).isoformat(),
    }
    # The pending key and code stay until enrollment.json is written: a full disk or a crash before that leaves
    # them, so the same command with the same code gets the same enrollment again (same key, same answer).
    try:
        _write_private(state / HQ_PUBLIC_KEY, public_key_pem(hq_public))
        _write_private(state / TOKEN_KEY, token_key)
        _write_private(state / TERMINAL_KEY, pending_key.read_bytes())
        _write_private(state / ENROLLMENT, (json.dumps(enrollment_doc, indent=2, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise click.ClickException(f"cannot write the enrollment under {state}: {exc.strerror}; free space and run "
                                   "the same command again (the same code works for this terminal)") from None
    pending_code.unlink(missing_ok=True)
    pending_key.unlink(missing_ok=True)
    _write_config(cfg_path, new_text.encode("utf-8"))
    aside_note = _set_aside_other_terminals_queue(settings.db_path, terminal_id)
    queue_note = _create_queue(settings.db_path, terminal_id)

    for note in (aside_note, queue_note):
        if note:
            click.echo(f"smartpos: note: {note}", err=True)
    if as_json:
        click.echo(json.dumps({"terminal_id": terminal_id, "merchant": enrollment_doc["merchant"],
                               "state_dir": str(state), "config": str(cfg_path), "hq_url": hq_url}))
        return
    from rich.console import Console

    console = Console()
    merchant = enrollment_doc["merchant"]
    console.print(f"[green]enrolled[/green] terminal [bold]{terminal_id}[/bold] of "
                  f"{merchant.get('name') or merchant.get('id') or 'merchant'} with {hq_url}")
    console.print(f"keys and enrollment in {state} (0700/0600); config {cfg_path} updated")
    offset = _clock_offset(answer)
    if offset is not None and abs(offset) > CLOCK_TOLERANCE_S:  # the limit `smartpos selftest` fails at
        ahead = f"{-offset:.0f} s ahead of" if offset < 0 else f"{offset:.0f} s behind"
        console.print(f"[yellow]warning[/yellow]: this terminal's clock is {ahead} head office's; "
                      f"selftest fails beyond {CLOCK_TOLERANCE_S} s and head office refuses signed requests more "
                      f"than {DEFAULT_WINDOW_S} s off — fix the clock (NTP)")
