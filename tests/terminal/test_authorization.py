import pytest

from terminal.authorization import (
    OFFLINE_APPROVED_CODE,
    OfflineDecision,
    OnlineRefused,
    OnlineUnavailable,
    decide,
)

APPROVE_OFFLINE = OfflineDecision(True)
DECLINE_OFFLINE = OfflineDecision(False, "offline_amount_limit")


def online_approves():
    return {"approved": True, "code": "123456", "reason": None, "auth_id": "A-1"}


def online_declines():
    return {"approved": False, "code": None, "reason": "over_limit", "auth_id": "A-2"}


def unreachable():
    raise OnlineUnavailable("timeout", "head office did not answer in 3.0 s")


def refused():
    raise OnlineRefused("terminal_revoked", "terminal revoked")


def never_called():
    raise AssertionError("the offline rules must not decide here")


def test_force_offline_never_asks_head_office():
    auth = decide("force-offline", online=never_called, offline=lambda: APPROVE_OFFLINE)
    assert (auth.approved, auth.method, auth.code) == (True, "offline", OFFLINE_APPROVED_CODE)


def test_force_offline_decline_carries_the_rule():
    auth = decide("force-offline", online=never_called, offline=lambda: DECLINE_OFFLINE)
    assert (auth.approved, auth.method, auth.reason) == (False, "offline", "offline_amount_limit")


@pytest.mark.parametrize("mode", ["prefer-online", "require-online"])
def test_online_answer_is_final(mode):
    auth = decide(mode, online=online_approves, offline=never_called)
    assert (auth.approved, auth.method, auth.code, auth.auth_id) == (True, "online", "123456", "A-1")
    auth = decide(mode, online=online_declines, offline=never_called)
    assert (auth.approved, auth.method, auth.reason) == (False, "online", "over_limit")


def test_prefer_online_falls_back_to_offline_rules_when_unreachable():
    auth = decide("prefer-online", online=unreachable, offline=lambda: APPROVE_OFFLINE)
    assert (auth.approved, auth.method, auth.fallback) == (True, "offline", "timeout")
    auth = decide("prefer-online", online=unreachable, offline=lambda: DECLINE_OFFLINE)
    assert (auth.approved, auth.reason, auth.fallback) == (False, "offline_amount_limit", "timeout")


def test_require_online_declines_when_unreachable():
    auth = decide("require-online", online=unreachable, offline=never_called)
    assert (auth.approved, auth.reason) == (False, "online_unavailable:timeout")


def test_refusal_by_head_office_never_falls_back():
    auth = decide("prefer-online", online=refused, offline=never_called)
    assert (auth.approved, auth.reason) == (False, "headoffice_refused:terminal_revoked")


def test_without_head_office_prefer_online_is_offline_and_require_online_declines():
    assert decide("prefer-online", online=None, offline=lambda: APPROVE_OFFLINE).fallback == "no_headoffice"
    assert decide("require-online", online=None, offline=never_called).approved is False


def test_unknown_mode_is_a_bug():
    with pytest.raises(ValueError):
        decide("yolo", online=None, offline=lambda: APPROVE_OFFLINE)
