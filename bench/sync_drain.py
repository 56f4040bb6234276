"""End-to-end drain of one terminal's backlog to head office on PostgreSQL over loopback.

What runs is what runs in production: a throwaway database on the machine's PostgreSQL (127.0.0.1:5432, or a
throwaway cluster when none answers), ``smartpos-hq serve`` on it, the terminal enrolled with the real
``smartpos enroll`` and a one-time code, N sales recorded with ``QueueStore.record`` (each with its own sealed card
envelope from ``CardProtection``), then the real ``SyncEngine`` with the real signed ``HeadOfficeClient`` drains
the queue. Timed: ``SyncEngine.run_once`` (parameters check, every page, acknowledgements, envelope wiping).
Checked afterwards: head office holds exactly N accepted rows with the terminal's total, no sequence twice, and
the terminal has nothing left to send.

    python bench/sync_drain.py [--n 100000] [--page-size 1000] [--inflight 2] [--hq-workers 2]

Also reported: CPU µs per transaction spent by head office, its PostgreSQL backends and the terminal during the
drain (from /proc), and how busy the whole machine was — the 2 cores are often shared with other work.

Progress bars on stderr when it is a terminal. Everything started is stopped by PID and the database dropped,
also on errors and Ctrl-C. Last line: one JSON object (``drain_100k_s`` is extrapolated linearly when --n is
not 100000, and says so in ``drain_100k_extrapolated``).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/queue.py would shadow the standard library's queue module: keep bench/ off sys.path, the project on it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from protocol.envelope import DEFAULT_CHAIN_AGE_S  # noqa: E402 (the project is importable only from here)
from protocol.envelope import MAX_CHAIN_LENGTH as MAX_ENVELOPES_PER_CHAIN  # noqa: E402

BIN = Path(sys.executable).parent
# Luhn-valid public test numbers only.
TEST_PANS = ("4111111111111111", "5555555555554444", "4012888888881881", "378282246310005")
SCHEMES = {"4": "visa", "5": "mastercard", "3": "amex"}


class BenchError(Exception):
    """A failure worth one line (setup failed, head office missing rows): printed, exit status 1."""


# -- process, signal and loopback hygiene ---------------------------------------------------------------------


def require_loopback(host: str) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise BenchError(f"refusing to talk to {host!r}: benchmarks only use loopback")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """SIGINT (also when inherited as ignored), SIGTERM and SIGHUP unwind like Ctrl-C: every ``with`` below
    stops its process and drops its database."""

    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


@contextlib.contextmanager
def child(cmd: list[str], *, env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group (uvicorn's workers join it); stopped by that PID's group on exit."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(wait_s)


def log_tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# -- PostgreSQL -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres() -> Iterator[tuple[str, int, str]]:
    """(host, port, user) of a PostgreSQL on loopback: $PGHOST/$PGPORT/$PGUSER (default 127.0.0.1:5432,
    postgres, trust auth) when it answers, else a throwaway cluster removed at the end."""
    import psycopg

    host, port = os.environ.get("PGHOST", "127.0.0.1"), int(os.environ.get("PGPORT", "5432"))
    user = os.environ.get("PGUSER", "postgres")
    require_loopback(host)
    try:
        psycopg.connect(host=host, port=port, user=user, dbname="postgres", connect_timeout=3).close()
    except psycopg.Error:
        pass
    else:
        yield host, port, user
        return
    with throwaway_cluster() as pg:
        yield pg


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[tuple[str, int, str]]:
    import glob
    import pwd

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise BenchError("no PostgreSQL answers on loopback and no initdb to start a throwaway cluster")
    bindir = Path(found[-1]).parent
    base = Path(tempfile.mkdtemp(prefix="smartpos-bench-pg-"))
    run_as: list[str] = []
    user = pwd.getpwuid(os.getuid()).pw_name
    if os.getuid() == 0:  # initdb refuses root
        user, run_as = "postgres", ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, user)
    port = free_port()
    data = base / "data"
    started = False
    try:
        subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust"],
                       check=True, capture_output=True)
        opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base}"
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "log"),
                        "-w", "start"], check=True, capture_output=True)
        started = True
        yield "127.0.0.1", port, user
    finally:
        if started:
            subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def database(pg: tuple[str, int, str], label: str = "bench") -> Iterator[str]:
    """A fresh database, dropped (connections forced off) on the way out whatever happened."""
    import psycopg

    host, port, user = pg
    name = f"smartpos_{label}_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    finally:
        with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def psycopg_url(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://", 1)


# -- head office ------------------------------------------------------------------------------------------------


def hq_env(home: Path, database_url: str) -> dict[str, str]:
    return {**os.environ, "SMARTPOS_HQ_HOME": str(home), "SMARTPOS_HQ_DATABASE_URL": database_url}


def hq_cli(home: Path, database_url: str, *args: str) -> str:
    done = subprocess.run([str(BIN / "smartpos-hq"), *args], env=hq_env(home, database_url), capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise BenchError(f"smartpos-hq {' '.join(args[:2])} failed: {(done.stderr or done.stdout).strip()[-300:]}")
    return done.stdout


@dataclass(frozen=True)
class HeadOffice:
    url: str
    pid: int  # of ``smartpos-hq serve``; its uvicorn workers are in its process group


@dataclass
class CpuMeter:
    """CPU seconds (user + system, from /proc) by who spent them: head office (its process group), the
    PostgreSQL backends serving this run's database, this process, and the whole machine (busy share). Gives
    each side's own cost per transaction whatever else loads the shared machine. Linux only; empty elsewhere."""

    hq_pgid: int
    database: str
    self_label: str = "bench_process"  # what this process is in the measurement: the terminal, the senders
    _start: dict[str, float] = field(default_factory=dict)

    def _now(self) -> dict[str, float]:
        proc = Path("/proc")
        if not (proc / "stat").exists():
            return {}
        ticks = os.sysconf("SC_CLK_TCK")
        spent = {"hq": 0.0, "pg": 0.0, "self": 0.0}
        for stat in proc.glob("[0-9]*/stat"):
            try:
                pid = int(stat.parent.name)
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
                if pid == os.getpid():
                    spent["self"] += cpu
                elif int(fields[2]) == self.hq_pgid:
                    spent["hq"] += cpu
                elif fields[0] != "Z" and (stat.parent / "cmdline").read_bytes().startswith(b"postgres:") and \
                        f" {self.database} ".encode() in (stat.parent / "cmdline").read_bytes():
                    spent["pg"] += cpu
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
        times = [int(x) for x in (proc / "stat").read_text().split("\n", 1)[0].split()[1:]]
        spent["machine_total"] = float(sum(times))
        spent["machine_idle"] = float(times[3] + times[4])  # idle + iowait
        return spent

    def start(self) -> None:
        self._start = self._now()

    def per_txn(self, count: int) -> dict[str, Any]:
        """µs of CPU per transaction since ``start()``, and how busy the machine was meanwhile."""
        end = self._now()
        if not end or not self._start:
            return {}
        d = {k: end[k] - self._start.get(k, 0.0) for k in end}
        total = d["machine_total"] or 1.0
        return {
            "hq_cpu_us_per_txn": round(d["hq"] / count * 1e6, 1),
            "pg_backend_cpu_us_per_txn": round(d["pg"] / count * 1e6, 1),
            f"{self.self_label}_cpu_us_per_txn": round(d["self"] / count * 1e6, 1),
            "machine_busy_pct": round(100 * (1 - d["machine_idle"] / total), 1),
        }


def database_name(database_url: str) -> str:
    return database_url.rsplit("/", 1)[1]


@contextlib.contextmanager
def head_office(database_url: str, home: Path, *, workers: int = 1) -> Iterator[HeadOffice]:
    """``smartpos-hq serve`` on 127.0.0.1 with a free port; yields it once /api/v1/health answers."""
    import httpx

    port = free_port()
    cmd = [str(BIN / "smartpos-hq"), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers",
           str(workers), "--log-level", "warning"]
    log_path = home.parent / f"hq-{port}.log"
    home.mkdir(parents=True, exist_ok=True)
    with child(cmd, env=hq_env(home, database_url), log_path=log_path) as proc:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=1) as http:
            while True:
                if proc.poll() is not None:
                    raise BenchError(f"head office exited ({proc.returncode}):\n{log_tail(log_path)}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(url + "/api/v1/health").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise BenchError(f"head office did not answer within 60 s:\n{log_tail(log_path)}")
                time.sleep(0.1)
        print(f"head office: pid {proc.pid}, {url}, {workers} worker(s)", file=sys.stderr, flush=True)
        yield HeadOffice(url, proc.pid)
        if proc.poll() is not None:
            raise BenchError(f"head office died during the run ({proc.returncode}):\n{log_tail(log_path)}")


def enrollment_code(home: Path, database_url: str, terminal_id: str, merchant: str = "M-bench") -> str:
    out = hq_cli(home, database_url, "codes", "create", "--merchant", merchant, "--terminal", terminal_id, "--json")
    return str(json.loads(out)["code"])


def enroll_terminal(url: str, home: Path, database_url: str, base: Path, terminal_id: str) -> Path:
    """The real enrollment: a one-time code from head office, then ``smartpos enroll`` (key made locally)."""
    code = enrollment_code(home, database_url, terminal_id)
    config = base / f"{terminal_id}.toml"
    done = subprocess.run([str(BIN / "smartpos"), "enroll", "--hq", url, "--code", code, "--config", str(config),
                           "--state-dir", str(base / terminal_id)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"smartpos enroll failed: {(done.stderr or done.stdout).strip()[-300:]}")
    return config


# -- progress ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich bar on stderr when it is a terminal; otherwise one line at the start. Yields ``update(done)``."""
    if not sys.stderr.isatty():
        print(f"{label} ({total})...", file=sys.stderr, flush=True)
        yield lambda _done: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(f"[bold]{label}[/bold]"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total, rate="")
        start = time.perf_counter()

        def update(done: int) -> None:
            elapsed = time.perf_counter() - start
            rate = f"{done / elapsed:,.0f}/s" if elapsed > 0 else ""
            bar.update(task, completed=done, rate=rate)

        yield update


# -- the terminal side ------------------------------------------------------------------------------------------


def card_reads(count: int) -> Iterator[Any]:
    """Card reads as the reader hands them over (test PANs; ATC and cryptogram differ per tap)."""
    from drivers.cardread import EmvCardRead
    from protocol.carddata import mask_pan

    for i in range(count):
        pan = TEST_PANS[i % len(TEST_PANS)]
        atc = i % 65536
        yield EmvCardRead(reader="bench", detected_at=0.0, read_at=0.0, scheme=SCHEMES[pan[0]],
                          masked_pan=mask_pan(pan), pan_last4=pan[-4:], aid="A0000000031010", label="BENCH",
                          preferred_name=None, track2_present=True, atc=atc,
                          cryptogram={"9F26": f"{i:016X}", "9F36": f"{atc:04X}", "9F27": "40"}, wallet=False,
                          pan=pan, expiry="2812", track2=f"{pan}D28122010000000000")


def amount_of(i: int) -> int:
    return 100 + (i * 37) % 9900


# The terminal's Sealer (protocol.envelope): a key chain seals at most 1024 envelopes, for at most 60 minutes.
CHAIN_MINUTES = round(DEFAULT_CHAIN_AGE_S / 60)
SALES_PER_MINUTE = 4  # a steady till
DEFAULT_PER_CHAIN = min(SALES_PER_MINUTE * CHAIN_MINUTES, MAX_ENVELOPES_PER_CHAIN)


def protect_at_pace(reads: Iterable[Any], make: Callable[[], Any], per_key: int) -> Iterator[Any]:
    """``CardProtection.protect`` for each read, with a fresh ``CardProtection`` (so a fresh envelope key chain)
    every ``per_key`` reads. The terminal's Sealer uses a chain for at most 1024 envelopes and 60 minutes, so a
    backlog recorded at R sales a minute has min(60 R, 1024) envelopes per chain -- and head office pays one X25519
    agreement per chain. A bench fill runs far faster than any till, so it sets that ratio explicitly instead of
    by accident."""
    protection = None
    try:
        for i, read in enumerate(reads):
            if i % per_key == 0:
                if protection is not None:
                    protection.close()
                protection = make()
            yield protection.protect(read)
    finally:
        if protection is not None:
            protection.close()


def fill_backlog(config: Path, n: int, *, per_key: int) -> tuple[int, float, str]:
    """Records ``n`` offline sales through ``QueueStore.record`` (the store offers no bulk path), each card
    protected by ``CardProtection`` (own sealed envelope; ``per_key`` envelopes per key chain). Returns
    (total amount, seconds, how).

    The fill is set-up, not what is measured, and one fsync per sale (synchronous=FULL) makes it ~260 sales/s on
    this disk: the store is filled on a tmpfs with its normal settings, closed, and its file moved to the
    terminal's state directory on disk, where the drain then runs against it."""
    from config.loading import load_settings
    from config.provisioning import load_enrollment
    from offline_queue.cardprotect import CardProtection
    from offline_queue.store import QueueStore

    settings, _ = load_settings(config)
    enrollment = load_enrollment(settings.state_dir)
    target = Path(settings.db_path)
    if target.exists():
        # `smartpos enroll` creates an empty queue; the backlog replaces it. Anything else is not ours to replace.
        with contextlib.closing(sqlite3.connect(target)) as db:
            if db.execute("SELECT COUNT(*) FROM transactions").fetchone()[0] != 0:
                raise BenchError(f"{target} already holds transactions; the backlog is built in a fresh queue")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
    shm = Path("/dev/shm")
    scratch = Path(tempfile.mkdtemp(prefix="smartpos-fill-", dir=shm if shm.is_dir() else None))
    total = 0
    start = time.perf_counter()
    try:
        cards = protect_at_pace(card_reads(n), lambda: CardProtection.from_state_dir(settings.state_dir), per_key)
        with QueueStore.open(scratch / target.name, terminal_id=enrollment.terminal_id) as store, \
                progress_bar("record", n) as update:
            for i, card in enumerate(cards):
                amount = amount_of(i)
                store.record(type="sale", amount_minor=amount, currency="EUR", card=card,
                             auth={"mode": "offline"}, reference=f"B-{i}")
                total += amount
                if i % 500 == 0:
                    update(i + 1)
            update(n)
        target.parent.mkdir(parents=True, exist_ok=True)
        for path in sorted(scratch.iterdir()):  # the database, plus its -wal if the close left one
            if path.name.startswith(target.name):
                shutil.copyfile(path, target.parent / path.name)
        os.sync()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    how = (f"QueueStore.record per sale (own sealed envelope each, {per_key} per key chain), filled on tmpfs, "
           "file moved to disk for the drain")
    return total, time.perf_counter() - start, how


def drain(config: Path, *, page_size: int, inflight: int,
          meter: CpuMeter | None = None) -> tuple[float, Any, dict[str, int], dict[str, Any]]:
    """The real sync pass, timed. Returns (seconds, SyncResult, what the terminal has left, CPU per txn)."""
    import httpx

    from config.loading import load_settings
    from config.provisioning import load_enrollment
    from offline_queue.hqclient import HeadOfficeClient
    from offline_queue.store import QueueStore
    from offline_queue.sync import SyncEngine, SyncProgress

    settings, _ = load_settings(config)
    enrollment = load_enrollment(settings.state_dir)
    url = settings.headoffice.url or enrollment.hq_url
    require_loopback(httpx.URL(url).host)
    with QueueStore.open(settings.db_path, terminal_id=enrollment.terminal_id) as store:
        total = int(store.stats().unsynced_count)
        client = HeadOfficeClient(url, enrollment.terminal_id, enrollment.terminal_key, timeout=60.0)
        try:
            with progress_bar("drain", total) as update:
                def on_progress(p: SyncProgress) -> None:
                    update(p.done)

                engine = SyncEngine(store, client, page_size=page_size, inflight=inflight, on_progress=on_progress)
                if meter is not None:
                    meter.start()
                start = time.perf_counter()
                result = engine.run_once(wait=False)
                elapsed = time.perf_counter() - start
                cpu = meter.per_txn(max(total, 1)) if meter is not None else {}
        finally:
            client.close()
        stats = store.stats()
        left = {"unsynced": int(stats.unsynced_count), "rejected": int(stats.rejected_count),
                "checkpoint": int(store.checkpoint())}
    with contextlib.closing(sqlite3.connect(f"file:{settings.db_path}?mode=ro", uri=True)) as db:
        left["envelopes_left"] = db.execute(
            "SELECT count(*) FROM transactions WHERE envelope IS NOT NULL").fetchone()[0]
    return elapsed, result, left, cpu


def hq_holdings(database_url: str, terminal_id: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(psycopg_url(database_url)) as conn:
        rows, distinct, accepted, total = conn.execute(
            "SELECT count(*), count(DISTINCT sequence), count(*) FILTER (WHERE status = 'accepted'), "
            "coalesce(sum(amount_minor) FILTER (WHERE status = 'accepted'), 0) FROM transactions "
            "WHERE terminal_id = %s", (terminal_id,)).fetchone()
    return {"rows": rows, "distinct_sequences": distinct, "accepted": accepted, "total_minor": int(total)}


# -- main -------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    terminal_id = "T-drain"
    load_1m = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="smartpos-drain-")))
        db_url = stack.enter_context(database(stack.enter_context(postgres()), "drain"))
        home = tmp / "hq"
        hq_cli(home, db_url, "merchants", "set", "M-bench", "--name", "Bench Shop")
        hq = stack.enter_context(head_office(db_url, home, workers=args.hq_workers))
        config = enroll_terminal(hq.url, home, db_url, tmp, terminal_id)
        expected_total, fill_s, fill_how = fill_backlog(config, args.n, per_key=args.envelopes_per_chain)
        meter = CpuMeter(hq.pid, database_name(db_url), self_label="terminal")
        elapsed, result, left, cpu = drain(config, page_size=args.page_size, inflight=args.inflight, meter=meter)
        held = hq_holdings(db_url, terminal_id)
    problems = []
    if not result.ok:
        problems.append(f"sync pass failed ({result.error_code}): {result.error}")
    if held != {"rows": args.n, "distinct_sequences": args.n, "accepted": args.n, "total_minor": expected_total}:
        problems.append(f"head office holds {held}, expected {args.n} accepted rows totalling {expected_total}")
    if left != {"unsynced": 0, "rejected": 0, "checkpoint": args.n, "envelopes_left": 0}:
        problems.append(f"terminal after the drain: {left}")
    if problems:
        raise BenchError("; ".join(problems))
    return {
        "drain_100k_s": round(elapsed * 100_000 / args.n, 2),
        "drain_100k_extrapolated": args.n != 100_000,
        "drain_s": round(elapsed, 3),
        "n": args.n,
        "rows_per_s": round(args.n / elapsed),
        "pages": result.pages,
        "retries": result.retries,
        "page_size": args.page_size,
        "inflight": args.inflight,
        "terminals": 1,
        "hq_workers": args.hq_workers,
        "backend": "postgresql",
        "hq_accepted": held["accepted"],
        "totals_equal": held["total_minor"] == expected_total,
        "envelopes_per_chain": args.envelopes_per_chain,
        "fill_path": fill_how,
        "fill_s": round(fill_s, 1),
        **cpu,
        "target_drain_100k_s": 20,
        "target_met": elapsed * 100_000 / args.n <= 20,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(load_1m, 2),
    }


def add_pace_option(parser: argparse.ArgumentParser) -> None:
    def per_chain(text: str) -> int:
        value = int(text)
        if not 1 <= value <= MAX_ENVELOPES_PER_CHAIN:
            raise argparse.ArgumentTypeError(f"must be 1 to {MAX_ENVELOPES_PER_CHAIN}")
        return value

    parser.add_argument("--envelopes-per-chain", type=per_chain, default=DEFAULT_PER_CHAIN, metavar="K",
                        help="envelopes sealed per envelope key chain: a chain lives <= 60 min and <= 1024 "
                             "envelopes, so a till making R sales a minute gives min(60 R, 1024); 1 = every sale "
                             f"its own chain (the worst case) (default {DEFAULT_PER_CHAIN}: {SALES_PER_MINUTE} sales "
                             "a minute)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="transactions in the backlog (default 100000)")
    parser.add_argument("--page-size", type=int, default=1000, help="transactions per upload (default 1000)")
    parser.add_argument("--inflight", type=int, default=2, help="pages on the wire at once (default 2)")
    parser.add_argument("--hq-workers", type=int, default=2, help="smartpos-hq serve --workers (default 2)")
    add_pace_option(parser)
    args = parser.parse_args(argv)
    if args.n < 1 or args.page_size < 1 or args.inflight < 1 or args.hq_workers < 1:
        parser.error("--n, --page-size, --inflight and --hq-workers must be >= 1")
    try:
        with interrupt_on_signals():
            figures = run(args)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped and the database dropped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"sync_drain: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
