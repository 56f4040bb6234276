import itertools

import pytest

from terminal.payment import (
    ACTIVE,
    FINAL,
    InvalidTransition,
    State,
    can_transition,
    check_transition,
    resolve_after_restart,
)


def test_happy_path_is_allowed():
    path = [State.WAITING_FOR_CARD, State.READING, State.AUTHORIZING, State.APPROVED]
    for current, target in itertools.pairwise(path):
        assert check_transition(current, target) == target


@pytest.mark.parametrize("final", sorted(FINAL))
def test_nothing_leaves_a_final_state(final):
    for target in State:
        assert not can_transition(final, target)


def test_cannot_approve_without_authorizing():
    with pytest.raises(InvalidTransition):
        check_transition(State.WAITING_FOR_CARD, State.APPROVED)
    with pytest.raises(InvalidTransition):
        check_transition(State.READING, State.APPROVED)


def test_cannot_cancel_while_authorizing():
    assert not can_transition(State.AUTHORIZING, State.CANCELLED)
    assert can_transition(State.READING, State.CANCELLED)


def test_failed_read_goes_back_to_waiting():
    assert can_transition(State.READING, State.WAITING_FOR_CARD)


@pytest.mark.parametrize("state", sorted(ACTIVE))
def test_recorded_payment_is_approved_after_restart(state):
    assert resolve_after_restart(state, recorded=True) == (State.APPROVED, None)


@pytest.mark.parametrize("state", sorted(ACTIVE))
def test_unrecorded_inflight_payment_fails_after_restart(state):
    assert resolve_after_restart(state, recorded=False) == (State.FAILED, "interrupted")


@pytest.mark.parametrize("state", [State.DECLINED, State.CANCELLED, State.TIMED_OUT, State.FAILED])
def test_final_states_stay_after_restart(state):
    assert resolve_after_restart(state, recorded=False) == (state, None)
