"""Typed errors of the offline queue. ``code`` is machine-readable; messages never contain card data.

Bad input to the public API raises ``protocol.errors.ValidationError`` instead (the caller's mistake, not the
store's): the daemon answers it with a 4xx, while a ``StoreError`` means "decline or fail the payment, nothing was
recorded".
"""

from __future__ import annotations

RECOVERY_HINT = (
    "Recovery: stop smartpos, move the database file and its -wal/-shm files aside (keep them: unsynced "
    "transactions can often be salvaged with `sqlite3 OLD.sqlite .dump | sqlite3 salvaged.sqlite`), then start "
    "smartpos again with head office reachable: the new queue continues this terminal's sequence and batch numbers "
    "from head office's record. See docs/offline-queue.md, 'Recovering the offline queue'."
)


class StoreError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StoreFullError(StoreError):
    """The disk (or the configured size cap) is full. Nothing was written; the store works again once space
    returns."""

    def __init__(self, message: str = "the offline queue is full (disk or size cap); nothing was recorded") -> None:
        super().__init__("store_full", message)


class StoreWriteError(StoreError):
    """A write failed (I/O error, or the database stayed locked past the busy timeout). Nothing was written."""


class StoreCorruptError(StoreError):
    """The database file is damaged or is not a smartpos queue. The store refuses it and never writes over it."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer smartpos than this one."""

    def __init__(self, message: str) -> None:
        super().__init__("schema_too_new", message)


class TerminalMismatchError(StoreError):
    """The database holds transactions recorded under another terminal id."""

    def __init__(self, message: str) -> None:
        super().__init__("terminal_mismatch", message)
