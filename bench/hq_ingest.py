"""Head-office ingestion throughput: several terminals uploading at once to ``smartpos-hq serve`` on PostgreSQL,
against the raw PostgreSQL ``COPY`` rate of the same rows (the floor), measured in the same run.

Set-up (not timed): a throwaway database on the machine's PostgreSQL (loopback), ``smartpos-hq serve``; per round,
T terminals enrolled through the real enrollment API (one-time code, Ed25519 key made here); their transactions
built the way a terminal builds them (``CardProtection.protect`` -> token, masked PAN, sealed envelope;
``protocol.chain`` hashes) and serialised into pages. Timed: all T terminals POSTing their pages at once, each in
sequence order with up to ``--inflight`` pages on the wire as the terminal's SyncEngine sends them (one keep-alive
connection per page in flight), every request signed when it is sent. Head office does all its per-transaction
work: signature and nonce, chain and continuity check, content checks, envelope opening, PAN-to-token check,
re-encryption at rest, storage. Checked: every row accepted, head office's count and total equal what was sent.

The floor: the rows head office stored in that round are read back and ``COPY``-ed, as they came out (nothing
formatted by the client), into a fresh table of the same definition (``LIKE transactions INCLUDING ALL``), one
commit per page like the uploads, in the text and in the binary format, each once over one connection and once
over T connections at once; the fastest of the four is the floor (``copy_rows_per_s``). Rounds alternate ingest
and COPY so both see the same machine load; the JSON holds the medians and the ratio of the medians.

CPU µs per transaction of head office, its PostgreSQL backends and the senders are reported from /proc (with how
busy the machine was, and the rate that CPU would allow on an otherwise idle machine, an estimate).

Also per round (``--no-uid`` skips it): the same ingest with closed-loop UID-card transactions, which carry no
envelope, so the cost of the envelope work per transaction shows (``ingest_uid_txn_per_s``).

    python bench/hq_ingest.py [--n 100000] [--terminals 4] [--inflight 2] [--page-size 1000] [--hq-workers 2]
                              [--rounds 3] [--envelopes-per-chain 240]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
# bench/queue.py would shadow the standard library's queue module (psycopg needs it): keep bench/ off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_spec = importlib.util.spec_from_file_location("smartpos_bench_sync_drain", _HERE / "sync_drain.py")
assert _spec is not None and _spec.loader is not None
sync_drain = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = sync_drain  # dataclasses look their module up there
_spec.loader.exec_module(sync_drain)
BenchError = sync_drain.BenchError


@dataclass
class Terminal:
    id: str
    key: Any  # Ed25519PrivateKey
    pages: list[bytes] = field(default_factory=list)
    total_minor: int = 0


@dataclass
class Card:
    """What ``CardProtection.protect`` gives for one tap (the fields a terminal chains and uploads)."""

    scheme: str
    masked_pan: str | None
    pan_last4: str | None
    token: str
    envelope: str | None
    envelope_sha256: str | None


def uid_reads(n: int) -> Iterator[Any]:
    """Closed-loop cards identified by UID only: no PAN, so no envelope to seal or open."""
    from drivers.cardread import UidCardRead

    for i in range(n):
        yield UidCardRead(reader="bench", detected_at=0.0, read_at=0.0, uid=f"04{i % 4096:06X}A1B2C3")


def protected_cards(token_key: bytes, hq_public_pem: bytes, n: int, *, uid: bool = False,
                    per_key: int = sync_drain.DEFAULT_PER_CHAIN) -> list[Card]:
    """``n`` taps protected by the terminal's real code: EMV cards each with its own sealed envelope (``per_key``
    envelopes per key chain, see sync_drain.protect_at_pace), or UID cards (token only)."""
    from offline_queue.cardprotect import CardProtection

    reads = uid_reads(n) if uid else sync_drain.card_reads(n)
    with sync_drain.progress_bar("protect uid" if uid else "seal", n) as update:
        cards = []
        for i, p in enumerate(sync_drain.protect_at_pace(reads, lambda: CardProtection(token_key, hq_public_pem),
                                                         per_key)):
            cards.append(Card(p.scheme, p.masked_pan, p.pan_last4, p.token, p.envelope, p.envelope_sha256))
            if i % 1000 == 0:
                update(i + 1)
        update(n)
    return cards


def enroll(url: str, db_url: str, terminal_id: str) -> tuple[Terminal, bytes, bytes]:
    """Real enrollment API: a one-time code issued at head office, the terminal's key generated here.
    Returns the terminal, the token key and head office's envelope public key (PEM) it was given."""
    from datetime import timedelta

    import httpx
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from headoffice import enrollment
    from headoffice.db import make_engine, session_factory
    from protocol.signing import public_key_to_text

    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session, session.begin():
            code = enrollment.create_code(session, "M-bench", terminal_id, timedelta(hours=1))
    finally:
        engine.dispose()
    key = Ed25519PrivateKey.generate()
    r = httpx.post(f"{url}/api/v1/enrollments", json={"code": code.code,
                                                       "public_key": public_key_to_text(key.public_key())})
    if r.status_code not in (200, 201):
        raise BenchError(f"enrollment of {terminal_id} failed: {r.status_code} {r.text[:200]}")
    doc = r.json()
    return Terminal(terminal_id, key), base64.b64decode(doc["token_key"]), doc["hq_public_key"].encode()


def build_pages(term: Terminal, cards: list[Card], page_size: int) -> None:
    """The terminal's chain over ``cards`` (fresh uuids), serialised into upload pages."""
    import orjson

    from protocol import chain

    prev = chain.GENESIS
    rows = []
    for seq, card in enumerate(cards, start=1):
        amount = sync_drain.amount_of(seq)
        wire: dict[str, Any] = {
            "uuid": str(uuid.uuid4()), "terminal_id": term.id, "sequence": seq, "batch": 1, "type": "sale",
            "created_at": "2026-11-23T12:00:00.000000Z", "amount_minor": amount, "currency": "EUR",
            "scheme": card.scheme, "masked_pan": card.masked_pan, "pan_last4": card.pan_last4, "token": card.token,
            "aid": None if card.envelope is None else "A0000000031010", "label": "BENCH",
            "entry_mode": "card_uid" if card.scheme == "uid" else "contactless", "wallet": False,
            "auth_mode": "offline", "auth_code": None, "auth_reason": None, "auth_id": None,
            "reference": f"B-{seq}", "void_of": None, "envelope_sha256": card.envelope_sha256,
        }
        wire["prev_hash"] = prev
        wire["hash"] = prev = chain.chain_hash(prev, wire)
        wire["envelope"] = card.envelope
        rows.append(wire)
        term.total_minor += amount
    term.pages = [orjson.dumps({"transactions": rows[i:i + page_size]}) for i in range(0, len(rows), page_size)]


def run_together(threads: list[threading.Thread], barrier: threading.Barrier) -> float:
    """Start ``threads`` (each waits on ``barrier`` before its timed part), release them at once and return the
    wall time from the release to the end of the last one."""
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def upload_all(url: str, terminals: list[Terminal], inflight: int = 2) -> float:
    """All terminals at once, each its pages in order with up to ``inflight`` on the wire, as the terminal's
    SyncEngine sends them (one keep-alive connection per page in flight; head office applies a page that overtook
    its predecessor once that one is in). Returns the wall time from the common start to the last answer. Any
    non-200 or rejected row fails the run."""
    import httpx
    import orjson

    from protocol.signing import sign_request

    errors: list[str] = []
    start = threading.Barrier(len(terminals) * inflight + 1)

    def run(term: Terminal, lane: int) -> None:
        path = f"/api/v1/terminals/{term.id}/transactions"
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                start.wait()
                for body in term.pages[lane::inflight]:
                    headers = sign_request(term.key, term.id, "POST", path, body)
                    headers["content-type"] = "application/json"
                    r = client.post(path, content=body, headers=headers)
                    if r.status_code != 200:
                        errors.append(f"{term.id}: HTTP {r.status_code} {r.text[:200]}")
                        return
                    answer = orjson.loads(r.content)
                    if answer["rejected"]:
                        bad = next(x for x in answer["results"] if x["status"] != "accepted")
                        errors.append(f"{term.id}: sequence {bad['sequence']} rejected: {bad['reason']}")
                        return
        except (httpx.HTTPError, threading.BrokenBarrierError) as exc:
            errors.append(f"{term.id}: {type(exc).__name__}: {exc}")
            with contextlib.suppress(threading.BrokenBarrierError):
                start.abort()

    threads = [threading.Thread(target=run, args=(t, lane), daemon=True) for t in terminals for lane in range(inflight)]
    elapsed = run_together(threads, start)
    if errors:
        raise BenchError("uploads failed: " + "; ".join(errors[:3]))
    return elapsed


def stored(db_url: str, terminal_ids: list[str]) -> tuple[int, int, int]:
    import psycopg

    with psycopg.connect(sync_drain.psycopg_url(db_url)) as conn:
        rows, accepted, total = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'accepted'), "
            "coalesce(sum(amount_minor) FILTER (WHERE status = 'accepted'), 0) FROM transactions "
            "WHERE terminal_id = ANY(%s)", (terminal_ids,)).fetchone()
    return rows, accepted, int(total)


def copy_floor(db_url: str, terminal_ids: list[str], page_size: int) -> dict[str, float]:
    """rows/s of COPY for exactly the rows head office stored for ``terminal_ids``, read back and sent again as
    they are (the client does no formatting): in the text and in the binary format, each over one connection
    and over one connection per terminal at once. One commit per ``page_size`` rows, like the uploads. The floor
    is the fastest of the four."""
    import psycopg

    from headoffice.models import Transaction

    url = sync_drain.psycopg_url(db_url)
    columns = ", ".join(c.name for c in Transaction.__table__.columns if c.name != "id")
    pages: dict[str, dict[str, list[bytes]]] = {"text": {}, "binary": {}}
    with psycopg.connect(url, autocommit=True) as conn:
        for tid in terminal_ids:
            lines: list[bytes] = []
            with conn.cursor().copy(f"COPY (SELECT {columns} FROM transactions WHERE terminal_id = %s "
                                    "ORDER BY sequence) TO STDOUT", (tid,)) as copy:
                lines.extend(bytes(chunk) for chunk in copy)
            data = b"".join(lines).splitlines(keepends=True)
            pages["text"][tid] = [b"".join(data[i:i + page_size]) for i in range(0, len(data), page_size)]
            binary_pages = []
            for first in range(1, len(data) + 1, page_size):
                chunks: list[bytes] = []
                with conn.cursor().copy(f"COPY (SELECT {columns} FROM transactions WHERE terminal_id = %s AND "
                                        "sequence BETWEEN %s AND %s ORDER BY sequence) TO STDOUT (FORMAT BINARY)",
                                        (tid, first, first + page_size - 1)) as copy:
                    chunks.extend(bytes(chunk) for chunk in copy)
                binary_pages.append(b"".join(chunks))
            pages["binary"][tid] = binary_pages
        conn.execute("DROP TABLE IF EXISTS bench_copy_floor")
        conn.execute("CREATE TABLE bench_copy_floor (LIKE transactions INCLUDING ALL)")
    count = sum(p.count(b"\n") for per in pages["text"].values() for p in per)

    def load(fmt: str, term_pages: list[bytes], barrier: threading.Barrier | None = None) -> None:
        option = " (FORMAT BINARY)" if fmt == "binary" else ""
        with psycopg.connect(url) as c:
            if barrier is not None:
                barrier.wait()
            for page in term_pages:
                with c.cursor().copy(f"COPY bench_copy_floor ({columns}) FROM STDIN{option}") as copy:
                    copy.write(page)
                c.commit()

    def fresh() -> None:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("TRUNCATE bench_copy_floor")
            c.execute("CHECKPOINT")  # every variant starts without the previous one's dirty buffers to write

    rates: dict[str, float] = {}
    try:
        for fmt in ("text", "binary"):
            fresh()
            t0 = time.perf_counter()
            for term_pages in pages[fmt].values():
                load(fmt, term_pages)
            rates[f"{fmt}_one_conn"] = count / (time.perf_counter() - t0)
            fresh()
            barrier = threading.Barrier(len(pages[fmt]) + 1)
            threads = [threading.Thread(target=load, args=(fmt, term_pages, barrier))
                       for term_pages in pages[fmt].values()]
            rates[f"{fmt}_parallel"] = count / run_together(threads, barrier)
    finally:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("DROP TABLE IF EXISTS bench_copy_floor")
    return {**rates, "one_conn": max(rates["text_one_conn"], rates["binary_one_conn"]),
            "parallel": max(rates["text_parallel"], rates["binary_parallel"]), "rows": count}


def ceiling(*us_per_txn: float | None) -> int | None:
    if any(v is None for v in us_per_txn):
        return None
    total = sum(v for v in us_per_txn if v is not None)
    return round((os.cpu_count() or 1) * 1e6 / total) if total > 0 else None


def checkpoint(db_url: str) -> None:
    import psycopg

    with psycopg.connect(sync_drain.psycopg_url(db_url), autocommit=True) as c:
        c.execute("CHECKPOINT")


@contextlib.contextmanager
def session_dirs() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="smartpos-ingest-") as tmp:
        yield Path(tmp)


def run(args: argparse.Namespace) -> dict[str, Any]:
    per_terminal = args.n // args.terminals
    n = per_terminal * args.terminals
    load_1m = os.getloadavg()[0]
    ingest_rates: list[float] = []
    uid_rates: list[float] = []
    copy_one: list[float] = []
    copy_par: list[float] = []
    copy_formats: list[dict[str, int]] = []
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(session_dirs())
        db_url = stack.enter_context(sync_drain.database(stack.enter_context(sync_drain.postgres()), "ingest"))
        home = tmp / "hq"
        sync_drain.hq_cli(home, db_url, "merchants", "set", "M-bench", "--name", "Bench Shop")
        hq = stack.enter_context(sync_drain.head_office(db_url, home, workers=args.hq_workers))
        url = hq.url
        meter = sync_drain.CpuMeter(hq.pid, sync_drain.database_name(db_url), self_label="senders")
        cpu: dict[str, list[dict[str, Any]]] = {"emv": [], "uid": []}
        cards: dict[str, list[list[Card]]] = {}
        for rnd in range(args.rounds):
            for kind in ("emv", "uid") if args.uid else ("emv",):
                enrolled = [enroll(url, db_url, f"T-r{rnd}-{kind}-{i}") for i in range(args.terminals)]
                terminals = [t for t, _, _ in enrolled]
                # Sealed afresh every round: head office remembers the key chains it has seen, and envelopes
                # of an earlier round would find theirs remembered.
                if kind == "emv" or kind not in cards:
                    _, token_key, hq_pem = enrolled[0]
                    made = protected_cards(token_key, hq_pem, n, uid=kind == "uid", per_key=args.envelopes_per_chain)
                    cards[kind] = [made[i * per_terminal:(i + 1) * per_terminal] for i in range(args.terminals)]
                for term, term_cards in zip(terminals, cards[kind], strict=True):
                    build_pages(term, term_cards, args.page_size)
                checkpoint(db_url)  # each timed phase starts without the previous phase's dirty buffers
                meter.start()
                elapsed = upload_all(url, terminals, args.inflight)
                cpu[kind].append(meter.per_txn(n))
                ids = [t.id for t in terminals]
                rows, accepted, total = stored(db_url, ids)
                expected = sum(t.total_minor for t in terminals)
                if (rows, accepted, total) != (n, n, expected):
                    raise BenchError(f"round {rnd}: head office holds {rows} rows ({accepted} accepted) totalling "
                                     f"{total}, expected {n} accepted totalling {expected}")
                if kind == "uid":
                    uid_rates.append(n / elapsed)
                    print(f"round {rnd + 1}/{args.rounds}: ingest of UID-card transactions (no envelope) "
                          f"{n / elapsed:,.0f} txn/s ({elapsed:.2f} s)", file=sys.stderr, flush=True)
                    continue
                ingest_rates.append(n / elapsed)
                floor = copy_floor(db_url, ids, args.page_size)
                copy_one.append(floor["one_conn"])
                copy_par.append(floor["parallel"])
                copy_formats.append({k: round(v) for k, v in floor.items() if "_" in k and k != "one_conn"})
                print(f"round {rnd + 1}/{args.rounds}: ingest {n / elapsed:,.0f} txn/s ({elapsed:.2f} s); COPY "
                      f"{floor['one_conn']:,.0f} rows/s on 1 connection, {floor['parallel']:,.0f} on "
                      f"{args.terminals}", file=sys.stderr, flush=True)
    ingest = statistics.median(ingest_rates)

    def median_cpu(kind: str, key: str) -> float | None:
        values = [c[key] for c in cpu[kind] if key in c]
        return round(statistics.median(values), 1) if values else None

    copy = max(statistics.median(copy_one), statistics.median(copy_par))
    return {
        "ingest_txn_per_s": round(ingest),
        "copy_rows_per_s": round(copy),
        "ratio_vs_copy": round(ingest / copy, 3),
        "terminals": args.terminals,
        "copy_one_conn_rows_per_s": round(statistics.median(copy_one)),
        "copy_parallel_rows_per_s": round(statistics.median(copy_par)),
        "ingest_txn_per_s_rounds": [round(r) for r in ingest_rates],
        "copy_rows_per_s_rounds": [round(max(a, b)) for a, b in zip(copy_one, copy_par, strict=True)],
        "copy_by_format_rows_per_s_rounds": copy_formats,
        "ingest_uid_txn_per_s": round(statistics.median(uid_rates)) if uid_rates else None,
        "ratio_uid_vs_copy": round(statistics.median(uid_rates) / copy, 3) if uid_rates else None,
        "hq_cpu_us_per_txn": median_cpu("emv", "hq_cpu_us_per_txn"),
        "pg_backend_cpu_us_per_txn": median_cpu("emv", "pg_backend_cpu_us_per_txn"),
        "senders_cpu_us_per_txn": median_cpu("emv", "senders_cpu_us_per_txn"),
        "hq_cpu_us_per_txn_uid": median_cpu("uid", "hq_cpu_us_per_txn"),
        "machine_busy_pct": median_cpu("emv", "machine_busy_pct"),
        # What the measured CPU per transaction would allow if this run had the machine to itself (an estimate).
        "est_idle_ceiling_txn_per_s": ceiling(median_cpu("emv", "hq_cpu_us_per_txn"),
                                              median_cpu("emv", "pg_backend_cpu_us_per_txn"),
                                              median_cpu("emv", "senders_cpu_us_per_txn")),
        "rounds": args.rounds,
        "txn_per_round": n,
        "page_size": args.page_size,
        "hq_workers": args.hq_workers,
        "inflight_per_terminal": args.inflight,
        "backend": "postgresql",
        "sealed_envelopes": True,
        "envelopes_per_chain": args.envelopes_per_chain,
        "target_txn_per_s": 10_000,
        "target_ratio_vs_copy": 0.25,
        "target_met": ingest >= 10_000 and ingest / copy >= 0.25,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(load_1m, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="transactions per round, all terminals (100000)")
    parser.add_argument("--terminals", type=int, default=4, help="terminals uploading at once (default 4)")
    parser.add_argument("--page-size", type=int, default=1000, help="transactions per upload (default 1000)")
    parser.add_argument("--hq-workers", type=int, default=2, help="smartpos-hq serve --workers (default 2)")
    parser.add_argument("--inflight", type=int, default=2,
                        help="pages on the wire per terminal, as the terminal's SyncEngine sends them (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="ingest+COPY rounds, medians reported (default 3)")
    parser.add_argument("--uid", action=argparse.BooleanOptionalAction, default=True,
                        help="per round, also ingest UID-card transactions (no envelope to open) (default on)")
    sync_drain.add_pace_option(parser)
    args = parser.parse_args(argv)
    if min(args.terminals, args.page_size, args.hq_workers, args.rounds, args.inflight) < 1 or args.n < args.terminals:
        parser.error("--terminals, --page-size, --hq-workers, --rounds must be >= 1 and --n >= --terminals")
    try:
        with sync_drain.interrupt_on_signals():
            figures = run(args)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped and the database dropped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"hq_ingest: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
