"""The durable offline queue: one SQLite file (WAL, synchronous=FULL) holding transactions with their hash chain,
batches, sync state, the daemon's payments, print jobs, parameters with the deny list, and counters.

Write-ahead: ``record()`` returns only after its transaction is committed and fsynced, so "approved" is never
said about a sale the terminal could lose. All writes go through one writer connection behind a lock with
``BEGIN IMMEDIATE`` (one writer, no lock upgrades); reads use a small pool and see committed data only (WAL).

The hot paths (``record`` and the drain: ``pending_page``/``mark_accepted``) use the pooled DBAPI connection with
prepared SQL; SQLAlchemy's per-statement overhead would otherwise halve the durable commit rate. The schema itself
lives in ``tables.py`` and is applied by Alembic on open.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sqlite3
import threading
import time
import uuid as uuid_mod
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy import exc as sa_exc

from offline_queue import tables as t
from offline_queue.cardprotect import ProtectedCard, looks_like_card_data
from offline_queue.errors import (
    RECOVERY_HINT,
    SchemaTooNewError,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreWriteError,
    TerminalMismatchError,
)
from offline_queue.models import (
    AUTH_MODES,
    PAYMENT_STATES,
    PRINT_STATES,
    Authorization,
    Batch,
    Payment,
    PrintJob,
    QueueStats,
    StoredParameters,
    Transaction,
)
from offline_queue.risk import RiskStats
from offline_queue.totals import compute_totals
from protocol.amounts import validate_amount, validate_currency
from protocol.chain import CHAINED_FIELDS, GENESIS, WIRE_FIELDS, chain_hash_sorted, is_hash, verify_chain
from protocol.errors import ValidationError
from protocol.ids import uuid7
from protocol.tokens import is_token

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_FINAL_PAYMENT_STATES = frozenset({"approved", "declined", "failed", "cancelled", "timed_out"})
_PAYMENT_MODES = ("prefer-online", "require-online", "force-offline")
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}\Z")
_UNSYNCED = t.UNSYNCED_SQL

# Every column a ``Transaction`` is built from: the chained (uploaded) fields plus the local ones.
_TXN_COLUMNS: tuple[str, ...] = (
    *CHAINED_FIELDS,
    "voided_by",
    "prev_hash",
    "hash",
    "idempotency_key",
    "payment_id",
    "sync_state",
    "sync_code",
    "sync_reason",
    "synced_at",
    "envelope",
    "atc",
    "tvr",
)
_TXN_SELECT = "SELECT " + ", ".join(_TXN_COLUMNS) + " FROM transactions"
_WIRE_SELECT = "SELECT " + ", ".join(WIRE_FIELDS) + " FROM transactions"
_INSERT_COLUMNS = (
    "sequence",
    "uuid",
    "terminal_id",
    "batch",
    "type",
    "created_at",
    "amount_minor",
    "currency",
    "net_sign",
    "scheme",
    "masked_pan",
    "pan_last4",
    "token",
    "aid",
    "label",
    "entry_mode",
    "wallet",
    "auth_mode",
    "auth_code",
    "auth_reason",
    "auth_id",
    "reference",
    "void_of",
    "envelope",
    "envelope_sha256",
    "prev_hash",
    "hash",
    "idempotency_key",
    "payment_id",
    "sync_state",
    "atc",
    "tvr",
)
# The open batch and the chain's head in one statement: the (gap-free) next sequence is MAX(sequence) + 1 on the
# primary key, read under the write lock (BEGIN IMMEDIATE), so no counter row is rewritten in every commit.
_HEAD_SQL = (
    "SELECT b.number, h.sequence, h.hash FROM batches AS b LEFT JOIN "
    "(SELECT sequence, hash FROM transactions ORDER BY sequence DESC LIMIT 1) AS h WHERE b.status = 'open'"
)
# The last sequence of this terminal's chain: the newest row, else the base a replaced queue continues from (see
# ``QueueStore.continue_chain``), else 0.
_LAST_SEQ_SQL = (
    "SELECT COALESCE(MAX(sequence), (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'chain_base_sequence'), 0) "
    "FROM transactions"
)
_INSERT_SQL = (
    f"INSERT INTO transactions ({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})"
)


PRUNE_CHUNK = 500  # print jobs deleted per commit


def utcnow_iso(now: datetime | None = None) -> str:
    """``2026-11-23T12:00:00.000000Z``: the form times take in the queue, on the wire and in the hash chain."""
    if now is None:
        return iso_from_ns(time.time_ns())
    return now.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_utc_iso(text: object) -> datetime | None:
    """A time as :func:`utcnow_iso` writes it (or any ISO 8601 text; naive means UTC), None when it is none."""
    try:
        value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


_second_prefix: tuple[int, str] = (-1, "")


def iso_from_ns(unix_ns: int) -> str:
    """:func:`utcnow_iso` of a ``time.time_ns()`` reading. The text up to the second is formatted once a second
    (a sale takes its timestamp and its UUIDv7 from one clock reading, at several times the cost of the rest)."""
    global _second_prefix
    second, micros = divmod(unix_ns // 1000, 1_000_000)
    cached_second, prefix = _second_prefix
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _second_prefix = (second, prefix)
    return f"{prefix}{micros:06d}Z"


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- errors -----------------------------------------------------------------------------------------------------


def _store_error(exc: BaseException, path: Path | str) -> StoreError:
    """Map a sqlite3 / SQLAlchemy error to the store's typed errors."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary == sqlite3.SQLITE_FULL or "database or disk is full" in text:
        return StoreFullError()
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "database is locked" in text:
        return StoreWriteError("store_busy", "the offline queue stayed locked past the busy timeout; nothing written")
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in text or "not a database" in text:
        return StoreCorruptError("store_corrupt", f"queue database {path} is damaged ({text}). {RECOVERY_HINT}")
    return StoreWriteError("store_write", f"offline queue write failed: {text}")


# --- input checks -----------------------------------------------------------------------------------------------


def _check_text(name: str, value: object, max_len: int, *, card_check: bool = True) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len or not value.isprintable():
        raise ValidationError(f"invalid_{name}", f"{name} must be 1 to {max_len} printable characters")
    if card_check and looks_like_card_data(value):
        raise ValidationError("card_data_in_payload", f"{name} looks like card data; it is never stored")
    return value


_AUTH_KEYS = frozenset({"mode", "code", "reason", "auth_id", "fallback"})


def _check_auth(auth: Authorization | dict[str, Any] | None) -> Authorization:
    if isinstance(auth, dict):
        if not auth.keys() <= _AUTH_KEYS:
            names = ", ".join(sorted(map(repr, auth.keys() - _AUTH_KEYS)))
            raise ValidationError("invalid_auth", f"unknown authorization fields: {names}")
        auth = Authorization(
            mode=auth.get("mode"), code=auth.get("code"), reason=auth.get("reason"), auth_id=auth.get("auth_id"),
            fallback=auth.get("fallback"),
        )
    if not isinstance(auth, Authorization):
        raise ValidationError("invalid_auth", "auth must be an Authorization or a dict with mode/code/reason/auth_id")
    if auth.mode not in AUTH_MODES:
        raise ValidationError("invalid_auth", f"authorization mode must be one of {', '.join(AUTH_MODES)}")
    _check_text("auth_code", auth.code, 16)
    _check_text("auth_reason", auth.reason, 200)
    _check_text("auth_id", auth.auth_id, 64)
    _check_text("auth_fallback", auth.fallback, 64)
    return auth


class _CardCheck:
    """Checks that a ``ProtectedCard`` carries nothing that looks like card data in its plain fields.

    The fields a card supplies (AID, label) and the ones named from it (scheme, entry mode) repeat from one tap
    to the next, and a Visa AID holds a 13-digit run that needs the full PAN/track scan every time; so strings
    found clean are remembered (a bounded set, emptied when full). Nothing found to look like card data is kept.
    """

    _MAX_REMEMBERED = 512

    def __init__(self) -> None:
        self._clean: set[str] = set()

    def _is_card_data(self, text: str) -> bool:
        if text in self._clean:
            return False
        if looks_like_card_data(text):
            return True
        if len(self._clean) >= self._MAX_REMEMBERED:
            self._clean.clear()
        self._clean.add(text)
        return False

    def __call__(self, card: object) -> ProtectedCard:
        if not isinstance(card, ProtectedCard):
            raise ValidationError(
                "invalid_card",
                "record() takes a ProtectedCard (CardProtection.protect(card_read)), never raw card data",
            )
        if not is_token(card.token):
            raise ValidationError("invalid_card", "card token must be 64 lower-case hex characters")
        for name, value, repeats in (
            ("scheme", card.scheme, True), ("masked_pan", card.masked_pan, False),
            ("pan_last4", card.pan_last4, False), ("aid", card.aid, True), ("label", card.label, True),
            ("entry_mode", card.entry_mode, True),
        ):  # fmt: skip
            if value is None:
                continue
            if value.__class__ is not str or len(value) > 64:
                raise ValidationError("invalid_card", f"card field {name} is not acceptable")
            if self._is_card_data(value) if repeats else looks_like_card_data(value):
                raise ValidationError("invalid_card", f"card field {name} is not acceptable")
        return card


def _runs(sequences: Iterable[int]) -> list[tuple[int, int]]:
    """Contiguous (first, last) runs, so marking 500 accepted rows is one UPDATE, not 500."""
    if isinstance(sequences, range) and sequences.step == 1:
        return [(sequences.start, sequences.stop - 1)] if len(sequences) else []
    runs: list[tuple[int, int]] = []
    for seq in sorted(set(sequences)):
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValidationError("invalid_sequence", "sequence numbers must be integers")
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


def _dumps(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode()
    except TypeError as exc:  # orjson.JSONEncodeError: non-str keys, unknown types, huge ints
        raise ValidationError("invalid_json", f"value cannot be stored as JSON: {exc}") from None


def _loads(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


# --- file checks, engine, migrations ----------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    """Refuse files that are not intact SQLite databases before SQLite gets a chance to "repair" them."""
    size = path.stat().st_size
    if size == 0:
        raise StoreCorruptError(
            "store_corrupt",
            f"queue database {path} is empty (0 bytes): it was truncated or is not ours. {RECOVERY_HINT}",
        )
    with open(path, "rb") as handle:
        header = handle.read(100)
    if len(header) < 100 or header[:16] != _SQLITE_MAGIC:
        raise StoreCorruptError(
            "store_corrupt", f"queue database {path} has no SQLite header (damaged or not a database). {RECOVERY_HINT}"
        )
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    header_size_valid = header[24:28] == header[92:96]
    wal = path.with_name(path.name + "-wal")
    # With a non-empty WAL the main file may legitimately lag its header (interrupted checkpoint): SQLite
    # completes it from the WAL, and quick_check runs afterwards anyway.
    wal_pending = wal.exists() and wal.stat().st_size > 0
    if pages and header_size_valid and not wal_pending and size < pages * page_size:
        raise StoreCorruptError(
            "store_corrupt",
            f"queue database {path} is truncated ({size} bytes, header says {pages * page_size}). {RECOVERY_HINT}",
        )


def _make_engine(path: Path, *, max_db_bytes: int | None, busy_timeout_s: float) -> Engine:
    engine = create_engine(
        f"sqlite+pysqlite:///{path}",
        connect_args={"check_same_thread": False, "timeout": busy_timeout_s},
        pool_size=4,
        max_overflow=8,
        pool_pre_ping=False,
    )
    busy_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # Transactions are ours to begin (BEGIN / BEGIN IMMEDIATE), not pysqlite's implicit ones.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            # Freed bytes are zeroed: wiped envelopes do not linger in free pages.
            cur.execute("PRAGMA secure_delete=ON")
            if max_db_bytes is not None:
                page_size = cur.execute("PRAGMA page_size").fetchone()[0]
                cur.execute(f"PRAGMA max_page_count={max(2, max_db_bytes // page_size)}")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN " + conn.get_execution_options().get("sqlite_begin", "DEFERRED"))

    return engine


@functools.cache
def _packaged_head() -> str:
    """The newest packaged revision id, without importing Alembic (~10 MB the daemon would keep resident): each
    migration file is named for its revision id (``NNNN_name.py``, ``revision = "NNNN_name"``), numbered in order."""
    names = sorted(f.stem for f in (MIGRATIONS_DIR / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    return names[-1] if names else ""


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


@functools.cache
def _scripts() -> Any:
    """The packaged migration scripts, loaded once per process (they do not change while it runs)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None
    return head


def _migrate(engine: Engine, path: Path, *, fresh: bool, target: str = "head") -> None:
    """Bring the schema to ``target`` inside one BEGIN IMMEDIATE transaction (all or nothing)."""
    with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
        names = set(conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'").scalars())
        current: list[str] = []
        if "alembic_version" in names:
            current = list(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())
        if not fresh and not current:
            raise StoreCorruptError(
                "not_a_queue",
                f"{path} is an SQLite database but not a smartpos offline queue (no schema version); it was not "
                f"modified. {RECOVERY_HINT}",
            )
        if target == "head" and current == [_packaged_head()]:
            return  # already at head: nothing for Alembic to do, so it is not even imported
        from alembic import command

        cfg = _alembic_config()
        script = _scripts()
        head = script.get_current_head()
        for rev in current:
            try:
                known = script.get_revision(rev)
            except Exception:
                known = None
            if known is None:
                raise SchemaTooNewError(
                    f"queue database {path} has schema revision {rev!r}, newer than this smartpos knows (up to "
                    f"{head!r}). Install the smartpos version that wrote it (or newer); the file was not modified."
                )
        if target == "head" and current == [head]:
            return
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, target)


def _preflight(path: Path, *, integrity_check: bool, busy_timeout_s: float) -> None:
    """Read-only checks with a plain connection before the engine switches the file to WAL (which writes its
    header): a foreign, damaged or too-new file is refused byte-for-byte untouched."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=busy_timeout_s)
    except sqlite3.Error as exc:
        raise _store_error(exc, path) from None
    try:
        if integrity_check:
            result = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
            if result != ["ok"]:
                raise StoreCorruptError(
                    "store_corrupt",
                    f"queue database {path} failed its integrity check ({'; '.join(result[:3])}). {RECOVERY_HINT}",
                )
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        current = (
            [row[0] for row in db.execute("SELECT version_num FROM alembic_version")]
            if "alembic_version" in names
            else []
        )
    except sqlite3.Error as exc:
        raise _store_error(exc, path) from None
    finally:
        db.close()
    if not current:
        raise StoreCorruptError(
            "not_a_queue",
            f"{path} is an SQLite database but not a smartpos offline queue (no schema version); it was not "
            f"modified. {RECOVERY_HINT}",
        )
    if current == [_packaged_head()]:
        return
    script = _scripts()
    for rev in current:
        try:
            known = script.get_revision(rev)
        except Exception:
            known = None
        if known is None:
            raise SchemaTooNewError(
                f"queue database {path} has schema revision {rev!r}, newer than this smartpos knows (up to "
                f"{script.get_current_head()!r}). Install the smartpos version that wrote it (or newer); the file "
                "was not modified."
            )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    for stale in path.parent.glob(f".{path.name}.*.creating*"):
        pid_part = stale.name[len(path.name) + 2 :].split(".", 1)[0]
        try:
            os.kill(int(pid_part), 0)
            continue  # its creator is still running
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _create(path: Path, *, busy_timeout_s: float, target: str = "head") -> None:
    """Build a new queue under a temporary name and link it into place only when complete: a crash during creation
    leaves no half-made file that a later start would have to distrust (or worse, trust)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
    for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    engine = _make_engine(tmp, max_db_bytes=None, busy_timeout_s=busy_timeout_s)
    try:
        _migrate(engine, tmp, fresh=True, target=target)
    except sa_exc.DBAPIError as exc:
        raise _store_error(exc, path) from None
    finally:
        engine.dispose()
    if tmp.with_name(tmp.name + "-wal").exists():
        raise StoreWriteError("store_write", f"could not finish creating {path} (WAL left behind)")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replaces an existing file, unlike rename
    except FileExistsError:
        pass  # another process created it first; use theirs
    finally:
        tmp.unlink()
    _fsync_dir(path.parent)


# --- the store --------------------------------------------------------------------------------------------------


class QueueStore:
    """Open with :meth:`open`; share one instance between threads; :meth:`close` at the end (or use ``with``)."""

    def __init__(self, engine: Engine, db_path: Path, terminal_id: str) -> None:
        self._engine = engine
        self.db_path = db_path
        self.terminal_id = terminal_id
        self._wlock = threading.RLock()
        self._writer: Any = engine.raw_connection()
        # One cursor on the writer's sqlite3 connection for every write transaction (they run one at a time under
        # the lock), rather than a new cursor through the pool's proxy each time.
        self._wcur: sqlite3.Cursor = self._writer.driver_connection.cursor()
        self._closed = False
        self._check_card = _CardCheck()
        # (data_version, open batch, last sequence, last hash) as of this store's last recording commit; valid
        # while PRAGMA data_version says no other connection has committed since (see ``record``).
        self._head: tuple[int, int, int | None, str | None] | None = None

    # -- lifecycle --

    @classmethod
    def open(
        cls,
        db_path: str | Path,
        *,
        terminal_id: str,
        max_db_bytes: int | None = None,
        integrity_check: bool = True,
        busy_timeout_s: float = 5.0,
    ) -> QueueStore:
        """Open (creating if missing) and migrate. Raises ``StoreCorruptError``, ``SchemaTooNewError``,
        ``TerminalMismatchError``; never replaces or empties an existing file."""
        if not isinstance(terminal_id, str) or not 1 <= len(terminal_id) <= 64 or not terminal_id.isprintable():
            raise ValidationError("invalid_terminal_id", "terminal_id must be 1 to 64 printable characters")
        path = Path(db_path)
        if max_db_bytes is not None and (not isinstance(max_db_bytes, int) or max_db_bytes < 16384):
            raise ValidationError("invalid_config", "max_db_bytes must be an integer of at least 16384")
        if not path.exists():
            _create(path, busy_timeout_s=busy_timeout_s)
        else:
            _remove_stale_temps(path)  # a creation killed between link and unlink
        _check_file(path)
        _preflight(path, integrity_check=integrity_check, busy_timeout_s=busy_timeout_s)
        engine = _make_engine(path, max_db_bytes=max_db_bytes, busy_timeout_s=busy_timeout_s)
        try:
            _migrate(engine, path, fresh=False)
            store = cls(engine, path, terminal_id)
            store._prepare(terminal_id)
        except sa_exc.DBAPIError as exc:
            engine.dispose()
            raise _store_error(exc, path) from None
        except BaseException:
            engine.dispose()
            raise
        return store

    def _prepare(self, terminal_id: str) -> None:
        with self._write() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key='terminal_id'").fetchone()
            if row is not None and row[0] != terminal_id:
                if cur.execute("SELECT 1 FROM transactions LIMIT 1").fetchone() is not None:
                    raise TerminalMismatchError(
                        f"queue database {self.db_path} holds transactions of terminal {row[0]!r}, not "
                        f"{terminal_id!r}; sync or move it aside before re-enrolling under a new id"
                    )
            if row is None or row[0] != terminal_id:
                cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('terminal_id', ?)", (terminal_id,))
            if cur.execute("SELECT 1 FROM batches WHERE status='open'").fetchone() is None:
                last = cur.execute("SELECT COALESCE(MAX(number), 0) FROM batches").fetchone()[0]
                last_seq = cur.execute(_LAST_SEQ_SQL).fetchone()[0]
                cur.execute(
                    "INSERT INTO batches (number, status, opened_at, first_sequence) VALUES (?, 'open', ?, ?)",
                    (last + 1, utcnow_iso(), last_seq + 1),
                )

    def close(self) -> None:
        with self._wlock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(Exception):
                self._wcur.close()
            with contextlib.suppress(Exception):
                self._writer.close()
            self._engine.dispose()

    def __enter__(self) -> QueueStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"QueueStore({str(self.db_path)!r}, terminal_id={self.terminal_id!r})"

    # -- plumbing --

    @contextlib.contextmanager
    def _write(self, *, keep_head: bool = False) -> Iterator[sqlite3.Cursor]:
        """One BEGIN IMMEDIATE ... COMMIT on the writer connection; any failure rolls back and is typed.
        Forgets the remembered chain head (see ``record``) unless ``keep_head``: only ``record`` keeps it."""
        with self._wlock:
            if self._closed:
                raise StoreError("store_closed", "the offline queue is closed")
            if not keep_head:
                self._head = None
            cur = self._wcur
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _store_error(exc, self.db_path) from None
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _store_error(exc, self.db_path) from None
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        """A pooled SQLAlchemy connection in one read transaction (a consistent snapshot)."""
        try:
            with self._engine.connect() as conn:
                yield conn
        except sa_exc.DBAPIError as exc:
            raise _store_error(exc, self.db_path) from None

    @contextlib.contextmanager
    def _raw_read(self) -> Iterator[sqlite3.Cursor]:
        try:
            conn = self._engine.raw_connection()
        except sa_exc.DBAPIError as exc:
            raise _store_error(exc, self.db_path) from None
        cur = conn.cursor()
        try:
            cur.execute("BEGIN")
            yield cur
        except sqlite3.Error as exc:
            raise _store_error(exc, self.db_path) from None
        finally:
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")
            cur.close()
            conn.close()

    @staticmethod
    def _txn(row: Any) -> Transaction:
        data = dict(zip(_TXN_COLUMNS, row, strict=True))
        data["wallet"] = bool(data["wallet"])
        data["envelope_present"] = data["envelope"] is not None
        return Transaction.of(data)

    def _one_txn(self, where: str, params: tuple[Any, ...]) -> Transaction | None:
        with self._raw_read() as cur:
            row = cur.execute(f"{_TXN_SELECT} WHERE {where}", params).fetchone()
        return self._txn(row) if row else None

    # -- recording --

    def record(
        self,
        *,
        type: str,
        amount_minor: int | None,
        currency: str | None,
        card: ProtectedCard | None,
        auth: Authorization | dict[str, Any],
        reference: str | None = None,
        idempotency_key: str | None = None,
        payment_id: str | None = None,
        void_of: str | None = None,
    ) -> Transaction:
        """Record one transaction in one atomic, durable commit and return it (see module docstring)."""
        if type not in ("sale", "refund", "void"):
            raise ValidationError("invalid_type", f"type must be sale, refund or void, got {type!r}")
        auth = _check_auth(auth)
        reference = _check_text("reference", reference, 64)
        idempotency_key = _check_text("idempotency_key", idempotency_key, 128, card_check=False)
        payment_id = _check_text("payment_id", payment_id, 64, card_check=False)
        if type == "void":
            if not isinstance(void_of, str) or not void_of:
                raise ValidationError("unknown_transaction", "a void needs void_of: the uuid of the voided transaction")
            if amount_minor is not None:
                validate_amount(amount_minor)
            if currency is not None:
                validate_currency(currency)
            if card is not None:
                self._check_card(card)
        else:
            if void_of is not None:
                raise ValidationError("invalid_type", "void_of is only allowed on a void")
            validate_amount(amount_minor)
            validate_currency(currency)
            card = self._check_card(card)

        # The lock is held past the commit: the chain head _append remembers is dropped again if the commit
        # fails, before any other write can start.
        with self._wlock:
            try:
                with self._write(keep_head=True) as cur:
                    return self._append(cur, type, amount_minor, currency, card, auth, reference, idempotency_key,
                                        payment_id, void_of)
            except BaseException:
                self._head = None
                raise

    def _append(
        self,
        cur: sqlite3.Cursor,
        type: str,
        amount_minor: int | None,
        currency: str | None,
        card: ProtectedCard | None,
        auth: Authorization,
        reference: str | None,
        idempotency_key: str | None,
        payment_id: str | None,
        void_of: str | None,
    ) -> Transaction:
        """The writing half of ``record``, inside its transaction (arguments already checked)."""
        now_ns = time.time_ns()
        txn_uuid = uuid7(now_ns)
        created_at = iso_from_ns(now_ns)
        if idempotency_key is not None:
            row = cur.execute(f"{_TXN_SELECT} WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
            if row is not None:
                return self._txn(row)
        if payment_id is not None:
            prow = cur.execute("SELECT txn_uuid, state FROM payments WHERE id = ?", (payment_id,)).fetchone()
            if prow is None:
                raise ValidationError("unknown_payment", f"no payment {payment_id!r}")
            if prow[0] is not None:
                return self._txn(cur.execute(f"{_TXN_SELECT} WHERE uuid = ?", (prow[0],)).fetchone())
            if prow[1] in _FINAL_PAYMENT_STATES:
                # E.g. cancelled by the cashier while the authorization was in flight: it stays cancelled.
                raise ValidationError("invalid_state", f"payment is already {prow[1]}; nothing recorded")
        # The open batch and the chain head come from memory when nothing but this store's own recordings was
        # committed since they were read: PRAGMA data_version changes with every commit of another connection (in
        # this process or another, e.g. `smartpos sync` beside the daemon), and this store's other writes forget
        # them. Read under the write lock, so nothing can change them before this transaction commits.
        version = cur.execute("PRAGMA data_version").fetchone()[0]
        head, self._head = self._head, None
        if head is not None and head[0] == version:
            batch, last_seq, last_hash = head[1:]
        else:
            batch, last_seq, last_hash = cur.execute(_HEAD_SQL).fetchone()
        sequence, prev_hash = (last_seq + 1, last_hash) if last_seq is not None else self._chain_start(cur)

        if type == "void":
            target = cur.execute(
                "SELECT type, batch, voided_by, amount_minor, currency, net_sign, scheme, masked_pan, pan_last4, "
                "token, aid, label, entry_mode, wallet FROM transactions WHERE uuid = ?",
                (void_of,),
            ).fetchone()
            if target is None:
                raise ValidationError("unknown_transaction", f"no transaction {void_of!r} to void")
            t_type, t_batch, t_voided_by, t_amount, t_currency, t_sign = target[:6]
            if t_type == "void":
                raise ValidationError("cannot_void_void", "a void cannot be voided")
            if t_voided_by is not None:
                raise ValidationError("already_voided", f"transaction {void_of} is already voided")
            if t_batch != batch:
                raise ValidationError(
                    "void_not_allowed", f"transaction {void_of} is in closed batch {t_batch}; refund it instead"
                )
            if amount_minor is not None and amount_minor != t_amount:
                raise ValidationError("invalid_amount", "a void's amount must equal the voided transaction's")
            if currency is not None and currency != t_currency:
                raise ValidationError("invalid_currency", "a void's currency must equal the voided transaction's")
            amount_minor, currency, net_sign = t_amount, t_currency, -t_sign
            scheme, masked_pan, pan_last4, token, aid, label, entry_mode, wallet = target[6:]
            wallet = bool(wallet)
            envelope = envelope_sha256 = None
            atc = tvr = None
        else:
            assert card is not None
            net_sign = 1 if type == "sale" else -1
            scheme, masked_pan, pan_last4, token = card.scheme, card.masked_pan, card.pan_last4, card.token
            aid, label, entry_mode, wallet = card.aid, card.label, card.entry_mode, card.wallet
            envelope, envelope_sha256 = card.envelope, card.envelope_sha256
            atc, tvr = card.atc, card.tvr

        # The chained fields, built in sorted order so that they are their own canonical encoding.
        fields = {
            "aid": aid,
            "amount_minor": amount_minor,
            "auth_code": auth.code,
            "auth_id": auth.auth_id,
            "auth_mode": auth.mode,
            "auth_reason": auth.reason,
            "batch": batch,
            "created_at": created_at,
            "currency": currency,
            "entry_mode": entry_mode,
            "envelope_sha256": envelope_sha256,
            "label": label,
            "masked_pan": masked_pan,
            "pan_last4": pan_last4,
            "reference": reference,
            "scheme": scheme,
            "sequence": sequence,
            "terminal_id": self.terminal_id,
            "token": token,
            "type": type,
            "uuid": txn_uuid,
            "void_of": void_of,
            "wallet": wallet,
        }
        digest = chain_hash_sorted(prev_hash, fields)
        cur.execute(
            _INSERT_SQL,
            (
                sequence, txn_uuid, self.terminal_id, batch, type, created_at, amount_minor, currency, net_sign,
                scheme, masked_pan, pan_last4, token, aid, label, entry_mode, int(wallet), auth.mode, auth.code,
                auth.reason, auth.auth_id, reference, void_of, envelope, envelope_sha256, prev_hash, digest,
                idempotency_key, payment_id, "queued", atc, tvr,
            ),
        )  # fmt: skip
        if type == "void":
            cur.execute("UPDATE transactions SET voided_by = ? WHERE uuid = ?", (txn_uuid, void_of))
        if payment_id is not None:
            cur.execute(
                "UPDATE payments SET state = 'approved', txn_uuid = ?, authorization = ?, error = NULL, "
                "updated_at = ? WHERE id = ?",
                (txn_uuid, _dumps(_auth_dict(auth)), created_at, payment_id),
            )
        self._head = (version, batch, sequence, digest)  # undone by the caller if the commit fails
        fields.update(
        voided_by=None,
        envelope_present=envelope is not None,
        prev_hash=prev_hash,
        hash=digest,
        idempotency_key=idempotency_key,
        payment_id=payment_id,
        sync_state="queued",
        sync_code=None,
        sync_reason=None,
        synced_at=None,
        envelope=envelope,
        atc=atc,
        tvr=tvr,
        )
        return Transaction.of(fields)

    def void(
        self,
        target_uuid: str,
        *,
        auth: Authorization | dict[str, Any] | None = None,
        reference: str | None = None,
        idempotency_key: str | None = None,
        payment_id: str | None = None,
    ) -> Transaction:
        """Void a transaction of the open batch (no card tap needed: card fields are copied from it)."""
        return self.record(
            type="void",
            amount_minor=None,
            currency=None,
            card=None,
            auth=auth or Authorization(mode="offline", reason="void"),
            reference=reference,
            idempotency_key=idempotency_key,
            payment_id=payment_id,
            void_of=target_uuid,
        )

    # -- lookups --

    def transaction(self, uuid: str) -> Transaction | None:
        return self._one_txn("uuid = ?", (uuid,))

    def transaction_by_sequence(self, sequence: int) -> Transaction | None:
        return self._one_txn("sequence = ?", (sequence,))

    def transaction_by_idempotency_key(self, key: str) -> Transaction | None:
        return self._one_txn("idempotency_key = ?", (key,))

    def transaction_for_payment(self, payment_id: str) -> Transaction | None:
        return self._one_txn("uuid = (SELECT txn_uuid FROM payments WHERE id = ?)", (payment_id,))

    def last_transaction(self) -> Transaction | None:
        return self._one_txn("1 ORDER BY sequence DESC LIMIT 1", ())

    def transactions(
        self, *, batch: int | None = None, after_sequence: int = 0, limit: int = 1000
    ) -> list[Transaction]:
        stmt = select(*(t.transactions.c[name] for name in _TXN_COLUMNS)).where(
            t.transactions.c.sequence > after_sequence
        )
        if batch is not None:
            with self._raw_read() as cur:
                first, end = self._batch_range(cur, batch)
            seq = t.transactions.c.sequence
            stmt = stmt.where(seq >= first, seq < end, t.transactions.c.batch == batch)
        stmt = stmt.order_by(t.transactions.c.sequence).limit(limit)
        with self._read() as conn:
            return [self._txn(row) for row in conn.execute(stmt)]

    def wire_rows(self, first_sequence: int = 1, last_sequence: int | None = None) -> list[dict[str, Any]]:
        last = last_sequence if last_sequence is not None else 2**62
        with self._raw_read() as cur:
            rows = cur.execute(
                f"{_WIRE_SELECT} WHERE sequence BETWEEN ? AND ? ORDER BY sequence", (first_sequence, last)
            ).fetchall()
        return [_wire(row) for row in rows]

    @staticmethod
    def _chain_start(cur: sqlite3.Cursor) -> tuple[int, str]:
        """The first sequence of this queue and the hash it chains to: (1, GENESIS), or the base set by
        ``continue_chain``."""
        rows = dict(cur.execute(
            "SELECT key, value FROM meta WHERE key IN ('chain_base_sequence', 'chain_base_hash')"
        ).fetchall())
        if "chain_base_sequence" not in rows:
            return 1, GENESIS
        return int(rows["chain_base_sequence"]) + 1, rows["chain_base_hash"]

    def chain_decided(self) -> bool:
        """Whether this queue's chain has its start: it holds transactions, or ``continue_chain`` set where it
        starts. A new queue without either must not record until head office said where its chain stands."""
        with self._raw_read() as cur:
            return cur.execute(
                "SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'chain_origin') "
                "OR EXISTS (SELECT 1 FROM transactions)"
            ).fetchone()[0] == 1

    def continue_chain(self, sequence: int, chain_hash: str | None, batch: int) -> None:
        """Make this new, empty queue continue a chain head office already holds: the next transaction gets
        ``sequence + 1`` and chains to ``chain_hash``, and the open batch is numbered ``batch + 1`` (0, None, 0: a
        terminal head office holds nothing of yet). For a terminal whose queue was lost or damaged and moved aside:
        without it the new queue would start again at sequence 1 and batch 1, which head office refuses as a
        conflict with what it already has. Marks the chain decided (``chain_decided``) in the same commit."""
        if not isinstance(sequence, int) or isinstance(sequence, bool) or not 0 <= sequence < 2**63 - 1:
            raise ValidationError("invalid_chain", f"chain sequence must be a non-negative integer, got {sequence!r}")
        if not isinstance(batch, int) or isinstance(batch, bool) or not 0 <= batch < 2**63 - 1:
            raise ValidationError("invalid_chain", f"batch number must be a non-negative integer, got {batch!r}")
        if sequence and not is_hash(chain_hash):
            raise ValidationError("invalid_chain", "chain hash must be 64 lower-case hex digits")
        with self._write() as cur:
            if cur.execute("SELECT 1 FROM transactions LIMIT 1").fetchone() is not None:
                raise ValidationError("queue_not_empty", "the queue already holds transactions; its chain is its own")
            if cur.execute("SELECT COUNT(*) FROM batches").fetchone()[0] != 1:
                raise ValidationError("queue_not_empty", "the queue already closed batches; its numbering is its own")
            if sequence:
                cur.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                [("chain_base_sequence", str(sequence)), ("chain_base_hash", chain_hash)])
                cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('sync_floor', ?)", (str(sequence + 1),))
            cur.execute("UPDATE batches SET number = ?, first_sequence = ? WHERE status = 'open'",
                        (batch + 1, sequence + 1))
            cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('chain_origin', ?)",
                        ("head_office" if sequence or batch else "genesis",))

    def verify(self, *, page: int = 5000) -> int:
        """Verify the whole local chain from its first sequence (1, or where ``continue_chain`` made it start);
        returns the last sequence (0, or the base, when empty). Raises ``protocol.chain.ChainError``."""
        with self._raw_read() as cur:
            first, prev = self._chain_start(cur)
        while True:
            rows = self.wire_rows(first, first + page - 1)
            if not rows:
                return first - 1
            prev = verify_chain(rows, prev, start_sequence=first)
            first = rows[-1]["sequence"] + 1

    # -- batches --

    def _batch_from_row(self, row: Any, totals: dict[str, Any] | None = None) -> Batch:
        number, status, opened_at, closed_at, totals_json, hq_status, hq_detail = row
        return Batch(
            number=number,
            status=status,
            opened_at=opened_at,
            closed_at=closed_at,
            totals=totals if totals is not None else (_loads(totals_json) or {}),
            hq_status=hq_status,
            hq_detail=_loads(hq_detail),
        )

    _BATCH_SELECT = "SELECT number, status, opened_at, closed_at, totals, hq_status, hq_detail FROM batches"
    _TOTALS_SELECT = (
        "SELECT uuid, type, scheme, currency, amount_minor, void_of FROM transactions "
        "WHERE sequence >= ? AND sequence < ? AND batch = ?"
    )

    @staticmethod
    def _batch_range(cur: sqlite3.Cursor, number: int) -> tuple[int, int]:
        """[first, end) sequence range of a batch (empty for an unknown batch)."""
        rows = cur.execute(
            "SELECT number, first_sequence FROM batches WHERE number IN (?, ?)", (number, number + 1)
        ).fetchall()
        starts = dict(rows)
        if number not in starts:
            return 0, 0
        return starts[number], starts.get(number + 1, 2**62)

    @staticmethod
    def _totals(cur: sqlite3.Cursor, number: int) -> dict[str, Any]:
        keys = ("uuid", "type", "scheme", "currency", "amount_minor", "void_of")
        first, end = QueueStore._batch_range(cur, number)
        rows = cur.execute(QueueStore._TOTALS_SELECT, (first, end, number)).fetchall()
        return compute_totals(dict(zip(keys, row, strict=True)) for row in rows)

    def open_batch(self) -> Batch:
        with self._raw_read() as cur:
            row = cur.execute(f"{self._BATCH_SELECT} WHERE status = 'open'").fetchone()
            return self._batch_from_row(row, self._totals(cur, row[0]))

    def close_batch(self, expected: int | None = None) -> Batch:
        """Close the open batch with its totals and open the next one, in one commit. ``expected``: close it only
        if it is this batch (a close request sent again must not close the next one), else ``batch_not_open``."""
        now = utcnow_iso()
        with self._write() as cur:
            number = cur.execute("SELECT number FROM batches WHERE status = 'open'").fetchone()[0]
            if expected is not None and expected != number:
                raise ValidationError("batch_not_open", f"batch {expected} is not the open batch (open: {number})")
            totals = self._totals(cur, number)
            cur.execute(
                "UPDATE batches SET status = 'closed', closed_at = ?, totals = ?, hq_status = 'pending' "
                "WHERE number = ?",
                (now, _dumps(totals), number),
            )
            next_seq = cur.execute(_LAST_SEQ_SQL).fetchone()[0] + 1
            cur.execute(
                "INSERT INTO batches (number, status, opened_at, first_sequence) VALUES (?, 'open', ?, ?)",
                (number + 1, now, next_seq),
            )
            row = cur.execute(f"{self._BATCH_SELECT} WHERE number = ?", (number,)).fetchone()
        return self._batch_from_row(row)

    def batch(self, number: int) -> Batch | None:
        with self._raw_read() as cur:
            row = cur.execute(f"{self._BATCH_SELECT} WHERE number = ?", (number,)).fetchone()
            if row is None:
                return None
            return self._batch_from_row(row, self._totals(cur, number) if row[1] == "open" else None)

    def batches(self, *, status: str | None = None, limit: int = 50) -> list[Batch]:
        where, params = ("WHERE status = ?", (status, limit)) if status else ("", (limit,))
        with self._raw_read() as cur:
            rows = cur.execute(f"{self._BATCH_SELECT} {where} ORDER BY number DESC LIMIT ?", params).fetchall()
            return [self._batch_from_row(r, self._totals(cur, r[0]) if r[1] == "open" else None) for r in rows]

    def batches_to_report(self) -> list[Batch]:
        with self._raw_read() as cur:
            rows = cur.execute(
                f"{self._BATCH_SELECT} WHERE status = 'closed' AND hq_status = 'pending' ORDER BY number"
            ).fetchall()
        return [self._batch_from_row(r) for r in rows]

    def mark_batch_reported(self, number: int, hq_status: str, detail: dict[str, Any] | None = None) -> None:
        if hq_status not in ("balanced", "out_of_balance", "pending"):
            raise ValidationError("invalid_state", "hq_status must be balanced, out_of_balance or pending")
        with self._write() as cur:
            cur.execute(
                "UPDATE batches SET hq_status = ?, hq_detail = ? WHERE number = ? AND status = 'closed'",
                (hq_status, _dumps(detail), number),
            )
            if cur.rowcount != 1:
                raise ValidationError("unknown_batch", f"no closed batch {number}")

    # -- risk inputs --

    def risk_stats(self, token: str | None, currency: str, *, now: datetime | None = None) -> RiskStats:
        now = now or datetime.now(UTC)
        since = utcnow_iso(now - timedelta(hours=24))
        with self._raw_read() as cur:
            per_currency = cur.execute(
                "SELECT currency, COUNT(*), COALESCE(SUM(amount_minor), 0) FROM transactions WHERE sequence >= ? "
                f"AND {_UNSYNCED} AND auth_mode = 'offline' AND type IN ('sale', 'refund') AND voided_by IS NULL "
                "GROUP BY currency",
                (self._floor(cur),),
            ).fetchall()
            count_24h, amount_24h = 0, 0
            if token is not None:
                count_24h, amount_24h = cur.execute(
                    "SELECT COUNT(*), COALESCE(SUM(CASE WHEN currency = ? THEN amount_minor ELSE 0 END), 0) "
                    "FROM transactions WHERE token = ? AND created_at >= ? AND type IN ('sale', 'refund') "
                    "AND voided_by IS NULL",
                    (currency, token, since),
                ).fetchone()
            contact = cur.execute("SELECT value FROM meta WHERE key = 'last_contact_at'").fetchone()
        return RiskStats(
            unsynced_offline_count=sum(r[1] for r in per_currency),
            unsynced_offline_amount_minor={r[0]: r[2] for r in per_currency},
            last_contact_at=parse_time(contact[0]) if contact else None,
            card_count_24h=count_24h,
            card_amount_24h_minor=amount_24h,
            now=now,
        )

    def is_denied(self, token: str) -> bool:
        with self._raw_read() as cur:
            return cur.execute("SELECT 1 FROM deny_list WHERE token = ?", (token,)).fetchone() is not None

    # -- sync side --

    def pending_page(self, limit: int = 500, *, after_sequence: int = 0) -> list[dict[str, Any]]:
        """The next ``limit`` wire dicts still to upload (queued or uploaded-but-unanswered), in sequence order."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10000:
            raise ValidationError("invalid_limit", "page limit must be 1 to 10000")
        with self._raw_read() as cur:
            # A range scan on the primary key from the floor: rows below it are done, so the cost of a page does
            # not grow with the number of accepted rows in front of it.
            rows = cur.execute(
                f"{_WIRE_SELECT} WHERE sequence >= ? AND {_UNSYNCED} ORDER BY sequence LIMIT ?",
                (max(self._floor(cur), after_sequence + 1), limit),
            ).fetchall()
        return [_wire(row) for row in rows]

    @staticmethod
    def _floor(cur: sqlite3.Cursor) -> int:
        """Every transaction below this sequence is accepted or rejected (1 when unknown: always true)."""
        row = cur.execute("SELECT value FROM meta WHERE key = 'sync_floor'").fetchone()
        return int(row[0]) if row else 1

    @staticmethod
    def _set_floor(cur: sqlite3.Cursor, floor: int) -> None:
        cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('sync_floor', ?)", (str(floor),))

    def _raise_floor(self, cur: sqlite3.Cursor, done: Iterable[tuple[int, int]] = ()) -> None:
        """Move the floor past rows that are no longer unsynced. ``done``: (first, last) runs in which, within this
        write transaction, every row just became accepted or rejected; the floor jumps over them without reading
        them, then stops at the first unsynced row (normally the very next one)."""
        old = floor = self._floor(cur)
        for first, last in sorted(done):
            if first <= floor <= last:
                floor = last + 1
        row = cur.execute(
            f"SELECT sequence FROM transactions WHERE sequence >= ? AND {_UNSYNCED} ORDER BY sequence LIMIT 1",
            (floor,),
        ).fetchone()
        if row is not None:
            floor = row[0]
        else:
            floor = max(floor, cur.execute(_LAST_SEQ_SQL).fetchone()[0] + 1)
        if floor != old:
            self._set_floor(cur, floor)

    def _set_sync_state(self, sequences: Iterable[int], sql: str, extra: tuple[Any, ...], *, done: bool = False) -> int:
        runs = _runs(sequences)
        changed = 0
        with self._write() as cur:
            for first, last in runs:
                cur.execute(sql, (*extra, first, last))
                changed += cur.rowcount
            if done:
                self._raise_floor(cur, runs)
        return changed

    def mark_uploaded(self, sequences: Iterable[int]) -> int:
        return self._set_sync_state(
            sequences,
            "UPDATE transactions SET sync_state = 'uploaded' WHERE sequence BETWEEN ? AND ? AND sync_state = 'queued'",
            (),
        )

    def mark_accepted(self, sequences: Iterable[int]) -> int:
        """Head office has these: mark accepted and wipe their envelopes (zeroed on disk by secure_delete)."""
        return self._set_sync_state(
            sequences,
            "UPDATE transactions SET sync_state = 'accepted', envelope = NULL, sync_code = NULL, sync_reason = NULL, "
            f"synced_at = ? WHERE sequence BETWEEN ? AND ? AND {_UNSYNCED}",
            (utcnow_iso(),),
            done=True,
        )

    def mark_rejected(self, sequence: int, code: str, reason: str) -> None:
        """Dead-letter one transaction head office refused; the ones behind it keep flowing."""
        code = _check_text("code", code, 64) or "rejected"
        reason = _check_text("reason", reason, 500) or code
        with self._write() as cur:
            cur.execute(
                "UPDATE transactions SET sync_state = 'rejected', sync_code = ?, sync_reason = ?, synced_at = ? "
                "WHERE sequence = ?",
                (code, reason, utcnow_iso(), sequence),
            )
            if cur.rowcount != 1:
                raise ValidationError("unknown_transaction", f"no transaction with sequence {sequence}")
            self._raise_floor(cur, [(sequence, sequence)])

    def rejected(self, limit: int = 100) -> list[Transaction]:
        with self._raw_read() as cur:
            rows = cur.execute(
                f"{_TXN_SELECT} WHERE sync_state = 'rejected' ORDER BY sequence LIMIT ?", (limit,)
            ).fetchall()
        return [self._txn(r) for r in rows]

    def requeue(self, sequence: int) -> None:
        with self._write() as cur:
            cur.execute(
                "UPDATE transactions SET sync_state = 'queued' WHERE sequence = ? AND sync_state = 'rejected'",
                (sequence,),
            )
            if cur.rowcount != 1:
                raise ValidationError("invalid_state", f"transaction {sequence} is not rejected")
            if sequence < self._floor(cur):
                self._set_floor(cur, sequence)

    @classmethod
    def _checkpoint(cls, cur: sqlite3.Cursor) -> int:
        first_pending = cur.execute(
            f"SELECT sequence FROM transactions WHERE sequence >= ? AND {_UNSYNCED} ORDER BY sequence LIMIT 1",
            (cls._floor(cur),),
        ).fetchone()
        if first_pending is not None:
            return first_pending[0] - 1
        return cur.execute(_LAST_SEQ_SQL).fetchone()[0]

    def checkpoint(self) -> int:
        with self._raw_read() as cur:
            return self._checkpoint(cur)

    def stats(self, *, now: datetime | None = None) -> QueueStats:
        now = now or datetime.now(UTC)
        with self._raw_read() as cur:
            floor = self._floor(cur)
            per_currency = cur.execute(
                f"SELECT currency, COUNT(*), COALESCE(SUM(net_sign * amount_minor), 0) FROM transactions "
                f"WHERE sequence >= ? AND {_UNSYNCED} GROUP BY currency",
                (floor,),
            ).fetchall()
            oldest = cur.execute(
                f"SELECT created_at FROM transactions WHERE sequence >= ? AND {_UNSYNCED} ORDER BY sequence LIMIT 1",
                (floor,),
            ).fetchone()
            rejected = cur.execute("SELECT COUNT(*) FROM transactions WHERE sync_state = 'rejected'").fetchone()[0]
            last_seq = cur.execute(_LAST_SEQ_SQL).fetchone()[0]
            checkpoint = self._checkpoint(cur)
            open_batch = cur.execute("SELECT number FROM batches WHERE status = 'open'").fetchone()[0]
            contact = cur.execute("SELECT value FROM meta WHERE key = 'last_contact_at'").fetchone()
        return QueueStats(
            unsynced_count=sum(r[1] for r in per_currency),
            unsynced_amount_minor={r[0]: r[2] for r in per_currency},
            oldest_unsynced_age_s=max(0.0, (now - parse_time(oldest[0])).total_seconds()) if oldest else None,
            rejected_count=rejected,
            last_sequence=last_seq,
            checkpoint=checkpoint,
            open_batch=open_batch,
            last_contact_at=parse_time(contact[0]) if contact else None,
        )

    def hq_envelope_versions(self) -> tuple[int, ...] | None:
        """The sealed-envelope formats head office last said it opens (None: it never said so, e.g. version 0.1)."""
        with self._raw_read() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key = 'hq_envelope_versions'").fetchone()
        value = _loads(row[0]) if row else None
        return tuple(value) if isinstance(value, list) else None

    def save_hq_envelope_versions(self, versions: Iterable[int]) -> None:
        values = sorted({int(v) for v in versions})
        with self._write() as cur:
            cur.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('hq_envelope_versions', ?)", (_dumps(values),)
            )

    def record_contact(self, at: datetime | None = None) -> None:
        with self._write() as cur:
            cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_contact_at', ?)", (utcnow_iso(at),))

    def last_contact(self) -> datetime | None:
        with self._raw_read() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key = 'last_contact_at'").fetchone()
        return parse_time(row[0]) if row else None

    # ----- reversals owed to head office --------------------------------------------------------------------------
    def queue_reversal(self, *, idempotency_key: str, type: str, amount_minor: int, currency: str, reason: str,
                       payment_id: str | None = None) -> bool:
        """Durably owe head office a reversal of the authorization asked for under ``idempotency_key``. Idempotent:
        False when it was already owed (or sent)."""
        _check_text("idempotency_key", idempotency_key, 100)
        if not idempotency_key:
            raise ValidationError("invalid_reversal", "a reversal needs the authorization's idempotency key")
        if type not in ("sale", "refund"):
            raise ValidationError("invalid_reversal", f"only sales and refunds are authorized online, not {type!r}")
        amount_minor = validate_amount(amount_minor)
        currency = validate_currency(currency)
        _check_text("reason", reason, 100)
        now = utcnow_iso()
        with self._write() as cur:
            cur.execute(
                "INSERT OR IGNORE INTO reversals (idempotency_key, payment_id, type, amount_minor, currency, reason, "
                "state, attempts, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
                (idempotency_key, payment_id, type, amount_minor, currency, reason, now, now),
            )
            return bool(cur.rowcount)

    def pending_reversals(self, limit: int = 100) -> list[dict[str, Any]]:
        """Reversals not yet acknowledged by head office, oldest first."""
        with self._raw_read() as cur:
            rows = cur.execute(
                "SELECT idempotency_key, payment_id, type, amount_minor, currency, reason, attempts, created_at "
                "FROM reversals WHERE state = 'pending' ORDER BY created_at LIMIT ?", (int(limit),),
            ).fetchall()
        names = ("idempotency_key", "payment_id", "type", "amount_minor", "currency", "reason", "attempts",
                 "created_at")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def reversal(self, idempotency_key: str) -> dict[str, Any] | None:
        with self._raw_read() as cur:
            row = cur.execute("SELECT state, hq_status, reason, attempts FROM reversals WHERE idempotency_key = ?",
                              (idempotency_key,)).fetchone()
        return None if row is None else dict(zip(("state", "hq_status", "reason", "attempts"), row, strict=True))

    def mark_reversal(self, idempotency_key: str, *, done: bool, hq_status: str | None) -> None:
        """One attempt made: ``done`` when head office answered it (``hq_status`` its answer)."""
        with self._write() as cur:
            cur.execute(
                "UPDATE reversals SET state = CASE WHEN ? THEN 'done' ELSE state END, "
                "hq_status = COALESCE(?, hq_status), attempts = attempts + 1, updated_at = ? "
                "WHERE idempotency_key = ?",
                (1 if done else 0, hq_status, utcnow_iso(), idempotency_key),
            )

    def pending_reversal_count(self) -> int:
        with self._raw_read() as cur:
            return int(cur.execute("SELECT COUNT(*) FROM reversals WHERE state = 'pending'").fetchone()[0])

    def compact(self) -> None:
        """Fold the WAL into the database and truncate it, so wiped envelopes leave the WAL file as well."""
        with self._wlock:
            cur = self._writer.cursor()
            try:
                cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                raise _store_error(exc, self.db_path) from None
            finally:
                cur.close()

    # -- payments --

    _PAYMENT_COLUMNS = (
        "id",
        "idempotency_key",
        "type",
        "amount_minor",
        "currency",
        "reference",
        "mode",
        "void_of",
        "state",
        "card",
        "authorization",
        "error",
        "txn_uuid",
        "created_at",
        "updated_at",
    )

    def _payment(self, row: Any) -> Payment:
        data = dict(zip(self._PAYMENT_COLUMNS, row, strict=True))
        for name in ("card", "authorization", "error"):
            data[name] = _loads(data[name])
        return Payment(**data)

    def _payment_where(self, where: str, params: tuple[Any, ...]) -> list[Payment]:
        cols = ", ".join(f'"{c}"' for c in self._PAYMENT_COLUMNS)
        with self._raw_read() as cur:
            rows = cur.execute(f"SELECT {cols} FROM payments WHERE {where}", params).fetchall()
        return [self._payment(r) for r in rows]

    def create_payment(
        self,
        idempotency_key: str,
        *,
        type: str,
        amount_minor: int | None,
        currency: str | None,
        reference: str | None = None,
        mode: str = "prefer-online",
        void_of: str | None = None,
        payment_id: str | None = None,
    ) -> Payment:
        """Idempotent on ``idempotency_key``: the same key returns the stored payment unchanged."""
        _check_text("idempotency_key", idempotency_key, 128, card_check=False)
        if idempotency_key is None:
            raise ValidationError("invalid_idempotency_key", "an idempotency key is required")
        if type not in ("sale", "refund", "void"):
            raise ValidationError("invalid_type", f"type must be sale, refund or void, got {type!r}")
        if mode not in _PAYMENT_MODES:
            raise ValidationError("invalid_mode", f"mode must be one of {', '.join(_PAYMENT_MODES)}")
        if type == "void":
            if not isinstance(void_of, str) or not void_of:
                raise ValidationError("unknown_transaction", "a void payment needs void_of")
            if amount_minor is not None:
                validate_amount(amount_minor)
            if currency is not None:
                validate_currency(currency)
        else:
            validate_amount(amount_minor)
            validate_currency(currency)
        reference = _check_text("reference", reference, 64)
        pid = _check_text("payment_id", payment_id, 64, card_check=False) or str(uuid_mod.uuid4())
        now = utcnow_iso()
        with self._write() as cur:
            cur.execute(
                "INSERT INTO payments (id, idempotency_key, type, amount_minor, currency, reference, mode, void_of, "
                "state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'waiting_for_card', ?, ?) "
                "ON CONFLICT(idempotency_key) DO NOTHING",
                (pid, idempotency_key, type, amount_minor, currency, reference, mode, void_of, now, now),
            )
        found = self.get_payment_by_key(idempotency_key)
        assert found is not None
        return found

    def set_payment_state(
        self,
        payment_id: str,
        state: str,
        *,
        card: dict[str, Any] | None = None,
        authorization: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> Payment:
        if state not in PAYMENT_STATES:
            raise ValidationError("invalid_state", f"state must be one of {', '.join(PAYMENT_STATES)}")
        if state == "approved":
            raise ValidationError("invalid_state", "a payment becomes approved only through record(payment_id=...)")
        for name, value in (("card", card), ("authorization", authorization), ("error", error)):
            if value is not None and (not isinstance(value, dict) or looks_like_card_data(value)):
                raise ValidationError("card_data_in_payload", f"{name} must be a dict without card data")
        with self._write() as cur:
            row = cur.execute("SELECT state FROM payments WHERE id = ?", (payment_id,)).fetchone()
            if row is None:
                raise ValidationError("unknown_payment", f"no payment {payment_id!r}")
            if row[0] in _FINAL_PAYMENT_STATES and row[0] != state:
                raise ValidationError("invalid_state", f"payment is already {row[0]}")
            cur.execute(
                'UPDATE payments SET state = ?, card = COALESCE(?, card), "authorization" = COALESCE(?, '
                '"authorization"), error = COALESCE(?, error), updated_at = ? WHERE id = ?',
                (state, _dumps(card), _dumps(authorization), _dumps(error), utcnow_iso(), payment_id),
            )
        found = self.get_payment(payment_id)
        assert found is not None
        return found

    def get_payment(self, payment_id: str) -> Payment | None:
        found = self._payment_where("id = ?", (payment_id,))
        return found[0] if found else None

    def get_payment_by_key(self, idempotency_key: str) -> Payment | None:
        found = self._payment_where("idempotency_key = ?", (idempotency_key,))
        return found[0] if found else None

    def payments_in_states(self, states: Iterable[str]) -> list[Payment]:
        wanted = list(states)
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        return self._payment_where(f"state IN ({marks}) ORDER BY created_at", tuple(wanted))

    def latest_payment(self) -> Payment | None:
        found = self._payment_where("1 ORDER BY created_at DESC, rowid DESC LIMIT 1", ())
        return found[0] if found else None

    # -- print jobs --

    _JOB_SELECT = (
        "SELECT id, kind, txn_uuid, request_id, payload, state, attempts, error, created_at, updated_at FROM print_jobs"
    )

    @staticmethod
    def _job(row: Any) -> PrintJob:
        return PrintJob(
            id=row[0],
            kind=row[1],
            txn_uuid=row[2],
            request_id=row[3],
            payload=orjson.loads(row[4]),
            state=row[5],
            attempts=row[6],
            error=row[7],
            created_at=row[8],
            updated_at=row[9],
        )

    def add_print_job(self, kind: str, txn_uuid: str | None, request_id: str, payload: dict[str, Any]) -> PrintJob:
        """Idempotent on ``request_id`` (the same request returns the existing job, whatever its state)."""
        if not isinstance(kind, str) or not _KIND_RE.match(kind):
            raise ValidationError("invalid_print_job", "kind must be a short lower-case name such as 'sale'")
        _check_text("request_id", request_id, 128, card_check=False)
        if request_id is None:
            raise ValidationError("invalid_print_job", "request_id is required")
        if not isinstance(payload, dict):
            raise ValidationError("invalid_print_job", "payload must be a dict")
        try:
            body = orjson.dumps(payload).decode()
        except TypeError as exc:
            raise ValidationError("invalid_print_job", f"payload is not JSON-serializable: {exc}") from None
        # The merchant block (name, address, ids as head office sent them at enrollment) is printed on every receipt
        # and is not card data: a phone number that happens to pass the Luhn check must not stop all printing.
        if looks_like_card_data({k: v for k, v in payload.items() if k != "merchant"}):
            raise ValidationError("card_data_in_payload", "print payloads carry the last 4 digits only, never a PAN")
        now = utcnow_iso()
        with self._write() as cur:
            cur.execute(
                "INSERT INTO print_jobs (kind, txn_uuid, request_id, payload, state, attempts, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'pending', 0, ?, ?) ON CONFLICT(request_id) DO NOTHING",
                (kind, txn_uuid, request_id, body, now, now),
            )
            row = cur.execute(f"{self._JOB_SELECT} WHERE request_id = ?", (request_id,)).fetchone()
        return self._job(row)

    def claim_print_job(self, job_id: int | None = None) -> PrintJob | None:
        """Atomically move the oldest pending job (or job ``job_id`` if pending) to ``sending``."""
        with self._write() as cur:
            if job_id is None:
                row = cur.execute("SELECT id FROM print_jobs WHERE state = 'pending' ORDER BY id LIMIT 1").fetchone()
            else:
                row = cur.execute("SELECT id FROM print_jobs WHERE id = ? AND state = 'pending'", (job_id,)).fetchone()
            if row is None:
                return None
            cur.execute(
                "UPDATE print_jobs SET state = 'sending', attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (utcnow_iso(), row[0]),
            )
            return self._job(cur.execute(f"{self._JOB_SELECT} WHERE id = ?", (row[0],)).fetchone())

    def mark_print_job(self, job_id: int, state: str, error: str | None = None) -> PrintJob:
        if state not in PRINT_STATES:
            raise ValidationError("invalid_state", f"print job state must be one of {', '.join(PRINT_STATES)}")
        if error is not None:
            error = _check_text("error", error[:500], 500)
        with self._write() as cur:
            cur.execute(
                "UPDATE print_jobs SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                (state, error, utcnow_iso(), job_id),
            )
            if cur.rowcount != 1:
                raise ValidationError("unknown_print_job", f"no print job {job_id}")
            return self._job(cur.execute(f"{self._JOB_SELECT} WHERE id = ?", (job_id,)).fetchone())

    def get_print_job(self, job_id: int) -> PrintJob | None:
        with self._raw_read() as cur:
            row = cur.execute(f"{self._JOB_SELECT} WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def print_job_by_request(self, request_id: str) -> PrintJob | None:
        with self._raw_read() as cur:
            row = cur.execute(f"{self._JOB_SELECT} WHERE request_id = ?", (request_id,)).fetchone()
        return self._job(row) if row else None

    def print_jobs(self, states: Iterable[str] | None = None, limit: int = 100, *,
                   newest_first: bool = False) -> list[PrintJob]:
        order = "ORDER BY id DESC" if newest_first else "ORDER BY id"
        with self._raw_read() as cur:
            if states is None:
                rows = cur.execute(f"{self._JOB_SELECT} {order} LIMIT ?", (limit,)).fetchall()
            else:
                wanted = list(states)
                marks = ", ".join("?" * len(wanted)) or "NULL"
                rows = cur.execute(
                    f"{self._JOB_SELECT} WHERE state IN ({marks}) {order} LIMIT ?", (*wanted, limit)
                ).fetchall()
        return [self._job(r) for r in rows]

    def prune_print_jobs(self, older_than_s: float) -> int:
        """Delete the finished print jobs (printed, failed, unknown) last changed more than ``older_than_s`` ago;
        how many. Each holds a whole receipt: kept for ever they grew the queue by a few KiB per sale. A receipt is
        reprinted from its transaction, which stays. In commits of ``PRUNE_CHUNK`` jobs: the first prune after
        months must not hold the write lock (payments waiting behind it) for one long delete."""
        before = utcnow_iso(datetime.now(UTC) - timedelta(seconds=older_than_s))
        removed = 0
        while True:
            with self._write() as cur:
                cur.execute(
                    # The newest job always stays: SQLite gives a new row max(id) + 1, so no id is used twice.
                    "DELETE FROM print_jobs WHERE id IN (SELECT id FROM print_jobs WHERE state IN "
                    "('printed', 'failed', 'unknown') AND updated_at < ? AND id < (SELECT max(id) FROM print_jobs) "
                    "ORDER BY id LIMIT ?)", (before, PRUNE_CHUNK))
                count = int(cur.rowcount)
            removed += count
            if count < PRUNE_CHUNK:
                return removed
            time.sleep(0.01)  # let a waiting payment write in between

    def print_jobs_for_txn(self, txn_uuid: str) -> list[PrintJob]:
        with self._raw_read() as cur:
            rows = cur.execute(f"{self._JOB_SELECT} WHERE txn_uuid = ? ORDER BY id", (txn_uuid,)).fetchall()
        return [self._job(r) for r in rows]

    # -- parameters, deny list, counters --

    def save_parameters(self, version: int, parameters: dict[str, Any], deny_list: Iterable[str]) -> None:
        """Replace the stored parameters and the whole deny list in one commit."""
        if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**63:
            raise ValidationError("invalid_parameters", "parameters version must be an integer from 0 to 2^63-1")
        if not isinstance(parameters, dict):
            raise ValidationError("invalid_parameters", "parameters must be a dict")
        tokens = list(dict.fromkeys(deny_list))
        bad = [tok for tok in tokens if not is_token(tok)]
        if bad:
            raise ValidationError("invalid_parameters", f"{len(bad)} deny-list entries are not 64-hex card tokens")
        with self._write() as cur:
            cur.execute(
                "INSERT OR REPLACE INTO parameters (id, version, body, updated_at) VALUES (1, ?, ?, ?)",
                (version, _dumps(parameters), utcnow_iso()),
            )
            cur.execute("DELETE FROM deny_list")
            cur.executemany("INSERT INTO deny_list (token) VALUES (?)", [(tok,) for tok in tokens])

    def parameters(self) -> StoredParameters | None:
        with self._raw_read() as cur:
            row = cur.execute("SELECT version, body, updated_at FROM parameters WHERE id = 1").fetchone()
            count = cur.execute("SELECT COUNT(*) FROM deny_list").fetchone()[0]
        if row is None:
            return None
        return StoredParameters(version=row[0], parameters=orjson.loads(row[1]), deny_count=count, updated_at=row[2])

    def increment_counter(self, name: str, by: int = 1) -> int:
        _check_text("counter", name, 64, card_check=False)
        if isinstance(by, bool) or not isinstance(by, int):
            raise ValidationError("invalid_counter", "counter increments are integers")
        with self._write() as cur:
            return cur.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value RETURNING value",
                (name, by),
            ).fetchone()[0]

    def counters(self) -> dict[str, int]:
        with self._raw_read() as cur:
            return dict(cur.execute("SELECT name, value FROM counters ORDER BY name").fetchall())


def _wire(row: Any) -> dict[str, Any]:
    data = dict(zip(WIRE_FIELDS, row, strict=True))
    data["wallet"] = bool(data["wallet"])
    return data


def _auth_dict(auth: Authorization) -> dict[str, Any]:
    return {"mode": auth.mode, "code": auth.code, "reason": auth.reason, "auth_id": auth.auth_id,
            "fallback": auth.fallback}
