"""Head-office fixtures: a PostgreSQL server (the machine's, or a throwaway cluster), throwaway databases,
``smartpos-hq serve`` processes on free ports, enrolled terminals, and chained wire transactions.

PostgreSQL: ``$PGHOST``/``$PGPORT`` (default 127.0.0.1:5432, user postgres, trust auth) if reachable; otherwise a
cluster is created with initdb/pg_ctl from /usr/lib/postgresql/*/bin in a temp dir (as the postgres user when
root, since initdb refuses root) and removed at the end of the session.
"""

from __future__ import annotations

import base64
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner

from tests.harness.procs import ProcessGroup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- PostgreSQL ------------------------------------------------------------------------------------------------


def _pg_reachable(host: str, port: int, user: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(host=host, port=port, user=user, dbname="postgres", connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@dataclass
class PgServer:
    host: str
    port: int
    user: str
    owned_dir: Path | None = None

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def admin(self) -> Any:
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True)

    def create_database(self) -> str:
        name = f"smartpos_test_{secrets.token_hex(6)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _start_cluster() -> PgServer:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("no PostgreSQL server reachable and no initdb installed (apt-get install postgresql)")
    bindir = Path(bins[-1]).parent
    base = Path(tempfile.mkdtemp(prefix="smartpos-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    run_as: list[str] = []
    user = pwd.getpwuid(os.getuid()).pw_name
    if os.getuid() == 0:
        user = "postgres"
        shutil.chown(base, user)
        shutil.chown(sock, user)
        run_as = ["runuser", "-u", user, "--"]
    port = free_port()
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sock} -c fsync=off"
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "log"),
                    "-w", "start"], check=True, capture_output=True)
    return PgServer("127.0.0.1", port, user, owned_dir=base)


def _stop_cluster(server: PgServer) -> None:
    assert server.owned_dir is not None
    bindir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1]).parent
    run_as = ["runuser", "-u", server.user, "--"] if os.getuid() == 0 else []
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(server.owned_dir / "data"), "-m", "fast", "-w",
                    "stop"], capture_output=True)
    shutil.rmtree(server.owned_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    host = os.environ.get("PGHOST", "127.0.0.1")
    port = int(os.environ.get("PGPORT", "5432"))
    user = os.environ.get("PGUSER", "postgres")
    if _pg_reachable(host, port, user):
        yield PgServer(host, port, user)
        return
    server = _start_cluster()
    try:
        yield server
    finally:
        _stop_cluster(server)


# -- head office ------------------------------------------------------------------------------------------------


@dataclass
class HQ:
    """A running ``smartpos-hq serve`` and its database. ``cli(...)`` runs admin commands on the same database."""

    url: str
    database_url: str
    home: Path
    port: int
    group: ProcessGroup
    backend: str
    proc: Any = None
    env: dict[str, str] = field(default_factory=dict)
    serve_args: tuple[str, ...] = ("--log-level", "warning")

    def cli(self, *args: str, input: str | None = None) -> str:
        from headoffice.cli import cli

        result = CliRunner().invoke(cli, [*args], env=self.env, input=input, catch_exceptions=False)
        if result.exit_code != 0:
            raise AssertionError(f"smartpos-hq {' '.join(args)} failed ({result.exit_code}): {result.output}")
        return result.output

    def start(self) -> None:
        self.proc = self.group.spawn(
            [sys.executable, "-m", "headoffice.cli", "serve", "--port", str(self.port), *self.serve_args],
            name=f"hq-{self.port}", env=self.env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"head office exited: {self.group.log_text(f'hq-{self.port}')[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("head office did not start within 30 s")

    def stop(self, *, kill: bool = False) -> None:
        import signal

        if self.proc is not None:
            ProcessGroup.stop(self.proc, sig=signal.SIGKILL if kill else signal.SIGTERM)
            self.proc = None

    def engine(self) -> Any:
        from headoffice.db import make_engine

        return make_engine(self.database_url)

    def sql(self, query: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        engine = self.engine()
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(query), params).all())
        finally:
            engine.dispose()

    def new_code(self, terminal_id: str | None = None, merchant: str = "M-1", expires: str = "1h") -> tuple[str, str]:
        terminal_id = terminal_id or f"T-{uuid.uuid4().hex[:10]}"
        code = self.cli("codes", "create", "--merchant", merchant, "--terminal", terminal_id,
                        "--expires", expires).strip().splitlines()[0]
        return code, terminal_id


def _start_hq(backend: str, tmp: Path, pg: PgServer | None) -> tuple[HQ, str | None]:
    home = tmp / "hq-home"
    dbname = None
    if backend == "postgresql":
        assert pg is not None
        dbname = pg.create_database()
        database_url = pg.url(dbname)
    else:
        database_url = f"sqlite:///{home / 'headoffice.sqlite3'}"
    port = free_port()
    group = ProcessGroup(tmp)
    env = {"SMARTPOS_HQ_HOME": str(home), "SMARTPOS_HQ_DATABASE_URL": database_url}
    hq = HQ(f"http://127.0.0.1:{port}", database_url, home, port, group, backend, env=env)
    hq.cli("merchants", "set", "M-1", "--name", "Corner Shop", "--address", "1 Main St", "--address", "Springfield")
    hq.start()
    return hq, dbname


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def hq(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HQ]:
    """One head office per back end for the session (tests use their own terminal ids, so they do not collide)."""
    pg = request.getfixturevalue("pg_server") if request.param == "postgresql" else None
    server, dbname = _start_hq(request.param, tmp_path_factory.mktemp(f"hq-{request.param}"), pg)
    try:
        yield server
    finally:
        server.group.stop_all()
        if dbname and pg is not None:
            pg.drop_database(dbname)


@pytest.fixture
def hq_pg(pg_server: PgServer, tmp_path: Path) -> Iterator[HQ]:
    """A fresh head office on its own PostgreSQL database (tests that kill/restart it)."""
    server, dbname = _start_hq("postgresql", tmp_path, pg_server)
    try:
        yield server
    finally:
        server.group.stop_all()
        if dbname:
            pg_server.drop_database(dbname)


# -- a terminal talking to it directly (HQ-level tests) ---------------------------------------------------------

TEST_PANS = ("4111111111111111", "5555555555554444", "4012888888881881", "378282246310005")


@dataclass
class WireTerminal:
    """An enrolled terminal identity that builds correctly chained wire transactions with the shared protocol
    modules and sends signed requests: for head-office tests that need exact control of what is uploaded."""

    hq: HQ
    terminal_id: str
    key: Any
    token_key: bytes
    hq_public: Any
    enrollment: dict[str, Any]
    prev_hash: str = "0" * 64
    sequence: int = 0
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    @classmethod
    def enroll(cls, hq: HQ) -> WireTerminal:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from protocol.envelope import load_public_key
        from protocol.signing import public_key_to_text

        code, _tid = hq.new_code()
        key = Ed25519PrivateKey.generate()
        r = httpx.post(f"{hq.url}/api/v1/enrollments", json={"code": code,
                                                             "public_key": public_key_to_text(key.public_key())})
        assert r.status_code == 201, r.text
        doc = r.json()
        return cls(hq, doc["terminal_id"], key, base64.b64decode(doc["token_key"]),
                   load_public_key(doc["hq_public_key"].encode()), doc)

    def txn(self, *, amount: int = 1250, type: str = "sale", currency: str = "EUR", batch: int = 1,
            pan: str = TEST_PANS[0], scheme: str = "visa", envelope_pan: str | None = None,
            reference: str | None = None, advance: bool = True, void_of: str | None = None) -> dict[str, Any]:
        """A chained wire row; a void (``type="void"``) carries ``void_of`` and, as the terminal's do, no envelope."""
        from protocol import chain, envelope, tokens
        from protocol.carddata import mask_pan

        seq = self.sequence + 1
        env = None if type == "void" else envelope.seal(self.hq_public, {"pan": envelope_pan or pan, "expiry": "2812"})
        wire = {
            "uuid": str(uuid.uuid4()), "terminal_id": self.terminal_id, "sequence": seq, "batch": batch,
            "type": type, "created_at": "2026-11-23T12:00:00.000000Z", "amount_minor": amount, "currency": currency,
            "scheme": scheme, "masked_pan": mask_pan(pan), "pan_last4": pan[-4:],
            "token": tokens.card_token(self.token_key, pan), "aid": "A0000000031010", "label": scheme.upper(),
            "entry_mode": "contactless", "wallet": False, "auth_mode": "offline", "auth_code": None,
            "auth_reason": None, "auth_id": None, "reference": reference or f"R-{seq}", "void_of": void_of,
            "envelope_sha256": chain.envelope_digest(env) if env else None,
        }
        wire["prev_hash"] = self.prev_hash
        wire["hash"] = chain.chain_hash(self.prev_hash, wire)
        wire["envelope"] = env
        if advance:
            self.sequence, self.prev_hash = seq, wire["hash"]
        return wire

    def request(self, method: str, path: str, doc: Any = None, *, terminal_id: str | None = None,
                key: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
        from protocol.signing import sign_request

        body = b"" if doc is None else orjson.dumps(doc)
        signed = sign_request(key or self.key, terminal_id or self.terminal_id, method, path, body)
        all_headers = {**signed, "content-type": "application/json", **(headers or {})}
        return self.http.request(method, self.hq.url + path, content=body, headers=all_headers)

    def upload(self, rows: list[dict[str, Any]], **kwargs: Any) -> httpx.Response:
        return self.request("POST", f"/api/v1/terminals/{self.terminal_id}/transactions",
                            {"transactions": rows}, **kwargs)

    def stored(self) -> list[Any]:
        return self.hq.sql("SELECT sequence, status, amount_minor, chain_hash FROM transactions "
                           "WHERE terminal_id = :t ORDER BY sequence", t=self.terminal_id)


@pytest.fixture
def wire_terminal(hq: HQ) -> Iterator[WireTerminal]:
    terminal = WireTerminal.enroll(hq)
    try:
        yield terminal
    finally:
        terminal.http.close()


# -- an enrolled terminal with its real queue (sync tests) --------------------------------------------------------


def emv_card(pan: str = TEST_PANS[0], scheme: str = "visa") -> Any:
    from drivers.cardread import EmvCardRead
    from protocol.carddata import mask_pan

    return EmvCardRead(
        reader="test", detected_at=0.0, read_at=0.0, scheme=scheme, masked_pan=mask_pan(pan), pan_last4=pan[-4:],
        aid="A0000000031010", label=scheme.upper(), preferred_name=None, track2_present=True, atc=1,
        cryptogram={"9F26": "1122334455667788", "9F36": "0001"}, wallet=False, pan=pan, expiry="2812",
        track2=f"{pan}D28122010000000000",
    )


@dataclass
class TerminalEnv:
    """A terminal enrolled with ``smartpos enroll`` (state dir + config file), with its real queue store."""

    hq: HQ
    config: Path
    state_dir: Path
    terminal_id: str

    @classmethod
    def enroll(cls, hq: HQ, base: Path) -> TerminalEnv:
        from terminal.cli import cli

        code, terminal_id = hq.new_code()
        config, state = base / "smartpos.toml", base / "state"
        result = CliRunner().invoke(cli, ["enroll", "--hq", hq.url, "--code", code, "--config", str(config),
                                          "--state-dir", str(state)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return cls(hq, config, state, terminal_id)

    @property
    def db_path(self) -> Path:
        from config.loading import load_settings

        return load_settings(self.config)[0].db_path

    def store(self) -> Any:
        from offline_queue.store import QueueStore

        return QueueStore.open(self.db_path, terminal_id=self.terminal_id)

    def record(self, count: int, *, amount: int = 1250, pan: str = TEST_PANS[0], scheme: str = "visa",
               type: str = "sale") -> int:
        """Record ``count`` transactions (see :func:`record_backlog`); returns their total amount."""
        return record_backlog(self.config, self.state_dir, self.terminal_id, count, amount=amount, pan=pan,
                              scheme=scheme, type=type)

    def client(self, url: str | None = None, **kwargs: Any) -> Any:
        from config.provisioning import load_enrollment
        from offline_queue.hqclient import HeadOfficeClient

        enrollment = load_enrollment(self.state_dir)
        return HeadOfficeClient(url or self.hq.url, self.terminal_id, enrollment.terminal_key, **kwargs)

    def hq_rows(self) -> tuple[int, int, int]:
        """(rows, distinct sequences, sum of accepted amounts) head office holds for this terminal."""
        count, distinct, total = self.hq.sql(
            "SELECT count(*), count(DISTINCT sequence), coalesce(sum(amount_minor), 0) FROM transactions "
            "WHERE terminal_id = :t AND status = 'accepted'", t=self.terminal_id)[0]
        return int(count), int(distinct), int(total)


def record_backlog(config: Path, state_dir: Path, terminal_id: str, count: int, *, amount: int = 1250,
                   pan: str = TEST_PANS[0], scheme: str = "visa", type: str = "sale") -> int:
    """Record ``count`` offline transactions straight into the queue of the terminal enrolled with ``config`` and
    ``state_dir`` (one sealed card reused: sealing is not what these tests are about), amounts ``amount`` to
    ``amount + 6``. Returns their total amount."""
    from config.loading import load_settings
    from offline_queue.cardprotect import CardProtection
    from offline_queue.store import QueueStore

    card = CardProtection.from_state_dir(state_dir).protect(emv_card(pan, scheme))
    total = 0
    with QueueStore.open(load_settings(config)[0].db_path, terminal_id=terminal_id) as store:
        # Filling the queue is set-up here, not what is tested: skip the per-commit fsync for speed.
        store._writer.execute("PRAGMA synchronous=OFF")
        for i in range(count):
            value = amount + (i % 7)
            store.record(type=type, amount_minor=value, currency="EUR", card=card, auth={"mode": "offline"})
            total += value
    return total


@pytest.fixture
def terminal_env(hq: HQ, tmp_path: Path) -> TerminalEnv:
    return TerminalEnv.enroll(hq, tmp_path)


def wait_until_rows(terminal: TerminalEnv, *, more_than: int, timeout: float) -> int:
    """Wait until head office holds more than ``more_than`` accepted rows of ``terminal``; return the count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = terminal.hq_rows()[0]
        if count > more_than:
            return count
        time.sleep(0.02)
    raise AssertionError(f"head office stayed at {more_than} rows for {timeout} s")
