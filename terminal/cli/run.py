"""`smartpos run [--config FILE]`: the daemon in the foreground (systemd Type=notify, or a shell)."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="config file (default $SMARTPOS_CONFIG, then /etc/smartpos/smartpos.toml)")
@click.option("--check", is_flag=True, help="validate the config and exit")
def run(config_file: str | None, check: bool) -> None:
    """Run the terminal daemon: payments, receipts, offline queue, sync, local API."""
    from config.loading import ConfigError, load_settings

    try:
        settings, path = load_settings(config_file)
    except ConfigError as exc:
        click.echo(f"smartpos: {exc}", err=True)
        sys.exit(2)
    from terminal.daemon import startup_problems

    # What `run --check` refuses, `run` refuses the same way (exit 2: fix the config); exit 1 is for a start that
    # fails on the machine (state dir, queue database, a port in use, head office needed and away).
    problems = startup_problems(settings)
    for problem in problems:
        click.echo(f"smartpos: config {path}: {problem}", err=True)
    if problems:
        sys.exit(2)
    if check:
        click.echo(f"config {path}: ok")
        return

    from terminal.logs import setup_logging

    setup_logging(settings.logging.level)
    # httpx imports its command-line client (rich + pygments, ~3 MB resident) whenever they are installed; the
    # daemon never runs it. A None entry makes that one import fail, and httpx then falls back to its stub, the
    # same as on an install without the CLI extras.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

    from terminal.daemon import Daemon, StartupError

    daemon = Daemon(settings)
    try:
        code = daemon.run()
    except StartupError as exc:
        import logging

        logging.getLogger("smartpos.daemon").error("daemon.start_failed", extra={"reason": str(exc)})
        click.echo(f"smartpos: cannot start: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)
