"""The ``CardReader`` protocol and ``MultiReader``: wait on several reader stacks (PC/SC, nfcpy) at once."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from drivers.cardread import CardRead, OnDetected
from drivers.emv import TerminalData
from drivers.errors import READ_GRACE_S, CardError, ReaderUnavailableError, ReadTimeout

log = logging.getLogger(__name__)


class CardReader(Protocol):
    name: str

    def wait_for_card(self, td: TerminalData, *, timeout: float, cancel: threading.Event,
                      on_detected: OnDetected | None = None) -> CardRead:
        """The next card read. ``ReadTimeout`` on timeout (code ``timeout``) or cancel (code ``cancelled``);
        other ``CardError`` subclasses on bad reads; never another exception type. ``on_detected(reader name)`` is
        called (from the reader's own thread) when a card is sensed and its read starts, so the cashier's screen
        can say "reading, hold the card" for the read's duration; it must return quickly and not raise."""
        ...

    def status(self) -> dict: ...

    def close(self) -> None: ...


class MultiReader:
    """Waits on every reader in parallel; the first card read (or bad read) wins and the others are cancelled.

    A bad read (``CardError`` other than a timeout) is returned at once: the customer tapped and must hear
    about it. If two cards arrive at the same instant on two readers, only the first is reported. A stack that is
    unavailable (``ReaderUnavailableError``: pcscd down, device unplugged) does not end the others' waits: a card on
    a working reader is still read; only when every stack is unavailable is that raised.
    """

    def __init__(self, readers: Sequence[CardReader]) -> None:
        if not readers:
            raise ValueError("MultiReader needs at least one reader")
        self.readers = list(readers)
        self.name = "+".join(r.name for r in self.readers)

    def wait_for_card(self, td: TerminalData, *, timeout: float, cancel: threading.Event | None = None,
                      on_detected: OnDetected | None = None) -> CardRead:
        cancel = cancel or threading.Event()
        if len(self.readers) == 1:
            return self.readers[0].wait_for_card(td, timeout=timeout, cancel=cancel, on_detected=on_detected)
        inner = threading.Event()
        results: queue.Queue[tuple[CardRead | None, CardError | None]] = queue.Queue()

        def run(reader: CardReader) -> None:
            try:
                results.put((reader.wait_for_card(td, timeout=timeout, cancel=inner, on_detected=on_detected), None))
            except CardError as exc:
                results.put((None, exc))
            except Exception as exc:  # a reader breaking its contract must not take the others down
                log.exception("reader %s raised outside its contract", reader.name)
                results.put((None, ReaderUnavailableError(f"reader {reader.name} failed")))
                del exc

        threads = [threading.Thread(target=run, args=(r,), name=f"wait-{r.name}", daemon=True) for r in self.readers]
        for t in threads:
            t.start()
        pending = len(threads)
        unavailable: list[ReaderUnavailableError] = []
        # Only a safety net: each stack ends its own wait at the timeout, or once a read under way when it ran out
        # is done (READ_GRACE_S). Cut shorter, such a read would be cancelled, its tap spent and lost.
        deadline = time.monotonic() + timeout + READ_GRACE_S + 2.0
        try:
            while pending:
                if cancel.is_set():
                    inner.set()
                try:
                    read, error = results.get(timeout=0.05)
                except queue.Empty:
                    if time.monotonic() > deadline:
                        break
                    continue
                pending -= 1
                if read is not None:
                    return read
                if isinstance(error, ReaderUnavailableError):
                    unavailable.append(error)
                    if len(unavailable) == len(threads):
                        raise unavailable[0]
                    continue  # the other stacks go on waiting for a card
                if error is not None and not isinstance(error, ReadTimeout):
                    raise error
        finally:
            inner.set()
            for t in threads:
                t.join(2.0)
        if cancel.is_set():
            raise ReadTimeout("card read cancelled", code="cancelled")
        raise ReadTimeout(f"no card presented within {timeout:g} s")

    def status(self) -> dict:
        statuses = []
        for r in self.readers:
            try:
                statuses.append(r.status())
            except Exception:
                statuses.append({"name": r.name, "state": "error", "detail": "status unavailable"})
        states = {s.get("state") for s in statuses}
        state = next((s for s in ("card_present", "ready", "error", "unavailable", "unknown") if s in states),
                     "absent")
        return {"name": self.name, "stack": "multi", "state": state, "detail": f"{len(statuses)} reader stacks",
                "readers": statuses}  # fmt: skip

    def close(self) -> None:
        for r in self.readers:
            try:
                r.close()
            except Exception:
                log.exception("closing reader %s failed", r.name)
