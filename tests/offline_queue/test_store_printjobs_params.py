"""Print-job records (for the spooler), parameters validation and counters."""

from __future__ import annotations

import pytest

from protocol.errors import ValidationError


def test_print_jobs_are_idempotent_claimed_once_and_tracked(queue_store):
    job = queue_store.add_print_job("sale", "txn-1", "req-1", {"copy": "customer", "last4": "1111"})
    assert (job.state, job.attempts, job.payload["last4"]) == ("pending", 0, "1111")
    assert queue_store.add_print_job("sale", "txn-1", "req-1", {"copy": "other"}).id == job.id
    second = queue_store.add_print_job("sale", "txn-1", "req-2", {"copy": "merchant"})
    claimed = queue_store.claim_print_job()
    assert (claimed.id, claimed.state, claimed.attempts) == (job.id, "sending", 1)
    assert queue_store.claim_print_job(job.id) is None  # already sending: nobody else gets it
    failed = queue_store.mark_print_job(job.id, "failed", "paper out")
    assert (failed.state, failed.error) == ("failed", "paper out")
    queue_store.mark_print_job(job.id, "pending")
    assert queue_store.claim_print_job(job.id).attempts == 2
    queue_store.mark_print_job(job.id, "printed")
    assert [j.state for j in queue_store.print_jobs_for_txn("txn-1")] == ["printed", "pending"]
    assert [j.id for j in queue_store.print_jobs(["pending"])] == [second.id]
    assert queue_store.print_job_by_request("req-2").id == second.id
    assert queue_store.get_print_job(999) is None


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("Sale!", None, "r", {}), "invalid_print_job"),
        (("sale", None, "r", ["not", "a", "dict"]), "invalid_print_job"),
        (("sale", None, "r", {"when": object()}), "invalid_print_job"),
        (("sale", None, "r", {"pan": "4111111111111111"}), "card_data_in_payload"),
        (("sale", None, "r", {"lines": ["CARD 5555 5555 5555 4444"]}), "card_data_in_payload"),
        (("sale", None, "r", {"t2": "4111111111111111=28122010000"}), "card_data_in_payload"),
    ],
)
def test_bad_print_jobs(queue_store, args, code):
    with pytest.raises(ValidationError) as err:
        queue_store.add_print_job(*args)
    assert err.value.code == code
    assert queue_store.print_jobs() == []


def test_print_job_marks_validate(queue_store):
    job = queue_store.add_print_job("test", None, "r", {"uuid": "550e8400-e29b-41d4-a716-446655440000"})
    with pytest.raises(ValidationError):
        queue_store.mark_print_job(job.id, "lost")
    with pytest.raises(ValidationError):
        queue_store.mark_print_job(12345, "printed")


def test_parameters_and_counters_validate(queue_store):
    with pytest.raises(ValidationError):
        queue_store.save_parameters(-1, {}, [])
    with pytest.raises(ValidationError):
        queue_store.save_parameters(1, {}, ["4111111111111111"])
    assert queue_store.parameters() is None
    assert queue_store.increment_counter("receipts") == 1
    assert queue_store.increment_counter("receipts", 4) == 5
    assert queue_store.counters() == {"receipts": 5}
