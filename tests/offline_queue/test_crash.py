"""Write-ahead under SIGKILL: a child process records sales (and some voids) and is killed at random moments,
including while it creates or migrates the database. After every kill the store opens, the chain verifies from
sequence 1 with no gaps, and every sale the child reported as committed is there."""

from __future__ import annotations

import os
import random
import select
import signal
import time

from offline_queue.store import QueueStore
from tests.harness.queue import FakeEmvRead

KILLS = 110


def _child(path, protection, report_fd: int) -> None:  # pragma: no cover - runs in the forked child
    try:
        store = QueueStore.open(path, terminal_id="T-CRASH")
        card = FakeEmvRead()
        previous = None
        n = 0
        while True:
            n += 1
            if previous is not None and n % 7 == 0:
                txn = store.void(previous)
                previous = None
            else:
                txn = store.record(
                    type="sale",
                    amount_minor=100 + n,
                    currency="EUR",
                    card=protection.protect(card),
                    auth={"mode": "offline"},
                    idempotency_key=f"{os.getpid()}-{n}",
                )
                previous = txn.uuid
            # Reported only after record() returned: the parent may hold us to it.
            os.write(report_fd, f"{txn.sequence} {txn.uuid}\n".encode())
    finally:
        os._exit(3)


def _drain(fd: int) -> bytes:
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            break
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def test_sigkill_at_random_moments_never_loses_a_reported_sale_or_leaves_a_gap(queue_path, card_protection):
    rng = random.Random(20261123)
    reported: dict[int, str] = {}
    kills_mid_work = 0
    for round_no in range(KILLS):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(read_fd)
            _child(queue_path, card_protection, write_fd)
        os.close(write_fd)
        early = b""
        if round_no % 5 == 0:
            # Early kills land in open / create / migrate.
            time.sleep(rng.choice([0.0, 0.002, 0.01, 0.03]))
        else:
            # Once the child is recording, kill it a random moment later: mid-commit, mid-fsync, between sales.
            ready, _, _ = select.select([read_fd], [], [], 10.0)
            assert ready, "child never recorded a sale"
            early = os.read(read_fd, 65536)
            time.sleep(rng.uniform(0.0, 0.02))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), f"child ended by itself (status {status}) instead of being killed"
        data = early + _drain(read_fd)
        os.close(read_fd)
        lines = data.split(b"\n")[:-1]  # a line cut by the kill is not a report
        for line in lines:
            seq, uuid = line.decode().split()
            reported[int(seq)] = uuid
        kills_mid_work += bool(lines)

        with QueueStore.open(queue_path, terminal_id="T-CRASH") as store:
            last = store.verify()  # whole chain, from sequence 1, contiguous
            assert store.stats().last_sequence == last
            for seq, uuid in reported.items():
                txn = store.transaction_by_sequence(seq)
                assert txn is not None and txn.uuid == uuid, f"reported sale {seq} lost after kill {round_no}"
            assert store.open_batch().status == "open"
    assert list(queue_path.parent.glob(".*creating*")) == []  # no half-made queue left from a killed creation
    assert kills_mid_work >= KILLS * 3 // 4  # most kills really interrupted a recording loop
    assert len(reported) > KILLS
