"""`smartpos demo`: head office + enrolled terminal + simulated card and printer, a few payments end to end.

Everything runs locally and is stopped at the end: head office on SQLite (`smartpos-hq serve`), a private pcscd
with the vpcd virtual reader, the virtual ESC/POS printer on TCP, and the daemon (`smartpos run`). The demo then
acts as the shop's POS front end over the local API: one online sale, one forced-offline sale, one sale the
offline rules decline, one refund; then sync, batch close, receipts, settlement report and the batch CSV that
head office staff pull.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click

MERCHANT_ID = "M-DEMO"
TERMINAL_ID = "T-DEMO-1"


class DemoError(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    # The console scripts installed next to this interpreter (the project's virtualenv).
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def _process(args: list[str], log_path: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def _run(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise DemoError(f"{Path(args[0]).name} {' '.join(args[1:3])} failed: {detail}")
    return result.stdout


@click.command()
@click.option("--dir", "work_dir", type=click.Path(file_okay=False, path_type=Path),
              help="keep everything (config, queue, receipts, logs) here instead of a temporary directory")
@click.option("--profile", default="visa", show_default=True, help="simulated card profile to tap")
def demo(work_dir: Path | None, profile: str) -> None:
    """Head office + daemon + simulated card and printer: sales, a refund, sync, batch close, receipts."""
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 120)
    keep = work_dir is not None
    base = work_dir or Path(tempfile.mkdtemp(prefix="smartpos-demo-"))
    if keep and ((base / "state").exists() or (base / "hq").exists()):
        # A second run would meet its own enrolled terminal and queue; never delete a user's directory for them.
        console.print(f"[red]demo failed:[/red] {base} holds an earlier demo run; give an empty or new --dir")
        sys.exit(1)
    base.mkdir(parents=True, exist_ok=True)
    try:
        _demo(console, base.resolve(), profile)
    except DemoError as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        console.print(f"logs are in {base}")
        sys.exit(1)
    if not keep:
        console.print(f"\n[dim]files of this run: {base} (remove when done)[/dim]")


def _demo(console: Any, base: Path, profile: str) -> None:
    from rich.table import Table

    from drivers.simulators.pcscd import PrivatePcscd
    from drivers.simulators.printer import TcpPrinterServer, VirtualPrinter
    from drivers.simulators.vpcd import VpcdCard
    from protocol.amounts import format_amount
    from terminal.apiclient import LocalApi

    hq_home = base / "hq"
    hq_home.mkdir(exist_ok=True)
    hq_env = {"SMARTPOS_HQ_HOME": str(hq_home)}
    state_dir = base / "state"
    config = base / "smartpos.toml"
    hq_port = _free_port()
    hq_url = f"http://127.0.0.1:{hq_port}"

    with ExitStack() as stack:
        console.rule("[bold]1. head office")
        stack.enter_context(_process([_bin("smartpos-hq"), "serve", "--port", str(hq_port)], base / "hq.log", hq_env))

        def hq_up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", hq_port), timeout=0.2):
                    return True
            except OSError:
                return False

        _wait(hq_up, 20, "head office to listen")
        _run([_bin("smartpos-hq"), "merchants", "set", MERCHANT_ID, "--name", "Café Demo",
              "--address", "1 Example Street", "--address", "Springfield"], hq_env)
        code = _run([_bin("smartpos-hq"), "codes", "create", "--merchant", MERCHANT_ID, "--terminal", TERMINAL_ID],
                    hq_env).splitlines()[0].strip()
        console.print(f"head office on {hq_url} (SQLite in {hq_home}); enrollment code [bold]{code}[/bold]")

        console.rule("[bold]2. enroll the terminal")
        if config.exists():
            config.unlink()
        _run([_bin("smartpos"), "enroll", "--hq", hq_url, "--code", code, "--config", str(config),
              "--state-dir", str(state_dir)], {})
        console.print(f"enrolled as {TERMINAL_ID}; config {config}, keys and queue in {state_dir}")

        console.rule("[bold]3. simulated reader and printer, then the daemon")
        pcscd = PrivatePcscd(base / "pcscd")
        pcscd.start()
        stack.callback(pcscd.stop)
        printer = VirtualPrinter(base / "printed")
        server = TcpPrinterServer(printer, "127.0.0.1", 0).start()
        stack.callback(server.stop)
        with open(config, "a", encoding="utf-8") as f:
            f.write(f'\n[api]\nhost = "127.0.0.1"\nport = 0\n\n[printer]\nuri = "{server.uri}"\n\n'
                    "[sync]\ninterval_s = 2.0\n")
        (state_dir / "api.json").unlink(missing_ok=True)
        daemon_env = {**pcscd.env, "SMARTPOS_CONFIG": str(config)}
        daemon = stack.enter_context(_process([_bin("smartpos"), "run"], base / "daemon.log", daemon_env))
        _wait(lambda: (state_dir / "api.json").exists() or daemon.poll() is not None, 20, "the daemon")
        if daemon.poll() is not None:
            raise DemoError(f"the daemon stopped: see {base / 'daemon.log'}")
        url = json.loads((state_dir / "api.json").read_text())["url"]
        console.print(f"pcscd with vpcd on port {pcscd.vpcd_ports[0]}, printer at {server.uri}, daemon API {url}")
        api = stack.enter_context(LocalApi(url))

        console.rule("[bold]4. payments (the demo is the POS front end)")
        plan = [
            ("online sale", {"type": "sale", "amount_minor": 1250, "currency": "EUR", "reference": "R-1001",
                             "mode": "prefer-online"}),
            ("forced-offline sale", {"type": "sale", "amount_minor": 840, "currency": "EUR", "reference": "R-1002",
                                     "mode": "force-offline"}),
            ("offline sale over the limit", {"type": "sale", "amount_minor": 25000, "currency": "EUR",
                                             "reference": "R-1003", "mode": "force-offline"}),
            ("refund", {"type": "refund", "amount_minor": 500, "currency": "EUR", "reference": "R-1001",
                        "mode": "prefer-online"}),
        ]
        table = Table("payment", "amount", "state", "card", "authorization", "seq", "ms")
        outcomes = []
        for title, body in plan:
            payment = api.create_payment(body)
            card = VpcdCard(profile, "127.0.0.1", pcscd.vpcd_ports[0], taps=1).start()
            final = payment
            for update in api.events(payment["id"], timeout=60):
                final = update
            card.stop(2)
            final = api.payment(payment["id"])
            auth = final.get("authorization") or {}
            auth_text = f"{auth.get('method')} {auth.get('code') or ''}".strip()
            if auth.get("reason"):
                auth_text += f" ({auth['reason']})"
            timing = (final.get("timings_ms") or {}).get("card_to_approved")
            masked = (final.get("card") or {}).get("masked_pan") or ""
            table.add_row(title, format_amount(body["amount_minor"], body["currency"]), final["state"], masked,
                          auth_text, str(final.get("sequence") or ""), f"{timing:.1f}" if timing is not None else "")
            outcomes.append(final)
        console.print(table)
        console.print("[dim]ms: card detected -> approved and durably recorded, measured by the daemon[/dim]")
        approved = sum(1 for p in outcomes if p["state"] == "approved")

        console.rule("[bold]5. sync to head office")

        def synced() -> bool:
            return (api.status().get("queue") or {}).get("unsynced_count") == 0

        _wait(synced, 30, "the queue to sync")
        st = api.status()
        console.print(f"queue: {st['queue']['unsynced_count']} unsynced; head office "
                      f"{'online' if (st.get('headoffice') or {}).get('online') else 'offline'}")

        console.rule("[bold]6. batch close")
        closed = api.close_batch()
        totals = Table("scheme", "currency", "sales", "refunds", "voids", "net")
        for row in (closed.get("totals") or {}).get("by_scheme") or []:
            cur = row["currency"]
            totals.add_row(row["scheme"], cur, f"{row['sale_count']}x {format_amount(row['sale_amount_minor'], cur)}",
                           f"{row['refund_count']}x {format_amount(row['refund_amount_minor'], cur)}",
                           f"{row['void_count']}x {format_amount(row['void_amount_minor'], cur)}",
                           format_amount(row["net_amount_minor"], cur))
        console.print(f"batch {closed.get('batch')} closed: {closed.get('count')} transactions; "
                      f"head office says: {(closed.get('headoffice') or {}).get('status', 'pending')}")
        console.print(totals)

        console.rule("[bold]7. receipts from the virtual printer")
        expected = approved * 2 + 1  # merchant + customer copy per approval, then the settlement report
        printer.wait_for_receipts(expected, 20)
        for receipt in printer.receipts:
            console.print(f"[bold]receipt {receipt.index}[/bold]  text: {receipt.text_path}  png: {receipt.png_path}")
        customer = [r for r in printer.receipts if "CUSTOMER" in r.text.upper()]
        if customer:
            console.print(customer[0].text, markup=False, highlight=False)
        if printer.receipts:
            console.print("[bold]settlement report[/bold]")
            console.print(printer.receipts[-1].text, markup=False, highlight=False)

        console.rule("[bold]8. the batch at head office (CSV, as staff pull it)")
        listing = json.loads(_run([_bin("smartpos-hq"), "batches", "list", "--json"], hq_env))
        mine = [b for b in listing if b.get("terminal_id") == TERMINAL_ID and b.get("batch") == closed.get("batch")]
        if not mine:
            raise DemoError("head office has no record of the closed batch")
        csv_text = _run([_bin("smartpos-hq"), "batches", "pull", str(mine[0]["id"]), "--format", "csv"], hq_env)
        (base / "batch.csv").write_text(csv_text)
        console.print(csv_text, markup=False, highlight=False)
        console.print(f"[green]demo complete[/green]: {approved} approved, batch {mine[0]['status']}; "
                      f"CSV in {base / 'batch.csv'}")
