"""A full disk (a real tiny tmpfs, and the store's own size cap): recording fails with StoreFullError, nothing is
half-written, the payment is not approved, and the same store records again once space returns."""

from __future__ import annotations

import os
import subprocess

import pytest

from offline_queue.errors import StoreError, StoreFullError
from offline_queue.store import QueueStore
from tests.harness.queue import FakeEmvRead


def _fill(store, protection, limit=5000):
    """Record until the store is full; returns (successful count, the error)."""
    card = FakeEmvRead()
    for n in range(limit):
        pay = None
        try:
            if n % 3 == 0:
                pay = store.create_payment(f"k-{n}", type="sale", amount_minor=100 + n, currency="EUR")
            store.record(
                type="sale",
                amount_minor=100 + n,
                currency="EUR",
                card=protection.protect(card),
                auth={"mode": "offline"},
                reference=f"R-{n}",
                idempotency_key=f"k-{n}",
                payment_id=pay.id if pay else None,
            )
        except StoreFullError as exc:
            return n, exc, pay
    raise AssertionError("the store never filled up")


def _assert_nothing_half_written(store, recorded, pay):
    assert store.verify() == recorded  # chain intact, no gap, exactly the committed sales
    assert store.transaction_by_idempotency_key(f"k-{recorded}") is None
    if pay is not None:
        assert store.get_payment(pay.id).state == "waiting_for_card"  # never "approved" without its record


def test_size_cap_reached_then_raised(queue_path, card_protection):
    QueueStore.open(queue_path, terminal_id="T-0001").close()
    cap = queue_path.stat().st_size + 48 * 1024
    with QueueStore.open(queue_path, terminal_id="T-0001", max_db_bytes=cap) as store:
        recorded, err, pay = _fill(store, card_protection)
        assert recorded > 10 and err.code == "store_full" and isinstance(err, StoreError)
        _assert_nothing_half_written(store, recorded, pay)
        with pytest.raises(StoreFullError):  # still full: still a clean refusal
            store.record(
                type="sale",
                amount_minor=1,
                currency="EUR",
                card=card_protection.protect(FakeEmvRead()),
                auth={"mode": "offline"},
            )
    with QueueStore.open(queue_path, terminal_id="T-0001") as store:  # cap lifted (config change + restart)
        txn = store.record(
            type="sale",
            amount_minor=1,
            currency="EUR",
            card=card_protection.protect(FakeEmvRead()),
            auth={"mode": "offline"},
        )
        assert txn.sequence == recorded + 1
        assert store.verify() == recorded + 1


def _mount(target, size):
    return subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], capture_output=True, text=True
    )


@pytest.fixture
def tiny_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    target = tmp_path / "tiny"
    target.mkdir()
    result = _mount(target, "1m")
    if result.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {result.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_real_full_filesystem_then_space_returns(tiny_fs, card_protection):
    path = tiny_fs / "queue.sqlite"
    store = QueueStore.open(path, terminal_id="T-0001")
    try:
        recorded, err, pay = _fill(store, card_protection)
        assert recorded > 5 and err.code == "store_full"
        _assert_nothing_half_written(store, recorded, pay)
        subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_fs)], check=True)
        txn = store.record(
            type="sale",
            amount_minor=1,
            currency="EUR",
            card=card_protection.protect(FakeEmvRead()),
            auth={"mode": "offline"},
        )  # the same open store recovers, no restart needed
        assert txn.sequence == recorded + 1
        assert store.verify() == recorded + 1
    finally:
        store.close()
    with QueueStore.open(path, terminal_id="T-0001") as again:
        assert again.verify() == recorded + 1


def test_selftest_fails_when_the_queue_disk_is_full_and_passes_when_space_returns(tiny_fs):
    """The technician's selftest must not pass on a terminal that will decline every sale for want of disk."""
    import json

    from tests.harness.daemon import SMARTPOS, free_port, run_cli

    state = tiny_fs / "state"
    state.mkdir()
    config = tiny_fs / "smartpos.toml"
    config.write_text(f'[terminal]\nstate_dir = "{state}"\n\n[api]\nport = {free_port()}\n\n'
                      '[readers]\npcsc = false\nnfcpy = ["udp:127.0.0.1:30999"]\n')
    (tiny_fs / "filler").write_bytes(b"\0" * (900 * 1024))  # what the shop's logs left of the 1 MiB

    def disk_check():
        selftest = run_cli([*SMARTPOS, "selftest", "--json", "--config", str(config)])
        (check,) = [c for c in json.loads(selftest.stdout)["checks"] if c["check"] == "disk"]
        return selftest.returncode, check

    code, check = disk_check()
    assert code == 1 and not check["ok"] and "too little to record sales" in check["detail"]
    subprocess.run(["mount", "-o", "remount,size=200m", str(tiny_fs)], check=True)
    code, check = disk_check()
    assert check["ok"] and not check["warning"] and "MiB free" in check["detail"], check
