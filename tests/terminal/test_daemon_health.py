"""What the systemd watchdog is told: the daemon's health checks (pure logic over its parts' liveness)."""

import threading
import time

from config.settings import Settings
from terminal.daemon import Daemon


class Worker:
    def __init__(self) -> None:
        self.heartbeat = time.monotonic()
        self.running = True

    def alive(self) -> bool:
        return self.running


class Spooler:
    running = True

    def alive(self) -> bool:
        return self.running


def daemon_with(worker: Worker, spooler: Spooler | None = None) -> Daemon:
    daemon = Daemon(Settings())
    daemon.flow = worker
    daemon.spooler = spooler
    return daemon


def test_healthy_when_every_part_runs():
    daemon = daemon_with(Worker(), Spooler())
    assert daemon.health_problem() is None and daemon.healthy()


def test_a_worker_stuck_in_one_payment_step_beyond_every_bound_is_unhealthy():
    worker = Worker()
    daemon = daemon_with(worker)
    s = Settings()
    bounds = s.payments.card_timeout_s + 2 * s.payments.online_timeout_s + 2 * s.headoffice.timeout_s
    worker.heartbeat = time.monotonic() - bounds  # a long but bounded step: still healthy
    assert daemon.health_problem() is None
    worker.heartbeat = time.monotonic() - bounds - 61
    assert daemon.health_problem().startswith("payment worker stuck for ")
    assert not daemon.healthy()


def test_a_dead_worker_spooler_or_sync_thread_is_unhealthy_and_named():
    worker, spooler = Worker(), Spooler()
    daemon = daemon_with(worker, spooler)
    spooler.running = False
    assert daemon.health_problem() == "print spooler not running"
    spooler.running = True
    daemon._sync_thread = threading.Thread(target=lambda: None)
    daemon._sync_thread.start()
    daemon._sync_thread.join()
    assert daemon.health_problem() == "sync not running"
    daemon._stop_sync.set()  # stopping: the sync thread ended on purpose
    assert daemon.health_problem() is None
    worker.running = False
    assert daemon.health_problem() == "payment worker not running"


def test_a_stalled_api_loop_is_unhealthy():
    daemon = daemon_with(Worker())
    daemon.loop_heartbeat = time.monotonic() - 11
    assert daemon.health_problem() == "api event loop stalled"
