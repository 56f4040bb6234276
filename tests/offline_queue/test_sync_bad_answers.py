"""Head office answers 200 with a body this terminal must not act on (a bug, a proxy, a hostile server). The real
head office over HTTP answers; a transport in front of the client rewrites its bodies. Nothing is marked, wiped or
applied on such an answer, and sync goes on with what it can still do."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import orjson

from offline_queue.sync import SyncEngine
from tests.harness.headoffice import TerminalEnv


class Rewriting(httpx.HTTPTransport):
    """Forwards to head office; ``rewrite(path, answer)`` returns the body the terminal gets instead (or None)."""

    def __init__(self, rewrite: Callable[[str, object], object | None]) -> None:
        super().__init__()
        self.rewrite = rewrite
        self.rewritten = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if response.status_code != 200:
            return response
        response.read()
        replaced = self.rewrite(request.url.path, orjson.loads(response.content))
        if replaced is None:
            return response
        self.rewritten += 1
        return httpx.Response(200, content=orjson.dumps(replaced), headers={"content-type": "application/json"})


def test_an_acceptance_for_a_row_that_was_not_sent_marks_nothing(terminal_env: TerminalEnv):
    """The answer to page [#1] also says #3 accepted: #3 must not be marked accepted (its envelope would be wiped
    and head office would never get it). #3 still goes up in its own page and head office holds all three."""
    terminal_env.record(3)

    def extra(path, answer):
        if path.endswith("/transactions") and [r["sequence"] for r in answer["results"]] == [1]:
            return {**answer, "results": [*answer["results"], {"sequence": 3, "status": "accepted"}]}
        return None

    transport = Rewriting(extra)
    with terminal_env.store() as store, terminal_env.client(transport=transport) as client:
        result = SyncEngine(store, client, page_size=1).run_once()
        assert transport.rewritten == 1
        assert result.ok, result.error
        assert store.stats().unsynced_count == 0 and store.checkpoint() == 3
    assert terminal_env.hq_rows()[:2] == (3, 3)


def test_results_that_are_not_integers_or_both_verdicts_apply_nothing(terminal_env: TerminalEnv):
    terminal_env.record(2)
    answers = [
        lambda a: {**a, "results": [{**r, "sequence": True} for r in a["results"]]},  # True is not sequence 1
        lambda a: {**a, "results": [*a["results"], {"sequence": 1, "status": "rejected", "reason": "x"}]},
        lambda a: {**a, "results": None},
        lambda a: [a],
    ]
    now = []

    def broken(path, answer):
        return now[-1](answer) if path.endswith("/transactions") and now else None

    with terminal_env.store() as store, terminal_env.client(transport=Rewriting(broken)) as client:
        for rewrite in answers:
            now.append(rewrite)
            result = SyncEngine(store, client, page_size=2).run_once()
            assert not result.ok and result.error_code == "bad_response", result.error
            assert store.stats().unsynced_count == 2 and store.rejected() == []
        now.clear()
        result = SyncEngine(store, client, page_size=2).run_once()  # head office answers properly again
        assert result.ok and store.stats().unsynced_count == 0
    assert terminal_env.hq_rows()[:2] == (2, 2)


def test_a_long_or_card_shaped_rejection_reason_is_stored_clipped_and_masked(terminal_env: TerminalEnv):
    terminal_env.record(2)

    def reject_two(path, answer):
        if not path.endswith("/transactions"):
            return None
        reason = "policy:" + "x" * 900 + "\nsee 4111111111111111"
        return {**answer, "results": [answer["results"][0], {"sequence": 2, "status": "rejected", "reason": reason}]}

    with terminal_env.store() as store, terminal_env.client(transport=Rewriting(reject_two)) as client:
        result = SyncEngine(store, client, page_size=2).run_once()
        assert result.rejected == 1, result.error
        [dead] = store.rejected()
        assert dead.sequence == 2 and dead.sync_code == "policy"
        assert len(dead.sync_reason) <= 200 and "\n" not in dead.sync_reason
        assert "4111111111111111" not in dead.sync_reason


def test_unusable_parameters_keep_the_rules_in_force_and_the_uploads_go_on(terminal_env: TerminalEnv):
    terminal_env.record(2)
    bad_docs = [
        lambda d: {**d, "version": d["version"] + 1, "parameters": {"txn_limit_minor": -1}},
        lambda d: {**d, "version": d["version"] + 1, "parameters": {"risk": {"offline_max_count": "100"}}},
        lambda d: {**d, "version": d["version"] + 1, "deny_list": None},
        lambda d: {**d, "version": d["version"] + 1, "deny_list": ["not-a-token"]},
        lambda d: {**d, "version": "9"},
    ]
    now = []

    def broken(path, answer):
        return now[-1](answer) if path.endswith("/parameters") else None

    transport = Rewriting(broken)
    with terminal_env.store() as store, terminal_env.client(transport=transport) as client:
        before = store.parameters()
        for i, rewrite in enumerate(bad_docs):
            now.append(rewrite)
            if i:
                terminal_env.record(1)
            result = SyncEngine(store, client).run_once()
            assert result.ok, result.error
            assert not result.parameters_updated and store.stats().unsynced_count == 0
            assert store.parameters() == before
    assert transport.rewritten >= 5 and terminal_env.hq_rows()[0] == 6


def test_a_reversal_answer_without_a_known_status_leaves_it_owed(terminal_env: TerminalEnv):
    key = str(uuid.uuid4())
    seen = []

    def broken(path, answer):
        if path.endswith("/reversals"):
            seen.append(answer)
            return {} if len(seen) == 1 else None
        return None

    with terminal_env.store() as store, terminal_env.client(transport=Rewriting(broken)) as client:
        store.queue_reversal(idempotency_key=key, type="sale", amount_minor=1250, currency="EUR", reason="test")
        first = SyncEngine(store, client).run_once()
        assert first.ok, first.error  # the pass went on past it
        assert [r["idempotency_key"] for r in store.pending_reversals()] == [key]
        assert first.reversals_sent == 0
        second = SyncEngine(store, client).run_once()
        assert second.reversals_sent == 1 and store.pending_reversals() == []
    # head office's own answer: no authorization under this key yet, so it keeps a tombstone
    assert seen and seen[0]["status"] == "reversed_before_authorization"


def test_a_batch_close_answer_without_a_verdict_is_reported_again(terminal_env: TerminalEnv):
    terminal_env.record(2)
    calls = []

    def broken(path, answer):
        if path.endswith("/close"):
            calls.append(answer)
            return {"status": "fine"} if len(calls) == 1 else None
        return None

    with terminal_env.store() as store, terminal_env.client(transport=Rewriting(broken)) as client:
        store.close_batch()
        first = SyncEngine(store, client).run_once()
        assert first.ok and first.accepted == 2, first.error
        assert first.batches_reported == 0 and len(store.batches_to_report()) == 1
        second = SyncEngine(store, client).run_once()
        assert second.batches_reported == 1 and store.batches_to_report() == []
    assert calls[-1]["status"] == "balanced"
