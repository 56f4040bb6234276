"""End-to-end drain of a terminal's backlog to head office on PostgreSQL over loopback.

The terminal is enrolled with the real ``smartpos enroll``, its queue is filled with N recorded transactions
(distinct sealed envelopes), then the real ``smartpos sync`` drains it (progress bar on stderr) to a real
``smartpos-hq serve`` on PostgreSQL. Timed: the whole ``smartpos sync`` command, start to exit. Checked afterwards:
head office holds exactly N transactions with the terminal's total.

    python bench/sync_drain.py [--count 100000] [--page-size 1000] [--workers 1]

PostgreSQL: $PGHOST/$PGPORT (default 127.0.0.1:5432, user postgres) if reachable, else a throwaway cluster.
Last line: one JSON object (``drain_100k_s`` scaled to 100k when --count differs).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/queue.py would shadow the standard library's queue module: keep bench/ off sys.path, the project on it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
TEST_PANS = ("4111111111111111", "5555555555554444", "4012888888881881", "378282246310005")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres() -> Iterator[tuple[str, int, str]]:
    """(host, port, user) of a reachable PostgreSQL: the machine's, or a throwaway cluster removed at the end."""
    import psycopg

    host, port = os.environ.get("PGHOST", "127.0.0.1"), int(os.environ.get("PGPORT", "5432"))
    user = os.environ.get("PGUSER", "postgres")
    try:
        psycopg.connect(host=host, port=port, user=user, dbname="postgres", connect_timeout=3).close()
        yield host, port, user
        return
    except psycopg.Error:
        pass
    bindir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1]).parent
    base = Path(tempfile.mkdtemp(prefix="smartpos-bench-pg-"))
    run_as: list[str] = []
    user = pwd.getpwuid(os.getuid()).pw_name
    if os.getuid() == 0:
        user, run_as = "postgres", ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, user)
    port = free_port()
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(base / "data"), "-U", user, "--auth=trust"],
                   check=True, capture_output=True)
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base}"
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(base / "data"), "-o", opts, "-l",
                    str(base / "log"), "-w", "start"], check=True, capture_output=True)
    try:
        yield "127.0.0.1", port, user
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(base / "data"), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def database(pg: tuple[str, int, str]) -> Iterator[str]:
    import psycopg

    host, port, user = pg
    name = f"smartpos_bench_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    finally:
        with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def head_office(database_url: str, home: Path, *, workers: int = 1) -> Iterator[str]:
    env = {**os.environ, "SMARTPOS_HQ_HOME": str(home), "SMARTPOS_HQ_DATABASE_URL": database_url}
    port = free_port()
    log = open(home.parent / f"hq-{port}.log", "wb")
    proc = subprocess.Popen([str(BIN / "smartpos-hq"), "serve", "--port", str(port), "--workers", str(workers),
                             "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"head office exited; see {log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/api/v1/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("head office did not start")
            time.sleep(0.1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(15)
        log.close()


def hq_cli(home: Path, database_url: str, *args: str) -> str:
    env = {**os.environ, "SMARTPOS_HQ_HOME": str(home), "SMARTPOS_HQ_DATABASE_URL": database_url}
    return subprocess.run([str(BIN / "smartpos-hq"), *args], env=env, check=True, capture_output=True,
                          text=True).stdout


def enroll_terminal(url: str, home: Path, database_url: str, base: Path, terminal_id: str) -> Path:
    code = hq_cli(home, database_url, "codes", "create", "--merchant", "M-bench", "--terminal", terminal_id)
    config = base / f"{terminal_id}.toml"
    subprocess.run([str(BIN / "smartpos"), "enroll", "--hq", url, "--code", code.strip().splitlines()[0],
                    "--config", str(config), "--state-dir", str(base / terminal_id)], check=True,
                   capture_output=True)
    return config


def fill_backlog(config: Path, count: int) -> int:
    """Record ``count`` sales; returns their total. The fill is set-up, not what is measured, so the queue's
    per-commit fsync is switched off for it (and back on by reopening for the measured drain)."""
    from config.loading import load_settings
    from config.provisioning import load_enrollment
    from drivers.cardread import EmvCardRead
    from offline_queue.cardprotect import CardProtection
    from offline_queue.store import QueueStore
    from protocol.carddata import mask_pan

    settings, _ = load_settings(config)
    enrollment = load_enrollment(settings.state_dir)
    protection = CardProtection.from_state_dir(settings.state_dir)
    cards = []
    for i in range(64):
        pan = TEST_PANS[i % len(TEST_PANS)]
        read = EmvCardRead(reader="bench", detected_at=0.0, read_at=0.0, scheme="visa", masked_pan=mask_pan(pan),
                           pan_last4=pan[-4:], aid="A0000000031010", label="VISA", preferred_name=None,
                           track2_present=True, atc=i, cryptogram={"9F26": f"{i:016X}", "9F36": f"{i:04X}"},
                           wallet=False, pan=pan, expiry="2812", track2=f"{pan}D28122010000000000")
        cards.append(protection.protect(read))
    total = 0
    with QueueStore.open(settings.db_path, terminal_id=enrollment.terminal_id) as store:
        store._writer.execute("PRAGMA synchronous=OFF")  # set-up only; see docstring
        for i in range(count):
            amount = 100 + (i * 37) % 9900
            store.record(type="sale", amount_minor=amount, currency="EUR", card=cards[i % len(cards)],
                         auth={"mode": "offline"})
            total += amount
    return total


def hq_totals(database_url: str, terminal_id: str) -> tuple[int, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as conn:
        count, total = conn.execute(text(
            "SELECT count(*), coalesce(sum(amount_minor), 0) FROM transactions WHERE terminal_id = :t "
            "AND status = 'accepted'"), {"t": terminal_id}).one()
    engine.dispose()
    return int(count), int(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--compress", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="smartpos-drain-") as tmp, postgres() as pg, database(pg) as db_url:
        base = Path(tmp)
        home = base / "hq"
        hq_cli(home, db_url, "merchants", "set", "M-bench", "--name", "Bench Shop")
        with head_office(db_url, home, workers=args.workers) as url:
            config = enroll_terminal(url, home, db_url, base, "T-drain")
            print(f"filling a backlog of {args.count} transactions...", file=sys.stderr)
            t0 = time.perf_counter()
            total = fill_backlog(config, args.count)
            print(f"  filled in {time.perf_counter() - t0:.1f} s; draining with `smartpos sync`", file=sys.stderr)
            cmd = [str(BIN / "smartpos"), "sync", "--config", str(config), "--page-size", str(args.page_size)]
            if args.compress:
                cmd.append("--compress")
            start = time.perf_counter()
            subprocess.run(cmd, check=True)
            elapsed = time.perf_counter() - start
            count, hq_total = hq_totals(db_url, "T-drain")
    if count != args.count or hq_total != total:
        raise SystemExit(f"head office holds {count} rows / {hq_total}, expected {args.count} / {total}")
    print(json.dumps({
        "drain_100k_s": round(elapsed * 100_000 / args.count, 2),
        "drain_s": round(elapsed, 2),
        "count": args.count,
        "txn_per_s": round(args.count / elapsed),
        "page_size": args.page_size,
        "hq_workers": args.workers,
        "backend": "postgresql",
        "hq_rows": count,
        "totals_equal": hq_total == total,
    }))


if __name__ == "__main__":
    main()
