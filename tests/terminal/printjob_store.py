"""The offline queue's real store (SQLite, Alembic-migrated) for print-job tests."""

from __future__ import annotations

from pathlib import Path

from offline_queue.store import QueueStore


def open_store(path: Path) -> QueueStore:
    return QueueStore.open(path / "queue.db", terminal_id="T-0001")
