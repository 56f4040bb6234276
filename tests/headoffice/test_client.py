"""The terminal's signed client against a real head office: online authorization, slow acquirer, parameters."""

from __future__ import annotations

import pytest

from offline_queue.hqclient import HeadOfficeRejected, HeadOfficeUnreachable
from tests.harness.headoffice import HQ, TerminalEnv


def test_authorize_approves_and_is_idempotent(hq: HQ, terminal_env: TerminalEnv):
    hq.cli("acquirer", "set", "--approve", "--no-limit", "--delay-ms", "0")
    with terminal_env.client() as client:
        first = client.authorize(idempotency_key="pay-1", type="sale", amount_minor=1250, currency="EUR",
                                 token="aa" * 32, masked_pan="411111******1111", scheme="visa")
        assert first.approved and first.code and len(first.code) == 6 and first.reason is None
        again = client.authorize(idempotency_key="pay-1", type="sale", amount_minor=1250, currency="EUR",
                                 token="aa" * 32, masked_pan="411111******1111", scheme="visa")
        assert again == first
        info = client.ping()
        assert info["terminal_id"] == terminal_env.terminal_id
        assert abs(client.clock_offset()) < 5


def test_slow_acquirer_surfaces_as_unreachable_timeout(hq: HQ, terminal_env: TerminalEnv):
    hq.cli("acquirer", "set", "--delay-ms", "1500")
    try:
        with terminal_env.client() as client:
            with pytest.raises(HeadOfficeUnreachable) as err:
                client.authorize(idempotency_key="slow-1", type="sale", amount_minor=100, currency="EUR",
                                 timeout=0.3)
            assert err.value.code == "timeout"
    finally:
        hq.cli("acquirer", "set", "--delay-ms", "0")


def test_invalid_authorization_is_rejected_with_code(hq: HQ, terminal_env: TerminalEnv):
    with terminal_env.client() as client:
        with pytest.raises(HeadOfficeRejected) as err:
            client.authorize(idempotency_key="bad-1", type="sale", amount_minor=-5, currency="EUR")
        assert err.value.status == 422 and err.value.code == "invalid_request"


def test_batches_since_filter(hq: HQ, terminal_env: TerminalEnv):
    import httpx

    terminal_env.record(2)
    from offline_queue.sync import SyncEngine

    with terminal_env.store() as store, terminal_env.client() as client:
        assert SyncEngine(store, client).run_once().accepted == 2
    token = hq.cli("tokens", "create", "--name", f"since-{terminal_env.terminal_id}").strip()
    auth = {"authorization": f"Bearer {token}"}
    past = httpx.get(f"{hq.url}/api/v1/batches", params={"since": "2000-01-01T00:00:00Z",
                                                         "terminal": terminal_env.terminal_id}, headers=auth)
    assert [b["terminal_id"] for b in past.json()["batches"]] == [terminal_env.terminal_id]
    future = httpx.get(f"{hq.url}/api/v1/batches", params={"since": "2100-01-01T00:00:00Z",
                                                           "terminal": terminal_env.terminal_id}, headers=auth)
    assert future.json()["batches"] == []
    # Filters sent empty, as the contract writes them (`?status=&since=`), are no filter.
    empty = httpx.get(f"{hq.url}/api/v1/batches?status=&since=&terminal={terminal_env.terminal_id}", headers=auth)
    assert empty.status_code == 200, empty.text
    assert [b["terminal_id"] for b in empty.json()["batches"]] == [terminal_env.terminal_id]
    # ISO 8601's basic form is a date, not seconds since 1970 (pydantic's lax datetime read 21000101 as 1970-09-01).
    basic = httpx.get(f"{hq.url}/api/v1/batches", params={"since": "21000101", "terminal": terminal_env.terminal_id},
                      headers=auth)
    assert basic.status_code == 200 and basic.json()["batches"] == [], basic.text
    for bad_value in ("yesterday", "1700000000"):
        bad = httpx.get(f"{hq.url}/api/v1/batches", params={"since": bad_value}, headers=auth)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_since", bad.text
    for edge in ("9999-12-31T23:59:59-01:00", "0001-01-01T00:30:00+01:00"):  # valid, but not once in UTC
        r = httpx.get(f"{hq.url}/api/v1/batches", params={"since": edge}, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_since", r.text
