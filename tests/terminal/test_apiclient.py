"""The technician CLI's client of the local API when answers go missing (pure logic over an httpx transport)."""

import httpx
import pytest

from terminal.apiclient import ApiCallError, LocalApi


def api_over(handler) -> LocalApi:
    api = LocalApi("http://127.0.0.1:8470")
    api._http = httpx.Client(base_url=api.base_url, transport=httpx.MockTransport(handler))
    return api


def test_a_payment_whose_answer_timed_out_is_asked_for_again_with_the_same_key():
    """Before, `smartpos pay` gave up at the first timeout saying the daemon was not running, and the payment it
    had created stayed armed at the daemon: a re-run made a second one (or got terminal_busy)."""
    keys = []

    def handler(request):
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) == 1:
            raise httpx.ReadTimeout("no answer", request=request)
        return httpx.Response(201, json={"id": "p-1", "state": "waiting_for_card"})

    with api_over(handler) as api:
        assert api.create_payment({"type": "sale", "amount_minor": 700, "currency": "EUR"})["id"] == "p-1"
    assert len(keys) == 2 and keys[0] == keys[1]


def test_no_answer_at_all_says_the_daemon_took_the_request_not_that_it_is_down():
    def handler(request):
        raise httpx.ReadTimeout("no answer", request=request)

    with api_over(handler) as api, pytest.raises(ApiCallError) as info:
        api.create_payment({"type": "sale", "amount_minor": 700, "currency": "EUR"})
    assert info.value.code == "daemon_no_answer" and "smartpos status" in info.value.message


def test_a_refused_connection_is_not_sent_again_and_says_the_daemon_is_not_running():
    calls = []

    def handler(request):
        calls.append(1)
        raise httpx.ConnectError("refused", request=request)

    with api_over(handler) as api, pytest.raises(ApiCallError) as info:
        api.create_payment({"type": "sale", "amount_minor": 700, "currency": "EUR"})
    assert info.value.code == "daemon_unreachable" and "is `smartpos run` running?" in info.value.message
    assert calls == [1]
