"""The local API's contract (status codes, error shapes, idempotency) over the flow with in-memory parts.
The same API over the real daemon, readers, queue and printer is tested in tests/e2e."""

import json
import threading

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from terminal.api import create_app
from terminal.events import PaymentEvents
from terminal.flow import FlowSettings, PaymentFlow
from tests.terminal.flowfakes import MemoryLedger, ReceiptLog, ScriptedReader, emv_read

SALE = {"type": "sale", "amount_minor": 1250, "currency": "EUR", "reference": "R-1", "mode": "force-offline"}
TOKEN = "0123456789abcdef-token"


class FakeService:
    def __init__(self):
        self.ledger = MemoryLedger()
        self.reader = ScriptedReader()
        self.events = PaymentEvents()
        self.flow = PaymentFlow(self.ledger, self.reader, online=None, receipts=ReceiptLog(),
                                publish=self.events.publish,
                                settings=FlowSettings(default_mode="force-offline", card_timeout_s=5))
        self.stopping = threading.Event()

    def payment_view(self, payment_id):
        return self.ledger.payment(payment_id)

    def event_view(self, published):
        return dict(published)

    def recent_payments(self, limit):
        return list(self.ledger.payments.values())[-limit:]

    def status(self):
        return {"readers": [], "printer": {"state": "unknown"}}

    def close_batch(self, number=None):
        raise RuntimeError("boom: 4761739001010010")

    def is_stopping(self):
        return self.stopping.is_set()


@pytest.fixture
def service():
    svc = FakeService()
    svc.flow.start()
    yield svc
    svc.flow.shutdown(2)


@pytest.fixture
def client(service):
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        yield c


def post_sale(client, key="k-1", body=SALE):
    return client.post("/v1/payments", json=body, headers={"Idempotency-Key": key})


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def test_create_returns_201_waiting_for_card(client):
    r = post_sale(client)
    assert r.status_code == 201
    assert r.json()["state"] == "waiting_for_card"
    assert r.json()["amount_minor"] == 1250


def test_same_idempotency_key_same_payment(client, service):
    first = post_sale(client).json()
    r = post_sale(client)
    assert r.status_code == 201 and r.headers["Idempotent-Replayed"] == "true"
    assert r.json()["id"] == first["id"]
    assert len(service.ledger.payments) == 1


def test_second_waiting_payment_is_409(client):
    post_sale(client, "a")
    assert_error(post_sale(client, "b"), 409, "terminal_busy")


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"[1,2]", 400, "invalid_request"),
        (b'{"amount_minor": 100, "currency": "EUR", "tip": 5}', 400, "invalid_request"),
        (b'{"amount_minor": "100", "currency": "EUR"}', 422, "invalid_amount"),
        (b'{"amount_minor": 1e30, "currency": "EUR"}', 422, "invalid_amount"),
        (b'{"amount_minor": 99999999999999999999999, "currency": "EUR"}', 422, "invalid_amount"),
        (b'{"amount_minor": -1, "currency": "EUR"}', 422, "invalid_amount"),
        (b'{"amount_minor": true, "currency": "EUR"}', 422, "invalid_amount"),
        (b'{"amount_minor": 100, "currency": "eur"}', 422, "invalid_currency"),
        (b'{"amount_minor": 100, "currency": null}', 422, "invalid_currency"),
        (b'{"amount_minor": 100, "currency": "EUR", "type": "chargeback"}', 422, "invalid_type"),
        (b'{"amount_minor": 100, "currency": "EUR", "reference": {"a": 1}}', 422, "invalid_reference"),
    ],
)
def test_malformed_or_absurd_input_is_4xx_json(client, service, raw, status, code):
    r = client.post("/v1/payments", content=raw, headers={"Idempotency-Key": "x", "Content-Type": "application/json"})
    assert_error(r, status, code)
    assert service.ledger.payments == {}


def test_missing_idempotency_key_is_400(client):
    assert_error(client.post("/v1/payments", json=SALE), 400, "idempotency_key_required")


def test_huge_body_is_413(client):
    r = client.post("/v1/payments", content=b"{" + b" " * 20000 + b"}", headers={"Idempotency-Key": "x"})
    assert_error(r, 413, "body_too_large")


@pytest.mark.parametrize("path", ["/v1/payments/nope", "/v1/payments/00000000-0000-0000-0000-000000000000"])
def test_unknown_ids_are_404(client, path):
    assert_error(client.get(path), 404, "not_found")
    assert_error(client.post(path + "/cancel"), 404, "not_found")
    assert_error(client.post(path + "/void"), 404, "not_found")
    assert_error(client.post(path + "/receipt"), 404, "not_found")


def test_unknown_route_and_method_are_json(client):
    assert_error(client.get("/v2/nothing"), 404, "not_found")
    assert_error(client.delete("/v1/status"), 405, "method_not_allowed")


def test_internal_error_is_json_500_without_card_data(client):
    r = client.post("/v1/batches/close")
    assert_error(r, 500, "internal_error")
    assert "4761739001010010" not in r.text and "Traceback" not in r.text


def test_events_stream_until_final_state(client, service):
    payment = post_sale(client).json()
    states = []
    with client.stream("GET", f"/v1/payments/{payment['id']}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                states.append(json.loads(line[6:])["state"])
                if len(states) == 1:
                    service.reader.taps.put(emv_read())  # the card comes once the front end listens
    # every step, also the ones that last microseconds offline
    assert states == ["waiting_for_card", "reading", "authorizing", "approved"], states


def test_an_event_stream_ends_with_a_final_state_whose_event_was_lost(service, monkeypatch):
    """The approval was stored but its event never reached the stream: at the next keep-alive the stream looks at
    the stored payment, shows it approved and ends, instead of showing authorizing until the front end gives up."""
    import terminal.api

    monkeypatch.setattr(terminal.api, "KEEPALIVE_S", 0.2)
    publish = service.flow._publish
    service.flow._publish = lambda pid, payment: None if payment["state"] == "approved" else publish(pid, payment)
    with TestClient(create_app(service)) as c:
        payment = post_sale(c).json()
        states, keepalives = [], 0
        with c.stream("GET", f"/v1/payments/{payment['id']}/events") as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    states.append(json.loads(line[6:])["state"])
                    if len(states) == 1:
                        service.reader.taps.put(emv_read())
                keepalives += line.startswith(": keep-alive")
                if keepalives > 10:  # 2 s with no end: the stream would show authorizing for good
                    break
    assert states == ["waiting_for_card", "reading", "authorizing", "approved"], states


def test_cancel_then_get(client):
    payment = post_sale(client).json()
    r = client.post(f"/v1/payments/{payment['id']}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert client.get(f"/v1/payments/{payment['id']}").json()["state"] == "cancelled"
    assert_error(client.post(f"/v1/payments/{payment['id']}/void"), 409, "not_voidable")
    assert_error(client.post(f"/v1/payments/{payment['id']}/receipt"), 409, "no_receipt")


def test_bearer_token_required_when_configured(service):
    with TestClient(create_app(service, token=TOKEN)) as c:
        assert_error(c.get("/v1/status"), 401, "unauthorized")
        assert_error(c.get("/v1/status", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        assert c.get("/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/openapi.json").status_code == 200


def test_openapi_documents_the_contract(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/payments", "/v1/payments/{payment_id}", "/v1/payments/{payment_id}/events",
                 "/v1/payments/{payment_id}/cancel", "/v1/payments/{payment_id}/void",
                 "/v1/payments/{payment_id}/receipt", "/v1/status", "/v1/batches/close", "/v1/reads",
                 "/v1/printer/test", "/v1/printer/jobs/{job_id}"):
        assert path in spec["paths"]
    # The error object the API really sends, not FastAPI's {"detail": [...]}; and the bearer token.
    assert "HTTPValidationError" not in json.dumps(spec)
    error = spec["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]
    create = spec["paths"]["/v1/payments"]["post"]
    for status in ("400", "409", "413", "422"):
        assert create["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}
    assert create["security"] == [{"bearerToken": []}]
    assert spec["components"]["securitySchemes"]["bearerToken"]["scheme"] == "bearer"
    # The payment object, documented when the document is built (not at start).
    answer = spec["paths"]["/v1/payments/{payment_id}"]["get"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PaymentView"}
    assert {"PaymentView", "CardView", "AuthorizationView"} <= set(spec["components"]["schemas"])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
bodies = st.dictionaries(
    st.sampled_from(["type", "amount_minor", "currency", "reference", "mode", "extra"]), json_values, max_size=6
) | json_values


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, key=st.text(min_size=0, max_size=200))
def test_any_json_body_gets_json_4xx_or_a_payment_never_500(client, service, body, key):
    headers = {"Content-Type": "application/json"}
    try:
        headers["Idempotency-Key"] = key.encode("latin-1").decode("latin-1")
        raw = json.dumps(body, allow_nan=True).encode()
        r = client.post("/v1/payments", content=raw, headers=headers)
    except (UnicodeEncodeError, ValueError):
        return  # not representable as an HTTP header
    assert r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/json")
    if r.status_code == 201:
        service.flow.cancel(r.json()["id"])
    else:
        assert set(r.json()) == {"error"}


read_bodies = st.dictionaries(st.sampled_from(["timeout_s", "extra"]), json_values, max_size=2) | json_values


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=read_bodies)
def test_any_json_body_to_reads_gets_json_400_unless_it_is_a_valid_timeout(client, body):
    from hypothesis import assume

    valid = isinstance(body, dict) and set(body) <= {"timeout_s"} and (
        "timeout_s" not in body or (isinstance(body["timeout_s"], int | float)
                                    and not isinstance(body["timeout_s"], bool) and 1 <= body["timeout_s"] <= 60))
    assume(not valid)  # a valid one waits for a tap: below
    r = client.post("/v1/reads", content=json.dumps(body, allow_nan=True).encode(),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]["code"] in ("invalid_request", "malformed_json")


def test_a_read_outside_a_payment_answers_what_was_tapped(client, service):
    service.reader.taps.put(emv_read())
    r = client.post("/v1/reads")  # no body: the default timeout
    assert r.status_code == 200, r.text
    read = r.json()["read"]
    assert read["kind"] == "emv" and read["masked_pan"] == "476173******0010" and "pan" not in read
    assert service.ledger.payments == {}


def test_store_failure_is_503_with_its_code(service, client, monkeypatch):
    from offline_queue.errors import StoreFullError

    def full(**kwargs):
        raise StoreFullError()

    monkeypatch.setattr(service.ledger, "create_payment", full)
    r = post_sale(client, "full")
    assert_error(r, 503, "store_full")


def test_chunked_body_over_the_limit_is_refused_before_it_ends(service):
    """A chunked body announces no length: the API stops reading at the limit and answers at once, instead of
    holding the whole body in memory (here the client never even finishes sending it)."""
    import socket
    import time

    import uvicorn

    from tests.harness.headoffice import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nIdempotency-Key: chunked-1\r\n"
                         b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b" " * 8192
            for _ in range(4):  # 32 KiB, twice the limit, and no final chunk
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            answer = sock.recv(65536).decode("latin-1")
        assert answer.startswith("HTTP/1.1 413"), answer[:200]
        assert '"body_too_large"' in answer
        assert service.ledger.payments == {}
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("body", [
    {**SALE, "amount_minor": 4761739001010010},
    {**SALE, "currency": "4761739001010010=28121010000000000000"},
    {**SALE, "4761739001010010": 1},
    {**SALE, "mode": "4761739001010010"},
])
def test_error_messages_never_echo_card_data(client, body):
    r = post_sale(client, key="echo-1", body=body)
    assert 400 <= r.status_code < 500, r.text
    assert "4761739001010010" not in r.text and "=2812" not in r.text


def test_paths_ids_and_methods_answer_like_the_contract(client):
    assert_error(client.post("/v1/payments/", json=SALE, headers={"Idempotency-Key": "slash"}), 404, "not_found")
    payment = post_sale(client, key="upper").json()
    assert client.get(f"/v1/payments/{payment['id'].upper()}").json()["id"] == payment["id"]
    wrong = client.delete("/v1/status")
    assert_error(wrong, 405, "method_not_allowed")
    assert "GET" in wrong.headers["allow"]


def test_events_stream_follows_the_receipt_after_approval(service):
    """After "approved" the stream stays open until the receipt is printed or has failed (event "receipt")."""
    polls = {"n": 0}
    plain_view = service.payment_view

    def view_with_receipt(payment_id):
        view = plain_view(payment_id)
        if view is not None and view["state"] == "approved":
            polls["n"] += 1
            view = {**view, "receipt": "pending" if polls["n"] < 4 else "failed"}
        return view

    service.payment_view = view_with_receipt
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        payment = post_sale(c, key="rcpt").json()
        service.reader.taps.put(emv_read())
        events = []
        with c.stream("GET", f"/v1/payments/{payment['id']}/events") as r:
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    doc = json.loads(line[6:])
                    events.append((event, doc["state"], doc.get("receipt")))
    assert ("approved", "approved", "pending") in events
    assert events[-1] == ("receipt", "approved", "failed")
