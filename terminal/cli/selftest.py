"""`smartpos selftest [--print]`: is this terminal ready to take payments? A table of checks, exit 0/1.

Checks: config, enrollment, queue database (opens, migrations, hash chain), card readers, printer (status, optional
test page), head office (reachable, accepts this terminal's signature), clock skew against head office. When the
daemon is running, readers and printer are taken from its status (it owns the devices).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import click
import orjson

from protocol.signing import CLOCK_TOLERANCE_S


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warn: bool = False  # shown, but does not fail the selftest

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "warning": self.warn, "detail": self.detail}


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="config file")
@click.option("--print", "test_print", is_flag=True, help="also print the printer's test page")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def selftest(config_file: str | None, test_print: bool, as_json: bool) -> None:
    """Check config, database, readers, printer, head office and clock; exit 0 when all pass."""
    checks = run_checks(config_file, test_print=test_print)
    ok = all(c.ok or c.warn for c in checks)
    if as_json:
        click.echo(orjson.dumps({"ok": ok, "checks": [c.to_dict() for c in checks]}).decode())
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="smartpos selftest")
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail")
        for c in checks:
            # A warning shows as one even on a check that passed (little disk left, no printer, no status).
            mark = "[yellow]warn[/yellow]" if c.warn else ("[green]ok[/green]" if c.ok else "[red]FAIL[/red]")
            table.add_row(c.name, mark, c.detail)
        Console().print(table)
    sys.exit(0 if ok else 1)


def run_checks(config_file: str | None, *, test_print: bool = False) -> list[Check]:
    from config.loading import ConfigError, load_settings

    checks: list[Check] = []
    try:
        settings, path = load_settings(config_file)
    except ConfigError as exc:
        return [Check("config", False, str(exc))]
    from terminal.daemon import startup_problems

    problems = startup_problems(settings)
    checks.append(Check("config", not problems, "; ".join(problems) if problems else
                        f"{path}" + ("" if path.exists() else " (not found: defaults)")))

    from config.provisioning import ProvisioningError, load_enrollment

    try:
        enrollment = load_enrollment(settings.state_dir)
        checks.append(Check("enrollment", True, f"terminal {enrollment.terminal_id}, merchant "
                                                f"{(enrollment.merchant or {}).get('name', '?')}"))
    except ProvisioningError as exc:
        checks.append(Check("enrollment", False, str(exc)))
        enrollment = None

    if enrollment is not None:
        checks.append(_check_database(settings, enrollment))
    checks.append(_check_disk(settings))

    daemon_status, daemon_problem = _daemon_status(settings)
    if daemon_problem is not None:
        # Running (it holds the readers and printer) but not usable: opening them here would fight it.
        checks.append(Check("daemon", False, f"running but {daemon_problem}"))
        checks.append(Check("readers", False, "not checked: the daemon holds them"))
        checks.append(Check("printer", False, "not checked: the daemon holds it"))
    else:
        checks.append(Check("daemon", daemon_status is not None,
                            "running" if daemon_status is not None else "not running (`smartpos run`)",
                            warn=daemon_status is None))
        checks.extend(_check_readers(settings, daemon_status))
        checks.append(_check_printer(settings, daemon_status, enrollment, test_print))
    if enrollment is not None:
        checks.extend(_check_headoffice(settings, enrollment))
    return checks


def _check_database(settings: Any, enrollment: Any) -> Check:
    from offline_queue.errors import StoreError
    from offline_queue.store import QueueStore

    if not settings.db_path.exists():  # not created here: a new queue must first learn its chain from head office
        return Check("queue database", False, f"{settings.db_path} is missing; start smartpos with head office "
                                              "reachable to create it (see docs/offline-queue.md)")
    try:
        with QueueStore.open(settings.db_path, terminal_id=enrollment.terminal_id) as store:
            last = store.verify()
            stats = store.stats()
        return Check("queue database", True, f"{settings.db_path}: chain verified to #{last}, "
                                            f"{stats.unsynced_count} unsynced")
    except StoreError as exc:
        return Check("queue database", False, exc.message)
    except Exception as exc:  # a broken chain (ChainError) or anything else is a failed check, not a crash
        return Check("queue database", False, f"{type(exc).__name__}: {exc}")


# Free space under the queue: below the first no sale can be recorded for long (each one is a few kB with its
# WAL frames, and SQLite needs room to checkpoint); below the second the shop should be told before it is full.
DISK_FAIL_BYTES = 8 * 2**20
DISK_WARN_BYTES = 64 * 2**20


def _check_disk(settings: Any) -> Check:
    """Room left for the queue (the daemon declines every sale once the disk is full)."""
    import os

    directory = settings.db_path.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        st = os.statvfs(directory)
    except OSError as exc:
        return Check("disk", False, f"cannot read free space of {directory}: {exc.strerror}")
    free = st.f_bavail * st.f_frsize
    detail = f"{_mib(free)} free of {_mib(st.f_blocks * st.f_frsize)} on {directory}"
    if free < DISK_FAIL_BYTES:
        return Check("disk", False, f"{detail}: too little to record sales (needs {_mib(DISK_FAIL_BYTES)}); free "
                                    "space or the terminal will decline every payment")
    if st.f_favail == 0 and st.f_files:
        return Check("disk", False, f"{detail}, but no free inodes: new files (the queue's WAL) cannot be created")
    return Check("disk", True, detail, warn=free < DISK_WARN_BYTES)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _daemon_status(settings: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(the running daemon's status, None); (None, None) when no daemon runs; (None, why) when one runs but cannot
    be used (no answer, a wrong [api] token)."""
    from terminal.apiclient import ApiCallError, LocalApi, api_url

    try:
        with LocalApi(api_url(settings), token=settings.api.token, timeout=2.0) as api:
            return api.status(), None
    except ApiCallError as exc:
        if exc.code == "daemon_unreachable":
            return None, None
        return None, f"not usable ({exc.code}: {exc.message})"


def _open_nfcpy(path: str, wait_s: float = 3.0) -> dict[str, Any]:
    """The status of the nfcpy reader at ``path`` once its worker tried to open it (or after ``wait_s``)."""
    import time

    from drivers.nfc_reader import open_reader

    reader = open_reader(path)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            status = reader.status()
            if status["state"] != "absent" or time.monotonic() > deadline:
                return status
            time.sleep(0.05)
    finally:
        reader.close()


def _check_readers(settings: Any, daemon_status: dict[str, Any] | None) -> list[Check]:
    if daemon_status is not None:
        readers = daemon_status.get("readers") or []
    else:
        readers = []
        if settings.readers.pcsc:
            from drivers.pcsc import PcscReaders

            pcsc = PcscReaders(settings.readers.pcsc_filter).start()
            try:
                pcsc.wait_ready(3.0)
                status = pcsc.status()
            finally:
                pcsc.close()
            readers.append(status)
        for path in settings.readers.nfcpy:
            readers.append(_open_nfcpy(path))  # no daemon holds it: open it here, briefly
    if not readers:
        return [Check("readers", False, "no card reader found")]
    checks = []
    for reader in readers:
        state = reader.get("state")
        ok = state in ("ready", "card_present")
        names = ", ".join(str(r.get("name")) for r in reader.get("readers") or [])
        detail = f"{state} {reader.get('detail') or ''}".strip() + (f" [{names}]" if names else "")
        checks.append(Check(f"reader {reader.get('name')}", ok, detail))
    return checks


def _check_printer(settings: Any, daemon_status: dict[str, Any] | None, enrollment: Any, test_print: bool) -> Check:
    if not settings.printer.uri:
        return Check("printer", True, "none configured", warn=True)
    from drivers.printer import parse_uri, query_status
    from protocol.errors import ValidationError
    from terminal.receipts import configured_profile

    try:
        profile = configured_profile(settings)
    except ValidationError as exc:
        return Check("printer", False, exc.message)
    reports_status = parse_uri(settings.printer.uri).status_enabled  # file: printers and ?status=0 cannot
    no_status = "this connection does not report status"  # ... which is no failure, only unknown
    if test_print and daemon_status is not None:
        return _print_through_daemon(settings)
    if test_print:
        try:
            _print_test_page(settings, profile, enrollment)
        except Exception as exc:
            return Check("printer", False, f"test page failed: {exc}")
        if not reports_status:
            return Check("printer", True, f"test page sent; {no_status}", warn=True)
        status = query_status(settings.printer.uri, profile=profile, timeout=settings.printer.status_timeout_s)
        return Check("printer", status.ready, f"test page sent; {status.summary} {status.detail}".strip())
    if not reports_status:
        opened = query_status(settings.printer.uri, profile=profile, timeout=settings.printer.status_timeout_s)
        if opened.online is False:  # the device node is missing or not writable
            return Check("printer", False, f"{settings.printer.uri}: {opened.detail}")
        return Check("printer", True, f"{settings.printer.uri}: opens; {no_status}", warn=True)
    if daemon_status is not None:
        printer = daemon_status.get("printer") or {}
        state = printer.get("state", "unknown")
        age = printer.get("checked_age_s")
        seen = f"from the daemon, checked {age:.0f} s ago" if isinstance(age, int | float) else "from the daemon"
        detail = f"{state} ({seen}) {printer.get('detail') or ''}".strip()
        return Check("printer", state in ("ok", "paper_low"), detail, warn=state == "paper_low")
    status = query_status(settings.printer.uri, profile=profile, timeout=settings.printer.status_timeout_s)
    return Check("printer", status.ready, f"{settings.printer.uri}: {status.summary} {status.detail}".strip(),
                 warn=status.summary == "paper_low")


PRINT_WAIT_S = 20.0  # how long selftest --print follows the daemon's test page job


def _print_through_daemon(settings: Any) -> Check:
    """The test page through the running daemon's print queue: it owns the printer (a second writer to a serial or
    USB device, or a second connection to a network printer, mixes or loses what the daemon is printing)."""
    import time

    from terminal.apiclient import ApiCallError, LocalApi, api_url

    with LocalApi(api_url(settings), token=settings.api.token, timeout=5.0) as api:
        try:
            job = api.print_test_page()
            deadline = time.monotonic() + PRINT_WAIT_S
            while job.get("state") in ("pending", "sending") and time.monotonic() < deadline:
                time.sleep(0.2)
                job = api.print_job(job["id"])
        except ApiCallError as exc:
            return Check("printer", False, f"test page through the daemon: {exc.code}: {exc.message}")
    state = job.get("state")
    if state == "printed":
        return Check("printer", True, f"test page printed by the daemon (job {job['id']})")
    if state in ("pending", "sending"):
        return Check("printer", False, f"test page still {state} after {PRINT_WAIT_S:g} s (job {job['id']}; the "
                                       f"daemon keeps trying){': ' + job['error'] if job.get('error') else ''}")
    return Check("printer", False, f"test page {state} (job {job['id']}): {job.get('error') or 'no detail'}")


def _print_test_page(settings: Any, profile: Any, enrollment: Any) -> None:
    from drivers.printer import print_bytes
    from terminal.receipt import make_test_page, render_escpos

    model = make_test_page(profile, merchant=(enrollment.merchant if enrollment else {}),
                           terminal_id=enrollment.terminal_id if enrollment else "")
    print_bytes(settings.printer.uri, render_escpos(model, profile), profile=profile,
                timeout=settings.printer.timeout_s)


def _check_headoffice(settings: Any, enrollment: Any) -> list[Check]:
    from offline_queue.hqclient import HeadOfficeClient, HeadOfficeError

    url = settings.headoffice.url or enrollment.hq_url
    if not url:
        return [Check("head office", False, "no URL configured")]
    checks = []
    with HeadOfficeClient(url, enrollment.terminal_id, enrollment.terminal_key,
                          timeout=settings.headoffice.timeout_s) as client:
        try:
            offset = client.clock_offset()
            checks.append(Check("head office", True, f"{url} reachable"))
        except HeadOfficeError as exc:
            # The rows it could not check are listed as such: a report without them read as if they had passed.
            return [Check("head office", False, f"{url}: {exc.message}"),
                    Check("head office auth", False, "not checked: head office not reached"),
                    Check("clock", False, "not checked: head office not reached")]
        try:
            client.ping()
            checks.append(Check("head office auth", True, f"signed request as {enrollment.terminal_id} accepted"))
        except HeadOfficeError as exc:
            checks.append(Check("head office auth", False, f"{exc.code}: {exc.message}"))
    # offset = head office - terminal: a terminal clock that runs fast is ahead (+) of head office
    checks.append(Check("clock", abs(offset) <= CLOCK_TOLERANCE_S,
                        f"terminal {-offset:+.2f} s vs head office (limit ±{CLOCK_TOLERANCE_S:.0f} s)"))
    return checks
