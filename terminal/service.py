"""systemd integration: READY/STOPPING/STATUS notifications and a watchdog that pings only while healthy.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op, so the daemon runs the same in a shell.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger("smartpos.service")


class Notifier:
    def __init__(self) -> None:
        self._socket = os.environ.get("NOTIFY_SOCKET")
        self._notifier = None
        if self._socket:
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()

    @property
    def active(self) -> bool:
        return self._notifier is not None

    def send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)

    def ready(self, status: str = "") -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """Half of ``WATCHDOG_USEC`` when systemd asked for a watchdog on this very process, else None."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 1e6 / 2, 0.05)
    except ValueError:
        return None


class Watchdog:
    """Sends WATCHDOG=1 every half period while ``problem()`` finds none (returns None); a hung worker stops the
    pings and systemd restarts the service. Each problem is logged with what it is."""

    def __init__(self, notifier: Notifier, problem: Callable[[], str | None], interval_s: float | None = None) -> None:
        self._notifier = notifier
        self._problem = problem
        self._interval = interval_s if interval_s is not None else watchdog_interval_s()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self._interval or not self._notifier.active:
            return
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._interval is not None
        while not self._stop.wait(self._interval):
            try:
                problem = self._problem()
            except Exception as exc:  # a check that fails is a problem, never the end of the watchdog thread
                problem = f"health check failed: {type(exc).__name__}"
            if problem is None:
                self._notifier.send("WATCHDOG=1")
            else:
                log.warning("watchdog.unhealthy", extra={"problem": problem})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
