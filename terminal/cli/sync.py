"""`smartpos sync [--wait]`: upload the queued transactions to head office now, with a progress bar.

For a technician draining a backlog. Without ``--wait`` one pass is made and an unreachable head office is an
error (exit 1); with ``--wait`` network errors are retried with backoff until the queue is drained, each retry
said on stderr (``--timeout`` gives up after that long, exit 1; Ctrl-C stops; nothing is lost either way: what was
not acknowledged is sent again next time).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import click


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Config file (default $SMARTPOS_CONFIG or /etc/smartpos/smartpos.toml).")
@click.option("--wait", is_flag=True, help="Retry until everything is uploaded (backoff on network errors).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), metavar="SECONDS",
              help="With --wait: give up after this long (exit 1), e.g. when head office stays unreachable.")
@click.option("--page-size", type=click.IntRange(1, 5000), help="Transactions per upload (default [sync] page_size).")
@click.option("--compress", is_flag=True, help="gzip the uploads (slow uplinks).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON, no progress bar.")
@click.option("--requeue", "requeue", type=click.IntRange(1), multiple=True, metavar="SEQ",
              help="Send this dead-lettered (rejected) transaction again, e.g. once head office is fixed "
                   "(repeatable; `smartpos status` shows rejected ones).")
def sync(config_file: Path | None, wait: bool, timeout_s: float | None, page_size: int | None, compress: bool,
         as_json: bool, requeue: tuple[int, ...]) -> None:
    """Upload queued transactions to head office and report closed batches."""
    if timeout_s is not None and not wait:
        raise click.UsageError("--timeout is for --wait (without it one pass is made)")
    from config.loading import ConfigError, load_settings
    from config.provisioning import ProvisioningError, load_enrollment
    from offline_queue.hqclient import HeadOfficeClient
    from offline_queue.sync import SyncEngine, SyncProgress
    from terminal.ledger import LedgerError, open_queue

    try:
        settings, _path = load_settings(config_file)
        enrollment = load_enrollment(settings.state_dir)
    except (ConfigError, ProvisioningError) as exc:
        raise click.ClickException(str(exc)) from None
    url = settings.headoffice.url or enrollment.hq_url
    if not url:
        raise click.ClickException("no head-office URL: set [headoffice] url or enroll the terminal")
    try:
        store = open_queue(settings, enrollment)
    except LedgerError as exc:
        raise click.ClickException(str(exc)) from None
    from protocol.errors import ValidationError

    for sequence in requeue:
        try:
            store.requeue(sequence)
        except ValidationError as exc:
            store.close()
            raise click.ClickException(exc.message) from None
        if not as_json:
            click.echo(f"transaction #{sequence} queued again", err=True)
    client = HeadOfficeClient(url, enrollment.terminal_id, enrollment.terminal_key,
                              timeout=settings.headoffice.timeout_s, compress=compress)
    stop = threading.Event()
    timer = threading.Timer(timeout_s, stop.set) if timeout_s else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        if as_json:
            engine = SyncEngine(store, client, page_size=page_size or settings.sync.page_size,
                                on_retry=lambda exc, delay: click.echo(_retry_line(exc, delay), err=True))
            result = engine.run_once(wait=wait, stop=stop)
            click.echo(json.dumps(result.to_dict(), default=str))
        else:
            result = _with_progress(store, client, page_size or settings.sync.page_size, wait, stop,
                                    SyncEngine, SyncProgress)
    except KeyboardInterrupt:
        stop.set()
        raise click.ClickException("interrupted; what was not acknowledged is sent again next time") from None
    finally:
        if timer is not None:
            timer.cancel()
        client.close()
        store.close()
    if result.error_code == "stopped" and timeout_s:
        why = f" ({result.last_retry_error})" if result.last_retry_error else ""
        raise click.ClickException(f"gave up after {timeout_s:g} s{why}; {result.remaining} transactions still "
                                   "queued (nothing is lost: they are sent on the next sync)")
    if not result.ok:
        raise click.ClickException(f"sync incomplete ({result.error_code}): {result.error}; "
                                   f"{result.remaining} transactions still queued")


def _with_progress(store: Any, client: Any, page_size: int, wait: bool, stop: threading.Event, engine_cls: Any,
                   progress_cls: Any) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("[bold]sync[/bold]"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("accepted {task.fields[accepted]}  rejected {task.fields[rejected]}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        total = int(store.stats().unsynced_count)
        task = progress.add_task("sync", total=total or None, accepted=0, rejected=0)

        def on_progress(p: Any) -> None:
            progress.update(task, completed=p.done, total=p.total, accepted=p.accepted, rejected=p.rejected)

        engine = engine_cls(store, client, page_size=page_size, on_progress=on_progress,
                            on_retry=lambda exc, delay: progress.console.print(_retry_line(exc, delay),
                                                                               markup=False, highlight=False))
        result = engine.run_once(wait=wait, stop=stop)
        if not total:
            progress.update(task, total=1, completed=1)
    out = Console()
    out.print(f"accepted {result.accepted} (of which {result.duplicates} already at head office), "
              f"rejected {result.rejected}, pages {result.pages}, retries {result.retries}, "
              f"batches reported {result.batches_reported}, still queued {result.remaining}")
    # The running daemon drains the same queue: what it sent meanwhile is not this command's count, but the
    # technician asked whether the backlog is gone.
    by_daemon = total - result.remaining - result.accepted - result.rejected
    if result.remaining >= 0 and by_daemon > 0:
        out.print(f"{by_daemon} more left the queue meanwhile (uploaded by the running daemon)")
    if result.reversals_sent:
        out.print(f"reversals sent {result.reversals_sent}")
    for rej in result.rejections[:10]:
        out.print(f"  [yellow]rejected[/yellow] sequence {rej['sequence']}: {rej['reason'] or rej['code']}")
    if result.parameters_updated:
        out.print(f"parameters updated to version {result.parameters_version}")
    return result


def _retry_line(exc: Any, delay: float) -> str:
    return f"{exc.message}; retrying in {delay:.1f} s (Ctrl-C stops)"
