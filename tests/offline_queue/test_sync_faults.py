"""Exactly-once under faults: a misbehaving network, a terminal killed mid-sync, head office killed mid-ingest.
PostgreSQL (the production back end) over real HTTP."""

from __future__ import annotations

import random
import signal
import sys
import time
from pathlib import Path

import httpx

from offline_queue.sync import SyncEngine
from tests.harness.faultproxy import FaultProxy
from tests.harness.headoffice import HQ, TerminalEnv, wait_until_rows
from tests.harness.procs import ProcessGroup

SMARTPOS = str(Path(sys.executable).with_name("smartpos"))


def test_ten_thousand_through_a_faulty_network_arrive_exactly_once(hq_pg: HQ, tmp_path: Path):
    terminal = TerminalEnv.enroll(hq_pg, tmp_path)
    total = terminal.record(10_000)
    host, port = "127.0.0.1", hq_pg.port
    with FaultProxy((host, port), reset_rate=0.1, delay_rate=0.1, cut_rate=0.15, seed=11) as proxy:
        # One connection per request, so every request meets the proxy's dice (a kept-alive one would not).
        one_shot = httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
        with terminal.store() as store, terminal.client(proxy.url, timeout=10.0, transport=one_shot) as client:
            engine = SyncEngine(store, client, page_size=250, backoff_base_s=0.01, backoff_max_s=0.1,
                                rng=random.Random(5))
            result = engine.run_once(wait=True)
            assert result.ok, result.error
            assert store.stats().unsynced_count == 0 and store.checkpoint() == 10_000
            assert store.rejected() == []
    assert proxy.stats["reset"] > 0 and proxy.stats["cut_done"] > 0 and proxy.stats["delay"] > 0
    assert result.retries > 0 and result.duplicates > 0  # cut answers really were re-sent and acknowledged again
    assert terminal.hq_rows() == (10_000, 10_000, total)


def _sync_proc(group: ProcessGroup, terminal: TerminalEnv, name: str):
    return group.spawn([SMARTPOS, "sync", "--wait", "--json", "--page-size", "100", "--config", str(terminal.config)],
                       name=name)


def test_terminal_killed_during_sync_repeatedly_then_exactly_once(hq_pg: HQ, tmp_path: Path, procs: ProcessGroup):
    terminal = TerminalEnv.enroll(hq_pg, tmp_path)
    total = terminal.record(4000)
    rng = random.Random(21)
    seen = 0
    kills = 0
    while kills < 4 and seen < 3000:
        proc = _sync_proc(procs, terminal, f"sync-{kills}")
        seen = wait_until_rows(terminal, more_than=seen, timeout=30)
        time.sleep(rng.uniform(0.0, 0.1))
        ProcessGroup.stop(proc, sig=signal.SIGKILL)
        kills += 1
        seen = terminal.hq_rows()[0]
    assert kills >= 2 and seen < 4000, f"{kills} kills, {seen} rows: the kills should land mid-sync"
    final = _sync_proc(procs, terminal, "sync-final")
    assert final.wait(60) == 0, procs.log_text("sync-final")
    assert terminal.hq_rows() == (4000, 4000, total)
    with terminal.store() as store:
        assert store.stats().unsynced_count == 0 and store.rejected() == []


def test_head_office_killed_mid_ingest_then_exactly_once(hq_pg: HQ, tmp_path: Path):
    import threading

    terminal = TerminalEnv.enroll(hq_pg, tmp_path)
    total = terminal.record(4000)
    box = {}
    with terminal.store() as store, terminal.client(timeout=10.0) as client:
        engine = SyncEngine(store, client, page_size=100, backoff_base_s=0.05, backoff_max_s=0.5,
                            rng=random.Random(9))
        worker = threading.Thread(target=lambda: box.setdefault("result", engine.run_once(wait=True)))
        worker.start()
        at_kill = []
        for _round in range(2):
            wait_until_rows(terminal, more_than=terminal.hq_rows()[0], timeout=30)
            hq_pg.stop(kill=True)
            at_kill.append(terminal.hq_rows()[0])
            time.sleep(0.3)  # the terminal meets a dead head office and backs off
            hq_pg.start()
        worker.join(90)
        assert not worker.is_alive()
        result = box["result"]
        assert result.ok and result.retries > 0, result.error
        assert store.stats().unsynced_count == 0 and store.rejected() == []
    assert at_kill[0] < 4000, "head office should be killed while the terminal is still uploading"
    assert terminal.hq_rows() == (4000, 4000, total)
