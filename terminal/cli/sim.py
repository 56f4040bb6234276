"""`smartpos sim ...`: simulated cards, phones, tags, a private pcscd and the virtual printer."""

from __future__ import annotations

import click

from terminal.cli.lazy import LazyGroup

SIM_COMMANDS = {
    "card": "terminal.cli.sim_cards:card",
    "phone": "terminal.cli.sim_cards:phone",
    "tag": "terminal.cli.sim_cards:tag",
    "pcscd": "terminal.cli.sim_cards:pcscd",
    "printer": "terminal.cli.sim_printer:printer",
}


@click.group(cls=LazyGroup, lazy=SIM_COMMANDS)
def sim() -> None:
    """Simulators for integrators and tests (no hardware needed)."""
