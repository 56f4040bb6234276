"""Whatever callers pass, the public API answers with a typed error or a correct record, never anything else,
and a refused call leaves the chain as it was."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from offline_queue.errors import StoreError
from offline_queue.store import QueueStore
from protocol.errors import ValidationError
from tests.harness.queue import FakeEmvRead

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.one_of(st.sampled_from(["sale", "refund", "void"]), values),
    amount=st.one_of(st.integers(min_value=1, max_value=10_000), values),
    currency=st.one_of(st.sampled_from(["EUR", "USD", "JPY"]), values),
    reference=st.one_of(st.none(), values),
    auth=st.one_of(st.just({"mode": "offline"}), st.dictionaries(st.text(max_size=8), values, max_size=3), values),
)
def test_record_with_arbitrary_inputs(queue_store, card_protection, kind, amount, currency, reference, auth):
    before = queue_store.stats().last_sequence
    try:
        txn = queue_store.record(type=kind, amount_minor=amount, currency=currency, auth=auth, reference=reference,
                                 card=card_protection.protect(FakeEmvRead()), void_of=None)  # fmt: skip
    except ValidationError as exc:
        assert exc.code and exc.message
        assert queue_store.stats().last_sequence == before
    else:
        assert (txn.type, txn.amount_minor, txn.currency) == (kind, amount, currency)
        assert txn.sequence == before + 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=values, txn_uuid=values, request_id=values, payload=values)
def test_print_jobs_with_arbitrary_inputs(queue_store, kind, txn_uuid, request_id, payload):
    try:
        queue_store.add_print_job(kind, txn_uuid, request_id, payload)
    except ValidationError:
        pass
    except StoreError:  # e.g. a non-str txn_uuid the database cannot bind
        pass


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [({"terminal_id": ""}, "invalid_terminal_id"), ({"terminal_id": "T", "max_db_bytes": 10}, "invalid_config")],
)
def test_bad_open_arguments(queue_path, kwargs, code):
    with pytest.raises(ValidationError) as err:
        QueueStore.open(queue_path, **kwargs)
    assert err.value.code == code


def test_two_processes_recording_at_once_share_one_gapless_chain(queue_path, card_protection):
    QueueStore.open(queue_path, terminal_id="T-0001").close()
    pids = []
    for worker in range(2):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                with QueueStore.open(queue_path, terminal_id="T-0001") as store:
                    for i in range(40):
                        store.record(type="sale", amount_minor=100 + i, currency="EUR",
                                     card=card_protection.protect(FakeEmvRead()), auth={"mode": "offline"},
                                     idempotency_key=f"w{worker}-{i}")  # fmt: skip
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"worker failed ({status})"
    with QueueStore.open(queue_path, terminal_id="T-0001") as store:
        assert store.verify() == 80
        keys = {store.transaction_by_sequence(s).idempotency_key for s in range(1, 81)}
        assert keys == {f"w{w}-{i}" for w in range(2) for i in range(40)}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(state=None, card=None, version=2**63, params={})  # found in CI: a version past SQLite INTEGER
@given(
    state=st.one_of(st.sampled_from(["reading", "authorizing", "declined"]), values),
    card=st.one_of(st.none(), values, st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), values)),
    version=values,
    params=st.one_of(values, st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), values, max_size=3)),
)
def test_payments_and_parameters_with_arbitrary_inputs(queue_store, state, card, version, params):
    pay = queue_store.create_payment("fuzz", type="sale", amount_minor=100, currency="EUR")
    try:
        queue_store.set_payment_state(pay.id, state, card=card)
    except ValidationError:
        pass
    try:
        queue_store.save_parameters(version, params, [])
    except ValidationError:
        pass
