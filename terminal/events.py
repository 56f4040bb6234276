"""Payment state changes fanned out to server-sent-event listeners.

The payment worker publishes from its own thread; each listener is an asyncio queue on the API's event loop,
fed with ``call_soon_threadsafe`` so the worker never waits on a slow front end.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any


class PaymentEvents:
    def __init__(self, max_backlog: int = 64) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]]] = {}
        self._max_backlog = max_backlog

    def publish(self, payment_id: str, payment: dict[str, Any]) -> None:
        with self._lock:
            listeners = list(self._listeners.get(payment_id, ()))
        for loop, queue in listeners:
            try:
                loop.call_soon_threadsafe(_offer, queue, payment)
            except RuntimeError:  # that listener's loop is gone (shutdown)
                pass

    @asynccontextmanager
    async def listen(self, payment_id: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._max_backlog)
        entry = (asyncio.get_running_loop(), queue)
        with self._lock:
            self._listeners.setdefault(payment_id, []).append(entry)
        try:
            yield queue
        finally:
            with self._lock:
                remaining = [e for e in self._listeners.get(payment_id, []) if e is not entry]
                if remaining:
                    self._listeners[payment_id] = remaining
                else:
                    self._listeners.pop(payment_id, None)

    def listener_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._listeners.values())


def _offer(queue: asyncio.Queue[dict[str, Any]], payment: dict[str, Any]) -> None:
    # A listener that stopped reading loses old intermediate states, never the latest one.
    while queue.full():
        queue.get_nowait()
    queue.put_nowait(payment)
