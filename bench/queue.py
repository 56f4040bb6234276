"""Benchmark: the durable offline queue, in one run on one disk, all at WAL + synchronous=FULL.

1. Durable record rate: one sale per commit through ``CardProtection.protect`` (HMAC token, sealed AES-GCM
   envelope) + ``QueueStore.record`` (sequence, hash chain, one fsynced commit).
   Against, taken in turns one write each so machine noise hits all of them alike (ratios are the median of the
   per-round ratios, each from back-to-back measurements):
   - raw stdlib ``sqlite3`` inserting one row of the same size (the wire JSON of a recorded sale) per commit;
   - persist-queue's ``SQLiteAckQueue.put`` of the same dict (its connection set to synchronous=FULL too);
   - persist-queue doing the same work: the caller protects the card, builds and chains the transaction, then
     ``put`` s it (``PersistQueueSameWork``): what picking persist-queue instead would cost under the same rules;
   - the SQL alone (``SqlFloor``): the four statements ``record()`` sends for a sale, with the row's values made
     in advance. What this schema's durable write costs with no work around it: the ceiling of any implementation
     of the queue, in any language, against which ``put`` can be compared.
2. Drain of a 100,000-transaction backlog: ``pending_page(500)`` -> ``orjson.dumps`` (the upload body) ->
   ``mark_accepted`` (one durable commit per page, envelopes wiped with secure_delete). Per-page cost compared
   between the first and last fifth of the pages (medians) to show it stays flat as the backlog drains.
   The backlog is filled through the same ``record()`` with synchronous=OFF to save time; only the drain is timed,
   at FULL.

Run:  .venv/bin/python bench/queue.py [--rounds 15] [--warmup-rounds 5] [--per-round 150] [--backlog 100000]
      [--dir DIR]
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from offline_queue.cardprotect import CardProtection
from offline_queue.store import _INSERT_COLUMNS, _INSERT_SQL, QueueStore, utcnow_iso
from protocol.chain import GENESIS, chain_hash
from protocol.envelope import generate_keypair
from protocol.ids import uuid7


@dataclass(frozen=True)
class BenchCard:
    """Shaped like drivers.cardread.EmvCardRead (test PAN)."""

    pan: str = "4111111111111111"
    scheme: str = "visa"
    expiry: str = "2812"
    track2: str = "4111111111111111D28122010000012300000F"
    cryptogram: dict = field(
        default_factory=lambda: {
            "9F26": "1A2B3C4D5E6F7081", "9F27": "80", "9F10": "06011203A00000", "9F36": "0042", "9F37": "A1B2C3D4",
            "95": "0000000000", "9A": "261123", "9C": "00", "5F2A": "0978", "9F02": "000000001250", "82": "2000",
        }
    )  # fmt: skip
    aid: str = "A0000000031010"
    label: str = "VISA CREDIT"
    atc: int = 66
    entry_mode: str = "contactless"
    wallet: bool = False
    kind: str = "emv"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def fresh(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(str(path) + suffix)
        except FileNotFoundError:
            pass


class PersistQueueSameWork:
    """What a user who picked persist-queue would still have to do for each sale under the card-data rules and the
    hash chain: protect the card (token + sealed envelope), build the transaction, chain it to the previous one
    (sequence and hash kept in memory), then ``put`` it. No checks of the input, no batch, no indexes."""

    def __init__(self, queue, protection: CardProtection) -> None:
        self.queue = queue
        self.protection = protection
        self.sequence = 0
        self.prev = GENESIS

    def record(self, card: BenchCard, amount_minor: int, reference: str) -> None:
        protected = self.protection.protect(card)
        self.sequence += 1
        wire = {
            "uuid": uuid7(), "terminal_id": "T-BENCH", "sequence": self.sequence, "batch": 1, "type": "sale",
            "created_at": utcnow_iso(), "amount_minor": amount_minor, "currency": "EUR", "scheme": protected.scheme,
            "masked_pan": protected.masked_pan, "pan_last4": protected.pan_last4, "token": protected.token,
            "aid": protected.aid, "label": protected.label, "entry_mode": protected.entry_mode,
            "wallet": protected.wallet, "auth_mode": "offline", "auth_code": None, "auth_reason": None,
            "auth_id": None, "reference": reference, "void_of": None, "envelope_sha256": protected.envelope_sha256,
        }  # fmt: skip
        wire["prev_hash"] = self.prev
        wire["hash"] = self.prev = chain_hash(self.prev, wire)
        wire["envelope"] = protected.envelope
        self.queue.put(wire)


class SqlFloor:
    """The statements ``record()`` sends for a sale (BEGIN IMMEDIATE, PRAGMA data_version, the INSERT, COMMIT) on a
    store of its own, each row's values (a copy of a recorded sale, with its own sequence and UUID) made in advance:
    the cost of this schema's indexes, row size and durable commit, with no Python work around them."""

    def __init__(self, store: QueueStore, count: int) -> None:
        self.cur = store._wcur  # bench-only: the store's writer cursor, as record() uses it
        columns = ", ".join(_INSERT_COLUMNS)
        sample = self.cur.execute(f"SELECT {columns} FROM transactions ORDER BY sequence DESC LIMIT 1").fetchone()
        at_seq, at_uuid = _INSERT_COLUMNS.index("sequence"), _INSERT_COLUMNS.index("uuid")
        self.rows = []
        for i in range(count, 0, -1):  # popped from the end: in sequence order
            values = list(sample)
            values[at_seq], values[at_uuid] = sample[at_seq] + i, uuid7()
            self.rows.append(tuple(values))

    def write(self) -> None:
        cur, values = self.cur, self.rows.pop()
        cur.execute("BEGIN IMMEDIATE")
        cur.execute("PRAGMA data_version").fetchone()
        cur.execute(_INSERT_SQL, values)
        cur.execute("COMMIT")


def interleaved_round(store: QueueStore, protection: CardProtection, raw: sqlite3.Connection, row: bytes, queue,
                      item: dict, same_work: PersistQueueSameWork, floor: SqlFloor, n: int,
                      latencies: list[float]) -> tuple[float, float, float, float, float]:
    """``n`` durable writes of each kind, taken in turns (ours, raw, persist-queue, persist-queue doing the same
    work, the SQL alone, ours, ...) so that a change in the disk's fsync speed, which drifts by the second on a
    shared machine, hits all of them alike. Returns the rates (writes per second of time spent in each)."""
    card = BenchCard()
    spent = [0.0, 0.0, 0.0, 0.0, 0.0]
    clock = time.perf_counter
    for i in range(n):
        t0 = clock()
        store.record(
            type="sale",
            amount_minor=100 + i,
            currency="EUR",
            card=protection.protect(card),
            auth={"mode": "offline"},
            reference=f"R-{i}",
        )
        t1 = clock()
        raw.execute("INSERT INTO t (payload) VALUES (?)", (row,))  # autocommit: one durable commit per row
        t2 = clock()
        queue.put(item)
        t3 = clock()
        same_work.record(card, 100 + i, f"R-{i}")
        t4 = clock()
        floor.write()
        t5 = clock()
        latencies.append(t1 - t0)
        spent[0] += t1 - t0
        spent[1] += t2 - t1
        spent[2] += t3 - t2
        spent[3] += t4 - t3
        spent[4] += t5 - t4
    return n / spent[0], n / spent[1], n / spent[2], n / spent[3], n / spent[4]


def fill_backlog(store: QueueStore, protection: CardProtection, n: int) -> None:
    cards = [protection.protect(BenchCard(atc=i)) for i in range(200)]
    cur = store._writer.cursor()  # bench-only: fast fill, the drain below runs at FULL again
    cur.execute("PRAGMA synchronous=OFF")
    for i in range(n):
        store.record(type="sale", amount_minor=100 + i % 5000, currency="EUR", card=cards[i % 200],
                     auth={"mode": "offline"}, reference=f"B-{i}")  # fmt: skip
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()
    store.compact()


def drain(store: QueueStore, page_size: int) -> tuple[float, list[float], int, int]:
    page_times: list[float] = []
    total_bytes = 0
    rows = 0
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        page = store.pending_page(page_size)
        if not page:
            break
        body = orjson.dumps({"transactions": page})
        store.mark_accepted(range(page[0]["sequence"], page[-1]["sequence"] + 1))
        page_times.append(time.perf_counter() - t0)
        total_bytes += len(body)
        rows += len(page)
    return time.perf_counter() - start, page_times, total_bytes, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=150)
    parser.add_argument("--warmup-rounds", type=int, default=5, help="rounds run first and not counted (default 5)")
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=None, help="directory on the disk to measure (default: a temp dir)")
    args = parser.parse_args()

    import persistqueue

    workdir = Path(tempfile.mkdtemp(prefix="bench-queue-", dir=args.dir))
    try:
        _private, public = generate_keypair()
        protection = CardProtection(os.urandom(32), public)
        store = QueueStore.open(workdir / "queue.sqlite", terminal_id="T-BENCH")
        # The same row, as the store holds it: the wire JSON of one recorded sale (with its envelope).
        sample = store.record(type="sale", amount_minor=1250, currency="EUR", card=protection.protect(BenchCard()),
                              auth={"mode": "offline"}, reference="R-sample")  # fmt: skip
        item = sample.to_wire()
        row = orjson.dumps(item)

        raw = sqlite3.connect(workdir / "raw.sqlite", isolation_level=None)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=FULL")
        raw.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")

        pq = persistqueue.SQLiteAckQueue(str(workdir / "pq"), auto_commit=True)
        pq._putter.execute("PRAGMA synchronous=FULL")
        pq_sync = pq._putter.execute("PRAGMA synchronous").fetchone()[0]
        pq_journal = pq._putter.execute("PRAGMA journal_mode").fetchone()[0]

        pq_work = persistqueue.SQLiteAckQueue(str(workdir / "pq-same-work"), auto_commit=True)
        pq_work._putter.execute("PRAGMA synchronous=FULL")
        same_work = PersistQueueSameWork(pq_work, CardProtection(os.urandom(32), public))

        floor_store = QueueStore.open(workdir / "floor.sqlite", terminal_id="T-BENCH")
        floor_store.record(type="sale", amount_minor=1250, currency="EUR", card=protection.protect(BenchCard()),
                           auth={"mode": "offline"}, reference="R-sample")  # fmt: skip
        floor = SqlFloor(floor_store, (args.warmup_rounds + args.rounds) * args.per_round)

        # Warm-up, not counted: until each WAL has filled once and been checkpointed (raw sqlite3 writes ~1.7
        # frames per row, so ~600 rows to its first 1,000-page checkpoint), a writer whose WAL file still grows
        # pays for the growth in every fsync, and the writers reach that point at different times.
        for _ in range(args.warmup_rounds):
            interleaved_round(store, protection, raw, row, pq, item, same_work, floor, args.per_round, [])
        ours, raws, pqs, pq_same, floors, latencies = [], [], [], [], [], []
        for _ in range(args.rounds):
            o, r, q, w, f = interleaved_round(store, protection, raw, row, pq, item, same_work, floor,
                                              args.per_round, latencies)
            ours.append(o)
            raws.append(r)
            pqs.append(q)
            pq_same.append(w)
            floors.append(f)
        raw.close()
        pq.close()
        pq_work.close()
        floor_store.close()
        store.close()

        ratio_raw = statistics.median(o / r for o, r in zip(ours, raws, strict=True))
        ratio_pq = statistics.median(o / q for o, q in zip(ours, pqs, strict=True))
        ratio_pq_same = statistics.median(o / w for o, w in zip(ours, pq_same, strict=True))
        floor_vs_pq = statistics.median(f / q for f, q in zip(floors, pqs, strict=True))
        ratio_floor = statistics.median(o / f for o, f in zip(ours, floors, strict=True))
        record_per_s = statistics.median(ours)
        raw_per_s = statistics.median(raws)
        pq_per_s = statistics.median(pqs)
        print(f"record (token+seal+chain+commit): {record_per_s:8.0f}/s  rounds {[round(x) for x in ours]}")
        print(f"raw sqlite3, {len(row)} B row:       {raw_per_s:8.0f}/s  rounds {[round(x) for x in raws]}")
        print(f"persist-queue SQLiteAckQueue.put: {pq_per_s:8.0f}/s  rounds {[round(x) for x in pqs]}")
        print(f"persist-queue, same work:         {statistics.median(pq_same):8.0f}/s  "
              f"rounds {[round(x) for x in pq_same]}")
        print(f"our SQL alone, values made ahead: {statistics.median(floors):8.0f}/s  "
              f"rounds {[round(x) for x in floors]}")
        print(f"per-round ratios vs raw {[round(o / r, 2) for o, r in zip(ours, raws, strict=True)]}")

        backlog_path = workdir / "backlog.sqlite"
        fresh(backlog_path)
        store = QueueStore.open(backlog_path, terminal_id="T-BENCH")
        t0 = time.perf_counter()
        fill_backlog(store, protection, args.backlog)
        fill_s = time.perf_counter() - t0
        drain_s, page_times, body_bytes, rows = drain(store, args.page_size)
        assert rows == args.backlog and store.checkpoint() == args.backlog
        store.close()
        window = max(1, len(page_times) // 5)
        first = statistics.median(page_times[:window])
        last = statistics.median(page_times[-window:])
        print(f"backlog of {rows} filled in {fill_s:.1f} s (sync off); drained in {drain_s:.2f} s, "
              f"{len(page_times)} pages, first {first * 1000:.1f} ms last {last * 1000:.1f} ms")  # fmt: skip

        result = {
            "record_per_s": round(record_per_s),
            "raw_sqlite_per_s": round(raw_per_s),
            "ratio_vs_raw": round(ratio_raw, 3),
            "persist_queue_per_s": round(pq_per_s),
            "ratio_vs_persist_queue": round(ratio_pq, 3),
            "persist_queue_same_work_per_s": round(statistics.median(pq_same)),
            "ratio_vs_persist_queue_same_work": round(ratio_pq_same, 3),
            "sql_floor_per_s": round(statistics.median(floors)),
            "ratio_vs_sql_floor": round(ratio_floor, 3),
            "sql_floor_over_persist_queue": round(floor_vs_pq, 3),
            "record_p50_ms": round(pct(latencies, 50) * 1000, 3),
            "record_p99_ms": round(pct(latencies, 99) * 1000, 3),
            "row_bytes": len(row),
            "rounds": args.rounds,
            "warmup_rounds": args.warmup_rounds,
            "per_round": args.per_round,
            "persist_queue_synchronous": pq_sync,
            "persist_queue_journal_mode": pq_journal,
            "drain_rows": rows,
            "drain_100k_s": round(drain_s, 3),
            "drain_rows_per_s": round(rows / drain_s),
            "drain_page_size": args.page_size,
            "first_page_ms": round(first * 1000, 3),
            "last_page_ms": round(last * 1000, 3),
            "page_p99_ms": round(pct(page_times, 99) * 1000, 3),
            "last_page_over_first_page": round(last / first, 3),
            "upload_body_mb": round(body_bytes / 1e6, 1),
        }
        print(json.dumps(result))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
