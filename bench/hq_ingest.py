"""Head-office ingestion throughput: several terminals uploading at once to ``smartpos-hq serve`` on PostgreSQL,
against the raw PostgreSQL ``COPY`` rate of the same rows (the floor) measured in the same run.

Each terminal's transactions are chained and sealed beforehand (protocol/chain.py, protocol/envelope.py), pages
are pre-serialised; during the run each terminal thread only signs and POSTs its pages in order. Head office does
everything it does in production per transaction: signature and nonce, chain and continuity check, envelope
opening and card-data check, re-encryption at rest, COPY into the table.

    python bench/hq_ingest.py [--terminals 4] [--per-terminal 25000] [--page-size 1000] [--workers 2]

Also measured: the same with envelope-less transactions (closed-loop UID cards), which shows what the per-row
X25519 envelope opening costs. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
# bench/queue.py would shadow the standard library's queue module (psycopg needs it): keep bench/ off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_spec = importlib.util.spec_from_file_location("sync_drain", _HERE / "sync_drain.py")
assert _spec is not None and _spec.loader is not None
sync_drain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync_drain)
ROOT, TEST_PANS, database = sync_drain.ROOT, sync_drain.TEST_PANS, sync_drain.database
head_office, hq_cli, postgres = sync_drain.head_office, sync_drain.hq_cli, sync_drain.postgres


def make_terminal(url: str, home: Path, db_url: str, terminal_id: str) -> dict[str, Any]:
    import httpx
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocol.envelope import load_public_key
    from protocol.signing import public_key_to_text

    code = hq_cli(home, db_url, "codes", "create", "--merchant", "M-bench", "--terminal", terminal_id)
    key = Ed25519PrivateKey.generate()
    doc = httpx.post(f"{url}/api/v1/enrollments", json={"code": code.strip().splitlines()[0],
                                                         "public_key": public_key_to_text(key.public_key())}).json()
    return {"id": terminal_id, "key": key, "token_key": base64.b64decode(doc["token_key"]),
            "hq_public": load_public_key(doc["hq_public_key"].encode())}


def build_pages(term: dict[str, Any], count: int, page_size: int, *, envelopes: bool) -> tuple[list[bytes], int]:
    import orjson

    from protocol import chain, envelope, tokens
    from protocol.carddata import mask_pan

    prev = chain.GENESIS
    rows, total = [], 0
    for seq in range(1, count + 1):
        pan = TEST_PANS[seq % len(TEST_PANS)]
        env = envelope.seal(term["hq_public"], {"pan": pan, "expiry": "2812", "cryptogram": {"9F36": f"{seq:04X}"}}) \
            if envelopes else None
        amount = 100 + (seq * 37) % 9900
        wire = {
            "uuid": str(uuid.uuid4()), "terminal_id": term["id"], "sequence": seq, "batch": 1, "type": "sale",
            "created_at": "2026-11-23T12:00:00.000000Z", "amount_minor": amount, "currency": "EUR",
            "scheme": "visa" if envelopes else "uid", "masked_pan": mask_pan(pan) if envelopes else None,
            "pan_last4": pan[-4:], "token": tokens.card_token(term["token_key"], pan), "aid": None, "label": None,
            "entry_mode": "contactless", "wallet": False, "auth_mode": "offline", "auth_code": None,
            "auth_reason": None, "auth_id": None, "reference": f"R{seq}", "void_of": None,
            "envelope_sha256": chain.envelope_digest(env) if env else None,
        }
        wire["prev_hash"] = prev
        wire["hash"] = prev = chain.chain_hash(prev, wire)
        wire["envelope"] = env
        rows.append(wire)
        total += amount
    pages = [orjson.dumps({"transactions": rows[i:i + page_size]}) for i in range(0, len(rows), page_size)]
    return pages, total


def upload_all(url: str, terminals: list[dict[str, Any]], pages: dict[str, list[bytes]]) -> tuple[float, list[str]]:
    import httpx

    from protocol.signing import sign_request

    errors: list[str] = []
    start = threading.Barrier(len(terminals) + 1)

    def run(term: dict[str, Any]) -> None:
        path = f"/api/v1/terminals/{term['id']}/transactions"
        with httpx.Client(base_url=url, timeout=120) as client:
            start.wait()
            for body in pages[term["id"]]:
                headers = sign_request(term["key"], term["id"], "POST", path, body)
                headers["content-type"] = "application/json"
                r = client.post(path, content=body, headers=headers)
                if r.status_code != 200 or r.json()["rejected"]:
                    errors.append(f"{term['id']}: {r.status_code} {r.text[:200]}")
                    return

    threads = [threading.Thread(target=run, args=(t,)) for t in terminals]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, errors


def copy_floor(db_url: str, count: int) -> float:
    """COPY of equivalent rows (same columns, same kind of values incl. a ~200-byte encrypted card blob) into a
    scratch copy of the transactions table, in pages as large as the uploads: rows/s."""
    import os

    import psycopg

    from headoffice.ingest import _COLUMNS

    url = db_url.replace("postgresql+psycopg://", "postgresql://")
    rows = []
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    for seq in range(1, count + 1):
        row = {name: None for name in _COLUMNS}
        row.update(terminal_id="T-copy", sequence=seq, uuid=str(uuid.uuid4()), batch_id=1, batch_no=1,
                   merchant_id="M-bench", status="accepted", type="sale", amount_minor=100 + seq % 9900,
                   currency="EUR", scheme="visa", masked_pan="411111******1111", pan_last4="1111",
                   wallet=False, token="ab" * 32, entry_mode="contactless", auth_mode="offline", reference=f"R{seq}",
                   created_at="2026-11-23T12:00:00.000000Z", received_at=now, prev_hash="0" * 64,
                   chain_hash="1" * 64, envelope_sha256="2" * 64, card_data=os.urandom(200))
        rows.append(tuple(row[name] for name in _COLUMNS))
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE copy_floor (LIKE transactions INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                     "INCLUDING INDEXES)")
        conn.commit()
        t0 = time.perf_counter()
        for i in range(0, count, 1000):
            with conn.cursor() as cur, cur.copy(f"COPY copy_floor ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
                for row in rows[i:i + 1000]:
                    copy.write_row(row)
            conn.commit()
        elapsed = time.perf_counter() - t0
        conn.execute("DROP TABLE copy_floor")
        conn.commit()
    return count / elapsed


def count_rows(db_url: str) -> tuple[int, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    with engine.connect() as conn:
        n, total = conn.execute(text("SELECT count(*), coalesce(sum(amount_minor), 0) FROM transactions "
                                     "WHERE status = 'accepted'")).one()
    engine.dispose()
    return int(n), int(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, default=4)
    parser.add_argument("--per-terminal", type=int, default=25_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    n = args.terminals * args.per_terminal
    with tempfile.TemporaryDirectory(prefix="smartpos-ingest-") as tmp, postgres() as pg, database(pg) as db_url:
        home = Path(tmp) / "hq"
        hq_cli(home, db_url, "merchants", "set", "M-bench", "--name", "Bench Shop")
        with head_office(db_url, home, workers=args.workers) as url:
            results = {}
            expected_total = 0
            for label, envelopes in (("sealed", True), ("no_envelope", False)):
                terminals = [make_terminal(url, home, db_url, f"T-{label}-{i}") for i in range(args.terminals)]
                print(f"building {n} {label} transactions...", file=sys.stderr)
                pages = {}
                for term in terminals:
                    pages[term["id"]], total = build_pages(term, args.per_terminal, args.page_size,
                                                           envelopes=envelopes)
                    expected_total += total
                elapsed, errors = upload_all(url, terminals, pages)
                if errors:
                    raise SystemExit("uploads failed: " + "; ".join(errors[:3]))
                results[label] = n / elapsed
                print(f"  {label}: {n} in {elapsed:.2f} s = {n / elapsed:,.0f} txn/s", file=sys.stderr)
            stored, stored_total = count_rows(db_url)
            if stored != 2 * n or stored_total != expected_total:
                raise SystemExit(f"head office holds {stored} rows / {stored_total}, expected {2 * n}")
            copy_rate = copy_floor(db_url, n)
            print(f"  raw COPY: {copy_rate:,.0f} rows/s", file=sys.stderr)
    print(json.dumps({
        "ingest_txn_per_s": round(results["sealed"]),
        "ingest_no_envelope_txn_per_s": round(results["no_envelope"]),
        "copy_rows_per_s": round(copy_rate),
        "ratio_vs_copy": round(results["sealed"] / copy_rate, 3),
        "ratio_no_envelope_vs_copy": round(results["no_envelope"] / copy_rate, 3),
        "terminals": args.terminals,
        "txn_per_terminal": args.per_terminal,
        "page_size": args.page_size,
        "hq_workers": args.workers,
        "backend": "postgresql",
    }))


if __name__ == "__main__":
    main()
