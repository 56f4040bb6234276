"""The payment state machine: states, the transitions allowed between them, and how a restart resolves them.

``waiting_for_card`` -> ``reading`` -> ``authorizing`` -> ``approved`` | ``declined`` | ``failed``; a wait or a
read can end ``cancelled`` or ``timed_out``. A read that fails (card pulled away, unreadable card) goes back to
``waiting_for_card`` so the customer can tap again until the card timeout. Every transition is stored before
anyone is told about it; ``approved`` is stored in the same commit as the transaction it approves.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    WAITING_FOR_CARD = "waiting_for_card"
    READING = "reading"
    AUTHORIZING = "authorizing"
    APPROVED = "approved"
    DECLINED = "declined"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


ACTIVE: frozenset[State] = frozenset({State.WAITING_FOR_CARD, State.READING, State.AUTHORIZING})
FINAL: frozenset[State] = frozenset(set(State) - ACTIVE)
# The front end may still cancel before head office or the risk rules are asked.
CANCELLABLE: frozenset[State] = frozenset({State.WAITING_FOR_CARD, State.READING})

_ALLOWED: dict[State, frozenset[State]] = {
    State.WAITING_FOR_CARD: frozenset({State.READING, State.CANCELLED, State.TIMED_OUT, State.FAILED}),
    State.READING: frozenset(
        {State.AUTHORIZING, State.WAITING_FOR_CARD, State.CANCELLED, State.TIMED_OUT, State.FAILED, State.DECLINED}
    ),
    State.AUTHORIZING: frozenset({State.APPROVED, State.DECLINED, State.FAILED}),
}

PAYMENT_TYPES: tuple[str, ...] = ("sale", "refund")


class InvalidTransition(Exception):
    def __init__(self, current: State, target: State) -> None:
        super().__init__(f"payment cannot go from {current} to {target}")
        self.current = current
        self.target = target


def can_transition(current: State, target: State) -> bool:
    return target in _ALLOWED.get(current, frozenset())


def check_transition(current: State | str, target: State | str) -> State:
    """Return ``target`` as a State, or raise ``InvalidTransition`` (a bug in the flow, never user input)."""
    cur, tgt = State(current), State(target)
    if not can_transition(cur, tgt):
        raise InvalidTransition(cur, tgt)
    return tgt


def is_final(state: State | str) -> bool:
    return State(state) in FINAL


def resolve_after_restart(state: State | str, *, recorded: bool) -> tuple[State, str | None]:
    """How a payment found in ``state`` after a crash or restart ends.

    A recorded transaction is the proof of approval (it was committed before anyone could be told "approved"),
    so it wins whatever state was stored. Without a record, an active payment cannot have been approved:
    it ends ``failed`` with reason ``interrupted`` and the front end asks for a new payment.
    """
    st = State(state)
    if recorded:
        return State.APPROVED, None
    if st in FINAL:
        return st, None
    return State.FAILED, "interrupted"
