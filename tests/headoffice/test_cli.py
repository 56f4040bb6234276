"""The command lines as a technician and head-office staff run them: `smartpos enroll`, `smartpos sync`,
`smartpos-hq ...` (real processes, one-line errors, file modes)."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.harness.headoffice import HQ, TerminalEnv

BIN = Path(sys.executable).parent


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module", params=["sqlite"])
def hq(request, tmp_path_factory):  # one back end is enough for the command lines; the API runs on both
    from tests.harness.headoffice import _start_hq

    server, _db = _start_hq("sqlite", tmp_path_factory.mktemp("hq-cli"), None)
    try:
        yield server
    finally:
        server.group.stop_all()


def test_enroll_writes_keys_enrollment_and_config_with_private_modes(hq: HQ, tmp_path: Path):
    code, terminal_id = hq.new_code()
    config, state = tmp_path / "etc" / "smartpos.toml", tmp_path / "state"
    config.parent.mkdir()
    config.write_text("# installer's file\n[printer]\nuri = \"tcp://127.0.0.1:9100\"\n\n[terminal]\nid = \"old\"\n")
    done = _run(str(BIN / "smartpos"), "enroll", "--hq", hq.url, "--code", code, "--config", str(config),
                "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert terminal_id in done.stdout
    assert _mode(state) == 0o700 and _mode(state / "keys") == 0o700
    for name in ("keys/terminal_ed25519.pem", "keys/hq_x25519_public.pem", "keys/token.key", "enrollment.json"):
        assert _mode(state / name) == 0o600, name
    assert not list((state / "keys").glob("*pending*"))
    doc = json.loads((state / "enrollment.json").read_text())
    assert doc["terminal_id"] == terminal_id and doc["merchant"]["name"] == "Corner Shop"
    assert doc["hq_url"] == hq.url
    text = config.read_text()
    assert "# installer's file" in text  # the rest of an existing config is kept
    parsed = tomllib.loads(text)
    assert parsed["terminal"] == {"id": terminal_id, "state_dir": str(state)}
    assert parsed["headoffice"] == {"url": hq.url}
    assert parsed["printer"]["uri"] == "tcp://127.0.0.1:9100"
    from config.provisioning import load_enrollment

    assert load_enrollment(state).terminal_id == terminal_id  # what the daemon reads
    # Enrolling the same state dir again is refused unless forced.
    again = _run(str(BIN / "smartpos"), "enroll", "--hq", hq.url, "--code", code, "--config", str(config),
                 "--state-dir", str(state))
    assert again.returncode != 0 and "already enrolled" in again.stderr


@pytest.mark.parametrize("code,expected", [("ZZZZ-ZZZZ-ZZZZ", "unknown_code")])
def test_enroll_with_bad_code_is_one_clear_line(hq: HQ, tmp_path: Path, code, expected):
    done = _run(str(BIN / "smartpos"), "enroll", "--hq", hq.url, "--code", code, "--config",
                str(tmp_path / "c.toml"), "--state-dir", str(tmp_path / "s"))
    assert done.returncode == 1
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.toml").exists() and not (tmp_path / "s" / "enrollment.json").exists()


def test_enroll_with_head_office_down_changes_nothing(tmp_path: Path):
    from tests.harness.headoffice import free_port

    done = _run(str(BIN / "smartpos"), "enroll", "--hq", f"http://127.0.0.1:{free_port()}", "--code", "AAAA",
                "--config", str(tmp_path / "c.toml"), "--state-dir", str(tmp_path / "s"))
    assert done.returncode == 1 and "unreachable" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "c.toml").exists()


def _good_enrollment_answer() -> dict:
    import base64

    from protocol.envelope import generate_keypair, public_key_pem

    return {"terminal_id": "T-9", "hq_public_key": public_key_pem(generate_keypair()[1]).decode(),
            "token_key": base64.b64encode(os.urandom(32)).decode(), "merchant": {"id": "M-1", "name": "Shop"},
            "parameters": {"risk": {"txn_limit_minor": 5000}}, "deny_list": [], "parameters_version": 1}


@pytest.mark.parametrize("change", [
    {},  # the good answer: enrolls, so the check refuses only what is broken
    {"merchant": "Acme"},
    {"deny_list": ["x"]},
    {"deny_list": {"a": 1}},
    {"parameters": [1]},
    {"parameters": {"risk": {"txn_limit_minor": -1}}},
    {"parameters_version": -1},
    {"token_key": 123},
    {"terminal_id": ["T-9"]},
    "not an object",
], ids=lambda c: next(iter(c), "good") if isinstance(c, dict) else "text")  # fmt: skip
def test_enroll_with_an_answer_it_cannot_use_is_one_line_and_writes_nothing(tmp_path: Path, change):
    """A head office (or a proxy) answering the enrollment with a body of another shape: one clear line, and no
    config or enrollment written that would keep the daemon from starting."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answer = [_good_enrollment_answer() | change] if isinstance(change, dict) else [change]

    class Enrollments(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            body = json.dumps(answer[0]).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Enrollments)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = _run(str(BIN / "smartpos"), "enroll", "--hq", f"http://127.0.0.1:{server.server_port}", "--code",
                    "AAAA-BBBB", "--config", str(tmp_path / "c.toml"), "--state-dir", str(tmp_path / "s"))
    finally:
        server.shutdown()
        server.server_close()
    if change == {}:
        assert done.returncode == 0, done.stderr
        assert json.loads((tmp_path / "s" / "enrollment.json").read_text())["terminal_id"] == "T-9"
        return
    assert done.returncode == 1, done.stdout
    assert "head office answer" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.toml").exists() and not (tmp_path / "s" / "enrollment.json").exists()


def test_sync_command_drains_with_progress_and_json(hq: HQ, tmp_path: Path):
    terminal = TerminalEnv.enroll(hq, tmp_path)
    total = terminal.record(120)
    done = _run(str(BIN / "smartpos"), "sync", "--config", str(terminal.config), "--page-size", "50")
    assert done.returncode == 0, done.stderr
    assert "120/120" in done.stderr  # the progress bar
    assert "accepted 120" in done.stdout
    assert terminal.hq_rows() == (120, 120, total)
    terminal.record(5)
    as_json = _run(str(BIN / "smartpos"), "sync", "--json", "--config", str(terminal.config))
    assert json.loads(as_json.stdout)["accepted"] == 5


def test_sync_command_with_head_office_down_fails_in_one_line(hq: HQ, tmp_path: Path):
    from tests.harness.headoffice import free_port

    terminal = TerminalEnv.enroll(hq, tmp_path)
    terminal.record(3)
    text = terminal.config.read_text().replace(hq.url, f"http://127.0.0.1:{free_port()}")
    terminal.config.write_text(text)
    done = _run(str(BIN / "smartpos"), "sync", "--config", str(terminal.config))
    assert done.returncode == 1
    assert "3 transactions still queued" in done.stderr and "Traceback" not in done.stderr
    # --wait says each retry (it used to wait in silence, for ever) and --timeout gives up.
    for extra in ([], ["--json"]):
        waited = _run(str(BIN / "smartpos"), "sync", "--wait", "--timeout", "2", *extra, "--config",
                      str(terminal.config))
        assert waited.returncode == 1, waited.stderr
        assert "head office unreachable: ConnectError; retrying in" in waited.stderr, waited.stderr
        last = waited.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: gave up after 2 s (head office unreachable: ConnectError)"), last
        assert "3 transactions still queued" in last
    assert terminal.hq_rows()[0] == 0
    usage = _run(str(BIN / "smartpos"), "sync", "--timeout", "2", "--config", str(terminal.config))
    assert usage.returncode == 2 and "--timeout is for --wait" in usage.stderr


def test_selftest_with_head_office_down_lists_what_it_could_not_check(hq: HQ, tmp_path: Path):
    from tests.harness.headoffice import free_port

    terminal = TerminalEnv.enroll(hq, tmp_path)
    terminal.config.write_text(terminal.config.read_text().replace(hq.url, f"http://127.0.0.1:{free_port()}"))
    done = _run(str(BIN / "smartpos"), "selftest", "--json", "--config", str(terminal.config))
    assert done.returncode == 1, done.stderr
    rows = {c["check"]: c for c in json.loads(done.stdout)["checks"]}
    assert not rows["head office"]["ok"]
    for name in ("head office auth", "clock"):  # they used to be left out, as if nothing was wrong with them
        assert not rows[name]["ok"] and rows[name]["detail"] == "not checked: head office not reached", rows[name]


def test_sync_command_before_enrollment_says_what_to_do(tmp_path: Path):
    config = tmp_path / "smartpos.toml"
    config.write_text(f'[terminal]\nstate_dir = "{tmp_path / "state"}"\n')
    done = _run(str(BIN / "smartpos"), "sync", "--config", str(config))
    assert done.returncode == 1 and "smartpos enroll" in done.stderr and "Traceback" not in done.stderr


def test_hq_cli_codes_tokens_parameters_and_errors(hq: HQ, tmp_path: Path, capsys, monkeypatch):
    from headoffice.cli import main

    for name, value in hq.env.items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> tuple[int, str, str]:
        """The console entry point in-process (what the `smartpos-hq` script calls), exit status and output."""
        with pytest.raises(SystemExit) as done:
            main(list(args))
        out = capsys.readouterr()
        return int(done.value.code or 0), out.out, out.err

    code, out, _ = run("codes", "create", "--merchant", "M-1", "--terminal", "T-cli-1", "--expires", "30m", "--json")
    assert code == 0 and json.loads(out)["terminal_id"] == "T-cli-1"
    code, _, err = run("codes", "create", "--merchant", "M-1", "--terminal", "T-cli-2", "--expires", "soon")
    assert code == 2 and "duration" in err
    code, _, err = run("codes", "create", "--merchant", "M-1", "--terminal", "bad id!")
    assert code == 1 and "terminal id" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # A mistyped merchant id does not make a merchant nobody set up (its batches and receipts would go there).
    code, _, err = run("codes", "create", "--merchant", "M-l", "--terminal", "T-cli-typo")
    assert code == 1 and "no merchant 'M-l'" in err and "merchants set M-l" in err
    assert "M-l" not in hq.cli("terminals", "list")
    code, out, _ = run("tokens", "create", "--name", "accounting")
    assert code == 0 and out.startswith("hq_")
    code, _, err = run("tokens", "create", "--name", "accounting")
    assert code == 1 and "exists" in err
    assert "accounting" in run("tokens", "list")[1]
    # A revoked token's name can be given to its replacement (rotating a leaked token); the old one stays revoked.
    assert run("tokens", "revoke", "--name", "accounting")[0] == 0
    code, out, _ = run("tokens", "create", "--name", "accounting")
    assert code == 0 and out.startswith("hq_")
    listed = run("tokens", "list")[1]
    assert "accounting (revoked #" in listed
    # Without --name (as the contract writes the command) the token is named after its creation time.
    code, out, err = run("tokens", "create")
    assert code == 0 and out.startswith("hq_") and len(out.split()) == 1
    named = err.split("'")[1]
    assert named.startswith("token-20") and named in run("tokens", "list")[1]
    assert httpx.get(f"{hq.url}/api/v1/batches", headers={"authorization": f"Bearer {out.strip()}"}).status_code == 200
    code, _, err = run("parameters", "set", "no_such_limit=5")
    assert code == 1 and "no_such_limit" in err and len(err.strip().splitlines()) == 1
    code, _, err = run("parameters", "set", "txn_limit_minor=abc")
    assert code == 1 and "txn_limit_minor" in err and len(err.strip().splitlines()) == 1
    code, _, err = run("codes", "create", "--merchant", "M-1", "--terminal", "T-cli-3", "--expires", "9" * 20 + "d")
    assert code == 2 and "longest duration" in err and "Traceback" not in err
    # A command that only reads refuses a database file that is not there instead of creating an empty one.
    typo = tmp_path / "typo" / "headoffice.sqlite3"
    code, _, err = run("batches", "list", "--database-url", f"sqlite:///{typo}")
    assert code == 1 and "no head-office database" in err and not typo.parent.exists()
    code, out, _ = run("parameters", "set", "txn_limit_minor=2500")
    assert code == 0 and "version" in out
    assert json.loads(run("parameters", "show")[1])["parameters"]["txn_limit_minor"] == 2500
    version = json.loads(run("parameters", "show")[1])["version"]
    run("parameters", "set", "txn_limit_minor=2500")  # no change: no new version for every terminal to fetch
    assert json.loads(run("parameters", "show")[1])["version"] == version
    code, _, err = run("batches", "pull", "999999")
    assert code == 1 and "no batch 999999" in err
    code, _, _ = run("batches", "pull", "999999", "--out", str(tmp_path / "x.csv"))
    assert code == 1 and not (tmp_path / "x.csv").exists()
    # The installed script is the same entry point.
    assert _run(str(BIN / "smartpos-hq"), "--version").stdout.startswith("smartpos-hq")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_hq_reading_commands_create_no_schema_in_a_database_that_has_none(backend: str, tmp_path: Path, request):
    """A mistyped --database-url that names a database that exists (another application's, PostgreSQL's own) is
    refused by the commands that only read, which used to create head office's tables there and show nothing."""
    from sqlalchemy import create_engine, inspect

    pg = request.getfixturevalue("pg_server") if backend == "postgresql" else None
    if pg is not None:
        dbname = pg.create_database()
        url = pg.url(dbname)
    else:
        empty = tmp_path / "other.sqlite3"
        create_engine(f"sqlite:///{empty}").connect().close()
        url = f"sqlite:///{empty}"
    try:
        for args in (["batches", "list"], ["batches", "pull", "1"], ["parameters", "show"], ["tokens", "list"],
                     ["deny", "list"], ["terminals", "list"], ["authorizations", "list"]):
            done = _run(str(BIN / "smartpos-hq"), *args, "--database-url", url, "--home", str(tmp_path / "hq"))
            assert done.returncode == 1 and "no head-office schema" in done.stderr, (args, done.stderr)
            assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        engine = create_engine(url)
        try:
            assert inspect(engine).get_table_names() == []
        finally:
            engine.dispose()
        # The schema made, the same command works.
        made = _run(str(BIN / "smartpos-hq"), "db", "upgrade", "--database-url", url, "--home", str(tmp_path / "hq"))
        assert made.returncode == 0, made.stderr
        listed = _run(str(BIN / "smartpos-hq"), "batches", "list", "--database-url", url, "--home",
                      str(tmp_path / "hq"))
        assert listed.returncode == 0, listed.stderr
        # Showing the parameters of a head office that stored none yet shows the defaults and stores nothing.
        shown = _run(str(BIN / "smartpos-hq"), "parameters", "show", "--database-url", url, "--home",
                     str(tmp_path / "hq"))
        assert shown.returncode == 0 and json.loads(shown.stdout)["version"] == 1, shown.stderr
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                assert conn.exec_driver_sql("SELECT count(*) FROM parameter_sets").scalar() == 0
                conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")  # a newer smartpos-hq's
        finally:
            engine.dispose()
        newer = _run(str(BIN / "smartpos-hq"), "batches", "list", "--database-url", url, "--home",
                     str(tmp_path / "hq"))
        assert newer.returncode == 1 and "newer than this smartpos-hq knows" in newer.stderr, newer.stderr
    finally:
        if pg is not None:
            pg.drop_database(dbname)


def test_enroll_again_refuses_to_strand_unsynced_transactions(hq: HQ, tmp_path: Path):
    """Re-enrolling replaces the key that signs uploads: with transactions still queued it is refused (the code is
    not spent); once they are synced it goes ahead and keeps the old terminal's queue under another name."""
    terminal = TerminalEnv.enroll(hq, tmp_path)
    terminal.record(2)
    code, new_id = hq.new_code()
    args = (str(BIN / "smartpos"), "enroll", "--hq", hq.url, "--code", code, "--config", str(terminal.config),
            "--state-dir", str(terminal.state_dir), "--force")
    refused = _run(*args)
    assert refused.returncode == 1 and "2 transaction(s)" in refused.stderr and "smartpos sync" in refused.stderr
    assert json.loads((terminal.state_dir / "enrollment.json").read_text())["terminal_id"] == terminal.terminal_id

    synced = _run(str(BIN / "smartpos"), "sync", "--wait", "--config", str(terminal.config))
    assert synced.returncode == 0, synced.stderr
    done = _run(*args)  # the same code: it was not spent by the refusal
    assert done.returncode == 0, done.stderr
    assert f"synced queue of terminal {terminal.terminal_id} was kept" in done.stderr
    assert json.loads((terminal.state_dir / "enrollment.json").read_text())["terminal_id"] == new_id
    kept = list(terminal.state_dir.glob(f"queue.sqlite.{terminal.terminal_id}.*"))
    assert any(not p.name.endswith(("-wal", "-shm")) for p in kept), kept
    from offline_queue.store import QueueStore

    with QueueStore.open(terminal.db_path, terminal_id=new_id) as store:  # the new terminal's own, empty queue
        assert store.stats().unsynced_count == 0 and store.last_transaction() is None


def test_enroll_keeps_the_installed_configs_mode_and_owner(hq: HQ, tmp_path: Path):
    """The systemd install makes /etc/smartpos/smartpos.toml 0640 root:smartpos; enroll (as root) must not turn it
    into 0600 root:root, which the daemon's user could no longer read."""
    code, _terminal_id = hq.new_code()
    config = tmp_path / "etc" / "smartpos.toml"
    config.parent.mkdir()
    config.write_text("[printer]\nuri = \"tcp://127.0.0.1:9100\"\n")
    os.chmod(config, 0o640)
    if os.geteuid() == 0:
        os.chown(config, 0, 65534)  # group nogroup stands in for the smartpos group
    before = config.stat()
    done = _run(str(BIN / "smartpos"), "enroll", "--hq", hq.url, "--code", code, "--config", str(config),
                "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 0, done.stderr
    after = config.stat()
    assert _mode(config) == 0o640 and (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert "[headoffice]" in config.read_text()


def _enroll_as_nobody(hq: HQ, code: str, config: Path, base: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`smartpos enroll` run as user and group nobody (standing in for the daemon's user), with a state directory
    of its own under ``base``."""
    state = base / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(BIN / "smartpos"), "enroll",
         "--hq", hq.url, "--code", code, "--config", str(config), "--state-dir", str(state)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(base)})
    return state, done


def _mount_tmpfs(where: Path, options: str) -> None:
    """A small filesystem at ``where`` (the caller unmounts it); the test is skipped where none can be mounted."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.strip()}")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny filesystem and switching users need root")
def test_enroll_that_cannot_finish_rewriting_the_config_in_place_puts_the_old_text_back(hq: HQ, tmp_path_factory):
    """The daemon's user may write the installed config but not its directory, so enroll rewrites the file in
    place; the disk fills up half-way through. The old text is put back byte for byte (a half-written config would
    stop the daemon from starting) and the technician is told what to do; the terminal itself is enrolled."""
    import tempfile

    code, terminal_id = hq.new_code()
    base = Path(tempfile.mkdtemp(prefix="smartpos-enroll-full-"))
    etc = base / "etc"
    etc.mkdir()
    _mount_tmpfs(etc, "size=64k,mode=0755")
    try:
        os.chmod(base, 0o755)
        config = etc / "smartpos.toml"
        # one page of text: truncating it frees one page, and the enrolled text needs two
        head, tail = "# installed by root\n", '[printer]\nuri = "tcp://127.0.0.1:9100"\n'
        old = head + "# " + "x" * (4060 - len(head) - len(tail) - 3) + "\n" + tail
        assert len(old) == 4060
        config.write_text(old)
        os.chown(config, 0, 65534)
        os.chmod(config, 0o664)  # group-writable for the daemon's group (nogroup stands in for it)
        filler = os.open(etc / "filler", os.O_WRONLY | os.O_CREAT, 0o600)  # the rest of the filesystem full
        try:
            with pytest.raises(OSError) as full:
                while True:
                    os.write(filler, b"\0" * 4096)
            assert full.value.errno == errno.ENOSPC
        finally:
            os.close(filler)
        state, as_daemon_user = _enroll_as_nobody(hq, code, config, base)
        assert as_daemon_user.returncode == 1, as_daemon_user.stdout + as_daemon_user.stderr
        err = as_daemon_user.stderr
        assert f"cannot rewrite {config}" in err and "it was left as it was" in err and "Traceback" not in err
        assert "[headoffice] url by hand" in err
        assert config.read_text() == old, len(config.read_text())
        assert json.loads((state / "enrollment.json").read_text())["terminal_id"] == terminal_id
    finally:
        import shutil

        subprocess.run(["umount", "-l", str(etc)], check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_enroll_as_a_user_who_cannot_write_the_config_spends_no_code(hq: HQ, tmp_path_factory):
    """`sudo -u smartpos smartpos enroll` with a root-owned config: refused before head office is asked, so the
    same code still enrolls once run as a user who may write the config."""
    import tempfile

    code, terminal_id = hq.new_code()
    base = Path(tempfile.mkdtemp(prefix="smartpos-enroll-"))
    try:
        os.chmod(base, 0o755)
        etc = base / "etc"
        etc.mkdir(mode=0o755)
        config = etc / "smartpos.toml"
        config.write_text("# installed by root\n")
        os.chmod(config, 0o644)
        state, as_nobody = _enroll_as_nobody(hq, code, config, base)
        assert as_nobody.returncode == 1, as_nobody.stdout + as_nobody.stderr
        assert "cannot write the config" in as_nobody.stderr and "code is still unused" in as_nobody.stderr
        assert "Traceback" not in as_nobody.stderr and not list(state.iterdir())
        assert config.read_text() == "# installed by root\n"
        done = _run(str(BIN / "smartpos"), "enroll", "--hq", hq.url, "--code", code, "--config", str(config),
                    "--state-dir", str(state))
        assert done.returncode == 0 and terminal_id in done.stdout, done.stderr
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_enroll_refuses_a_broken_config_before_spending_the_code(hq: HQ, tmp_path: Path):
    """A typo in the existing config: before, the state dir silently fell back to /var/lib/smartpos, the code was
    spent, then the config was refused, and the retry after the fix got `code_used`."""
    code, terminal_id = hq.new_code()
    config, state = tmp_path / "smartpos.toml", tmp_path / "state"
    config.write_text(f'[terminal]\nstate_dir = "{state}"\n\n[printer]\nuri = "tcp://192.168.1.50:9100\n')
    args = (str(BIN / "smartpos"), "enroll", "--hq", hq.url, "--code", code, "--config", str(config))
    refused = _run(*args)
    assert refused.returncode == 1 and "invalid TOML" in refused.stderr and "code is still unused" in refused.stderr
    assert not state.exists()
    config.write_text(f'[terminal]\nstate_dir = "{state}"\n\n[printer]\nurl = "tcp://192.168.1.50:9100"\n')
    refused = _run(*args)  # parses, but a key the daemon refuses
    assert refused.returncode == 1 and "printer.url: unknown key" in refused.stderr, refused.stderr
    config.write_text(f'[terminal]\nstate_dir = "{state}"\n\n[printer]\nuri = "tcp://192.168.1.50:9100"\n')
    done = _run(*args)  # the same code: never spent
    assert done.returncode == 0, done.stderr
    assert json.loads((state / "enrollment.json").read_text())["terminal_id"] == terminal_id


def test_enroll_again_refuses_while_a_reversal_is_owed_to_head_office(hq: HQ, tmp_path: Path):
    """A reversal queued by terminal A must reach head office as A: re-enrolling as B is refused until then."""
    terminal = TerminalEnv.enroll(hq, tmp_path)
    with terminal.store() as store:
        store.queue_reversal(idempotency_key="pay-123", type="sale", amount_minor=4200, currency="EUR",
                             reason="timeout")
    code, _new_id = hq.new_code()
    refused = _run(str(BIN / "smartpos"), "enroll", "--hq", hq.url, "--code", code, "--config", str(terminal.config),
                   "--state-dir", str(terminal.state_dir), "--force")
    assert refused.returncode == 1 and "1 reversal(s) or unfinished payment(s)" in refused.stderr, refused.stderr
    assert json.loads((terminal.state_dir / "enrollment.json").read_text())["terminal_id"] == terminal.terminal_id


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny filesystem needs root")
def test_enroll_that_runs_out_of_space_in_the_state_dir_can_be_run_again_with_the_same_code(hq: HQ, tmp_path):
    """No inode left for enrollment.json: before, the pending key had already been renamed, so the retry made a
    new key and head office answered `code_used`. Now the same command finishes the enrollment."""
    code, terminal_id = hq.new_code()
    state = tmp_path / "state"
    state.mkdir()
    # root, keys, pending key + code, the head-office key, the token key, the terminal key: no inode for the rest
    _mount_tmpfs(state, "size=256k,nr_inodes=7,mode=0700")
    try:
        args = (str(BIN / "smartpos"), "enroll", "--hq", hq.url, "--code", code, "--config",
                str(tmp_path / "smartpos.toml"), "--state-dir", str(state))
        full = _run(*args)
        assert full.returncode == 1 and "cannot write the enrollment under" in full.stderr, full.stderr
        assert "Traceback" not in full.stderr and not (state / "enrollment.json").exists()
        subprocess.run(["mount", "-o", "remount,nr_inodes=64", str(state)], check=True)
        again = _run(*args)
        assert again.returncode == 0, again.stderr
        assert json.loads((state / "enrollment.json").read_text())["terminal_id"] == terminal_id
        assert not list((state / "keys").glob("*pending*"))
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
