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


def test_a_batch_close_whose_answer_went_missing_is_reported_as_closed_by_this_call():
    """The first answer is lost and the close is sent again: the daemon answers batch 4 as already closed, by this
    very call. Told "already closed, nothing closed now", a cashier would run it again and close batch 5 empty."""
    bodies = []

    def handler(request):
        bodies.append(request.content)
        if len(bodies) == 1:
            raise httpx.ReadTimeout("no answer", request=request)
        return httpx.Response(200, json={"batch": 4, "count": 3, "already_closed": True})

    with api_over(handler) as api:
        result = api.close_batch(4)
    assert result["batch"] == 4 and result["already_closed"] is False
    assert len(bodies) == 2 and bodies[0] == bodies[1] == b'{"batch":4}'

    def closed_before(request):  # asked once, answered at once: it was closed before this call
        return httpx.Response(200, json={"batch": 4, "count": 3, "already_closed": True})

    with api_over(closed_before) as api:
        assert api.close_batch(4)["already_closed"] is True
