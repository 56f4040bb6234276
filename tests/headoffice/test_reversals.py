"""Reversals of online authorizations at a real head office (SQLite and PostgreSQL), sent by the terminal's client
and by its sync engine from the durable queue."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from offline_queue.hqclient import HeadOfficeRejected, HeadOfficeUnreachable
from offline_queue.sync import SyncEngine, SyncResult
from tests.harness.headoffice import HQ, TerminalEnv

SALE = {"type": "sale", "amount_minor": 4200, "currency": "EUR"}


def key() -> str:
    return f"pay-{uuid.uuid4().hex[:12]}"


def hq_row(hq: HQ, terminal_id: str, idempotency_key: str) -> dict:
    rows = json.loads(hq.cli("authorizations", "list", "--terminal", terminal_id, "--json", "--limit", "1000"))
    matching = [r for r in rows if r["key"] == idempotency_key]
    assert len(matching) == 1, matching
    return matching[0]


def test_reversal_takes_back_an_approval_and_a_retry_no_longer_approves(hq: HQ, terminal_env: TerminalEnv):
    k = key()
    with terminal_env.client() as client:
        assert client.authorize(idempotency_key=k, **SALE).approved
        assert client.reverse(idempotency_key=k, **SALE, reason="no_answer:timeout")["status"] == "reversed"
        assert client.reverse(idempotency_key=k, **SALE, reason="no_answer:timeout")["status"] == "already_reversed"
        again = client.authorize(idempotency_key=k, **SALE)
        assert not again.approved and again.reason == "reversed"
    row = hq_row(hq, terminal_env.terminal_id, k)
    assert row["approved"] is True and row["reversed_at"] and row["reversal_reason"] == "no_answer:timeout"
    # the same form from SQLite and PostgreSQL
    assert row["created_at"].endswith("+00:00") and row["reversed_at"].endswith("+00:00")
    listed = hq.cli("authorizations", "list", "--reversed", "--terminal", terminal_env.terminal_id)
    assert k in listed and "no_answer:timeout" in listed


def test_reversal_that_overtakes_a_slow_authorization_wins(hq: HQ, terminal_env: TerminalEnv):
    """The acquirer is still thinking when the reversal arrives: the late answer is 'reversed', not an approval."""
    k = key()
    hq.cli("acquirer", "set", "--approve", "--no-limit", "--delay-ms", "1500")
    answers = []
    try:
        with terminal_env.client() as client:
            slow = threading.Thread(target=lambda: answers.append(client.authorize(idempotency_key=k, **SALE,
                                                                                   timeout=10)))
            slow.start()
            # the authorization is at the acquirer (its lookup found nothing) before the reversal is sent
            threading.Event().wait(0.7)
            assert client.reverse(idempotency_key=k, **SALE, reason="no_answer:timeout")["status"] == \
                "reversed_before_authorization"
            slow.join(15)
    finally:
        hq.cli("acquirer", "set", "--delay-ms", "0")
    assert len(answers) == 1 and not answers[0].approved and answers[0].reason == "reversed"
    row = hq_row(hq, terminal_env.terminal_id, k)
    # staff see what the acquirer answered, and that it was reversed before the terminal could be told
    assert row["approved"] is True and row["code"] and row["reversed_at"]
    assert row["reason"] == "reversed_before_authorization"


def test_reversal_of_a_decline_and_of_another_payment(hq: HQ, terminal_env: TerminalEnv):
    k = key()
    hq.cli("acquirer", "set", "--decline-over", "1000")
    try:
        with terminal_env.client() as client:
            assert not client.authorize(idempotency_key=k, **SALE).approved
            assert client.reverse(idempotency_key=k, **SALE)["status"] == "not_approved"
            with pytest.raises(HeadOfficeRejected) as err:
                client.reverse(idempotency_key=k, type="sale", amount_minor=99, currency="EUR")
            assert err.value.status == 409 and err.value.code == "idempotency_key_reused"
            with pytest.raises(HeadOfficeRejected) as bad:
                client.reverse(idempotency_key=k, type="void", amount_minor=4200, currency="EUR")
            assert bad.value.status == 422
    finally:
        hq.cli("acquirer", "set", "--no-limit")


def test_a_terminal_cannot_reverse_another_terminals_authorization(hq: HQ, terminal_env: TerminalEnv, tmp_path):
    other = TerminalEnv.enroll(hq, tmp_path / "other")
    k = key()
    with terminal_env.client() as client, other.client() as intruder:
        assert client.authorize(idempotency_key=k, **SALE).approved
        # the same key from another terminal is another authorization: a tombstone of its own
        assert intruder.reverse(idempotency_key=k, **SALE)["status"] == "reversed_before_authorization"
    row = hq_row(hq, terminal_env.terminal_id, k)
    assert row["approved"] is True and row["reversed_at"] is None


def test_sync_engine_sends_queued_reversals_and_keeps_them_while_head_office_is_away(
        hq: HQ, terminal_env: TerminalEnv):
    k = key()
    with terminal_env.client() as client:
        assert client.authorize(idempotency_key=k, **SALE).approved  # the answer the terminal "never saw"
    with terminal_env.store() as store:
        assert store.queue_reversal(idempotency_key=k, **SALE, reason="no_answer:timeout", payment_id=k)
        assert not store.queue_reversal(idempotency_key=k, **SALE, reason="no_answer:timeout", payment_id=k)
        with terminal_env.client(url="http://127.0.0.1:9") as away:  # nothing listens on the discard port
            result = SyncEngine(store, away).run_once()
        assert not result.ok and result.error_code == "unreachable"
        assert store.reversal(k)["state"] == "pending"
        assert hq_row(hq, terminal_env.terminal_id, k)["reversed_at"] is None

        with terminal_env.client() as client:
            result = SyncEngine(store, client).run_once()
        assert result.ok and result.reversals_sent == 1
        assert store.reversal(k) == {"state": "done", "hq_status": "reversed", "reason": "no_answer:timeout",
                                     "attempts": 1}
        assert store.pending_reversals() == [] and store.pending_reversal_count() == 0
    assert hq_row(hq, terminal_env.terminal_id, k)["reversed_at"]


def test_connection_refused_is_known_undelivered(terminal_env: TerminalEnv):
    with terminal_env.client(url="http://127.0.0.1:9") as away:
        with pytest.raises(HeadOfficeUnreachable) as err:
            away.authorize(idempotency_key=key(), **SALE)
    assert err.value.code == "unreachable" and err.value.maybe_delivered is False


def test_a_head_office_without_the_reversal_route_leaves_the_reversal_owed(hq: HQ, terminal_env: TerminalEnv):
    """A 404 (head office not upgraded yet, a proxy without the route) is no verdict on the reversal: it stays
    owed and goes once the route answers."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    k = key()
    asked: list[str] = []

    class NoReversalRoute(BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            asked.append(self.path)
            known = self.path.endswith("/authorizations/reversals")
            body = json.dumps({"error": {"code": "not_found", "message": "no such route"}}).encode() if known else b""
            self.send_response(404 if known else 502)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    old_server = ThreadingHTTPServer(("127.0.0.1", 0), NoReversalRoute)
    threading.Thread(target=old_server.serve_forever, daemon=True).start()
    try:
        with terminal_env.store() as store:
            store.queue_reversal(idempotency_key=k, **SALE, reason="no_answer:timeout", payment_id=k)
            # The old head office (a stub on loopback answering 404 on the new route): only the reversal step is run
            # against it.
            with terminal_env.client(url=f"http://127.0.0.1:{old_server.server_address[1]}") as old_hq:
                with pytest.raises(HeadOfficeRejected) as refused:
                    SyncEngine(store, old_hq)._send_reversals(SyncResult(), wait=False, stop=None)
            assert refused.value.status == 404 and store.reversal(k)["state"] == "pending"
            assert asked == ["/api/v1/authorizations/reversals"]
    finally:
        old_server.shutdown()
        old_server.server_close()
    with terminal_env.store() as store:
        with terminal_env.client() as client:
            assert SyncEngine(store, client).run_once().reversals_sent == 1
        assert store.reversal(k)["state"] == "done"
