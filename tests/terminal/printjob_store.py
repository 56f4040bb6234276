"""The offline queue's store for print-job tests: the real ``QueueStore`` (SQLite) when it is importable;
until then a minimal in-memory stand-in with the same published methods (queue-api.md), so the spooler's
logic is exercised either way. Tests needing durability across a restart use only the real store."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

try:
    from offline_queue.store import QueueStore
except ImportError:  # [queue] not landed yet
    QueueStore = None  # type: ignore[assignment,misc]


@dataclass(frozen=True)
class _Job:
    id: int
    kind: str
    txn_uuid: str | None
    request_id: str
    payload: dict[str, Any]
    state: str
    attempts: int
    error: str | None


class MemoryJobStore:
    def __init__(self) -> None:
        self._jobs: dict[int, _Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add_print_job(self, kind, txn_uuid, request_id, payload):
        with self._lock:
            for job in self._jobs.values():
                if job.request_id == request_id:
                    return job
            job = _Job(next(self._ids), kind, txn_uuid, request_id, payload, "pending", 0, None)
            self._jobs[job.id] = job
            return job

    def claim_print_job(self, job_id=None):
        with self._lock:
            for job in sorted(self._jobs.values(), key=lambda j: j.id):
                if job.state == "pending" and job_id in (None, job.id):
                    job = self._jobs[job.id] = replace(job, state="sending", attempts=job.attempts + 1)
                    return job
            return None

    def mark_print_job(self, job_id, state, error=None):
        with self._lock:
            job = self._jobs[job_id] = replace(self._jobs[job_id], state=state, error=error)
            return job

    def get_print_job(self, job_id):
        return self._jobs.get(job_id)

    def print_jobs(self, states=None, limit=100):
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.id)
        return [j for j in jobs if states is None or j.state in set(states)][:limit]

    def print_jobs_for_txn(self, txn_uuid):
        return [j for j in self.print_jobs() if j.txn_uuid == txn_uuid]

    def close(self) -> None:
        pass


def open_store(path: Path):
    if QueueStore is None:
        return MemoryJobStore()
    return QueueStore.open(path / "queue.db", terminal_id="T-0001")


def require_real_store() -> None:
    if QueueStore is None:
        pytest.skip("offline_queue.store is not available yet")
