"""`smartpos`: the terminal's command line (daemon, technician commands, simulators).

Each command lives in its own module under ``terminal/cli/`` and is imported only when run.
"""

from __future__ import annotations

import sys

import click

from terminal import __version__
from terminal.cli.lazy import LazyGroup

COMMANDS = {
    # card reading
    "read": "terminal.cli.read:read",
    # simulators: cards, phones, tags, private pcscd, printer
    "sim": "terminal.cli.sim:sim",
    # printing
    "printer": "terminal.cli.printer:printer",
    # enrollment and sync with head office
    "enroll": "terminal.cli.enroll:enroll",
    "sync": "terminal.cli.sync:sync",
    # the daemon and the technician's payment commands
    "run": "terminal.cli.run:run",
    "selftest": "terminal.cli.selftest:selftest",
    "status": "terminal.cli.ops:status",
    "pay": "terminal.cli.ops:pay",
    "refund": "terminal.cli.ops:refund",
    "void": "terminal.cli.ops:void",
    "reprint": "terminal.cli.ops:reprint",
    "batch": "terminal.cli.ops:batch",
    "demo": "terminal.cli.demo:demo",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="smartpos")
def cli() -> None:
    """smartpos terminal: daemon, technician commands and simulators."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Unexpected errors become one redacted line and exit status 1, never a traceback."""
    try:
        cli.main(args=argv, prog_name="smartpos", standalone_mode=True)
    except SystemExit:
        raise
    except Exception as exc:  # last line of defence: a technician never sees a traceback
        from protocol.carddata import redact

        click.echo(f"smartpos: error: {redact(str(exc)) or type(exc).__name__}", err=True)
        sys.exit(1)
