"""The hash chain: any change, removal, insertion or reordering of an uploaded transaction is detected."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.chain import CHAINED_FIELDS, GENESIS, WIRE_FIELDS, ChainError, chain_hash, envelope_digest, verify_chain


def _row(seq: int, prev: str, **over) -> dict:
    envelope = f"v1.envelope-{seq}"
    row = {
        "uuid": f"00000000-0000-4000-8000-{seq:012d}",
        "terminal_id": "T-1",
        "sequence": seq,
        "batch": 1,
        "type": "sale",
        "created_at": "2026-11-23T12:00:00.000000Z",
        "amount_minor": 100 * seq,
        "currency": "EUR",
        "scheme": "visa",
        "masked_pan": "411111******1111",
        "pan_last4": "1111",
        "token": "ab" * 32,
        "aid": "A0000000031010",
        "label": "VISA",
        "entry_mode": "contactless",
        "wallet": False,
        "auth_mode": "offline",
        "auth_code": None,
        "auth_reason": None,
        "auth_id": None,
        "reference": f"R-{seq}",
        "void_of": None,
        "envelope_sha256": envelope_digest(envelope),
        "envelope": envelope,
        **over,
    }
    row["prev_hash"] = prev
    row["hash"] = chain_hash(prev, row)
    return row


def chain(n: int) -> list[dict]:
    rows, prev = [], GENESIS
    for seq in range(1, n + 1):
        row = _row(seq, prev)
        rows.append(row)
        prev = row["hash"]
    return rows


def test_a_clean_chain_verifies_and_returns_the_last_hash():
    rows = chain(5)
    assert verify_chain(rows, start_sequence=1) == rows[-1]["hash"]
    assert verify_chain([]) == GENESIS
    assert set(WIRE_FIELDS) == set(rows[0])


def test_a_chain_can_be_verified_in_pages():
    rows = chain(6)
    last = verify_chain(rows[:3], start_sequence=1)
    assert verify_chain(rows[3:], last, start_sequence=4) == rows[-1]["hash"]


def test_wiping_the_envelope_keeps_the_chain_valid():
    rows = chain(3)
    for row in rows:
        row["envelope"] = None
    verify_chain(rows, start_sequence=1)


def test_hash_ignores_key_order_and_extra_keys_but_not_values():
    row = chain(1)[0]
    reordered = dict(reversed(list(row.items())))
    reordered["received_at"] = "2026-11-23T12:00:01Z"
    assert chain_hash(GENESIS, reordered) == row["hash"]
    assert chain_hash(GENESIS, {**row, "amount_minor": 101}) != row["hash"]


@pytest.mark.parametrize("name", [f for f in CHAINED_FIELDS if f not in ("sequence",)])
def test_changing_any_chained_field_breaks_the_chain(name):
    rows = chain(3)
    tampered = copy.deepcopy(rows)
    value = tampered[1][name]
    if isinstance(value, bool):
        tampered[1][name] = not value
    elif isinstance(value, int):
        tampered[1][name] = value + 1
    elif value is None:
        tampered[1][name] = "x"
    else:
        tampered[1][name] = value + "x"
    with pytest.raises(ChainError) as err:
        verify_chain(tampered, start_sequence=1)
    assert err.value.sequence == 2
    assert err.value.code in ("bad_hash", "bad_row")


def test_removed_row_is_a_gap_and_reordered_rows_break_links():
    rows = chain(4)
    with pytest.raises(ChainError) as err:
        verify_chain([rows[0], rows[2], rows[3]], start_sequence=1)
    assert (err.value.code, err.value.sequence) == ("gap", 3)
    with pytest.raises(ChainError) as err:
        verify_chain([rows[0], rows[2], rows[3]])  # contiguity is checked after the first row even without a start
    assert err.value.code == "gap"
    renumbered = {**rows[2], "sequence": 2}  # a row moved into the hole still does not link
    with pytest.raises(ChainError) as err:
        verify_chain([rows[0], renumbered])
    assert err.value.code == "bad_link"
    with pytest.raises(ChainError):
        verify_chain([rows[1], rows[0]])


def test_a_recomputed_hash_does_not_hide_a_change_from_the_next_link():
    rows = chain(3)
    rows[1]["amount_minor"] = 1
    rows[1]["hash"] = chain_hash(rows[1]["prev_hash"], rows[1])  # attacker rehashes the changed row...
    with pytest.raises(ChainError) as err:
        verify_chain(rows, start_sequence=1)
    assert (err.value.code, err.value.sequence) == ("bad_link", 3)  # ...but the next row still points at the old one


def test_swapped_envelope_is_detected():
    rows = chain(2)
    rows[0]["envelope"], rows[1]["envelope"] = rows[1]["envelope"], rows[0]["envelope"]
    with pytest.raises(ChainError) as err:
        verify_chain(rows)
    assert err.value.code == "envelope_mismatch"


@pytest.mark.parametrize(
    "broken",
    [
        {"amount_minor": "100"},
        {"amount_minor": True},
        {"sequence": 1.0},
        {"wallet": 0},
        {"currency": 978},
        {"amount_minor": 2**64},
        {"reference": "bad \ud800 surrogate"},
    ],
)
def test_wrong_types_are_bad_rows(broken):
    row = {**chain(1)[0], **broken}
    with pytest.raises(ChainError) as err:
        verify_chain([row])
    assert err.value.code == "bad_row"


def test_missing_field_and_non_mapping():
    row = chain(1)[0]
    del row["token"]
    with pytest.raises(ChainError):
        verify_chain([row])
    with pytest.raises(ChainError):
        verify_chain(["not a row"])  # type: ignore[list-item]
    with pytest.raises(ChainError):
        chain_hash("xyz", chain(1)[0])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=8),
    data=st.data(),
)
def test_any_single_field_mutation_is_caught(n, data):
    rows = chain(n)
    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    name = data.draw(st.sampled_from([f for f in CHAINED_FIELDS if f not in ("sequence", "wallet")]))
    original = rows[index][name]
    if isinstance(original, int):
        new = data.draw(st.integers().filter(lambda v: v != original))
    else:
        new = data.draw(st.one_of(st.none(), st.text(max_size=20)).filter(lambda v: v != original))
    rows[index][name] = new
    with pytest.raises(ChainError) as err:
        verify_chain(rows, start_sequence=1)
    assert err.value.sequence in (index + 1, None) or err.value.code == "bad_row"


# --- the fast paths give the same answers as the general ones ---------------------------------------------------

_texts = st.one_of(st.none(), st.text(max_size=30))


@settings(max_examples=80, deadline=None)
@given(
    reference=_texts,
    label=_texts,
    amount=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    wallet=st.booleans(),
    extra=st.booleans(),
)
def test_a_row_built_in_sorted_order_hashes_as_chain_hash_does(reference, label, amount, wallet, extra):
    from protocol.chain import SORTED_CHAINED_FIELDS, chain_hash_sorted

    row = _row(7, GENESIS, reference=reference, label=label, amount_minor=amount, wallet=wallet)
    if extra:
        row["received_at"] = "2026-11-23T12:00:01Z"  # the general encoding ignores extra keys
    fields = {name: row[name] for name in SORTED_CHAINED_FIELDS}
    try:
        expected = chain_hash(GENESIS, row)
    except ChainError as exc:  # a lone surrogate: both refuse it the same way
        with pytest.raises(ChainError) as err:
            chain_hash_sorted(GENESIS, fields)
        assert err.value.code == exc.code
        return
    assert chain_hash_sorted(GENESIS, fields) == expected == row["hash"]


def test_chain_hash_sorted_refuses_a_dict_in_another_order_or_shape():
    from protocol.chain import SORTED_CHAINED_FIELDS, chain_hash_sorted

    row = _row(1, GENESIS)
    fields = {name: row[name] for name in SORTED_CHAINED_FIELDS}
    shapes = (dict(reversed(list(fields.items()))), {**fields, "hash": "x"}, {k: fields[k] for k in list(fields)[1:]})
    for bad in shapes:
        with pytest.raises(ChainError) as err:
            chain_hash_sorted(GENESIS, bad)
        assert err.value.code == "bad_row"
    with pytest.raises(ChainError):
        chain_hash_sorted("not a hash", fields)
    with pytest.raises(ChainError):
        chain_hash_sorted(GENESIS, {**fields, "amount_minor": "100"})


def _single_row_code(row) -> str | None:
    claimed = row.get("prev_hash") if isinstance(row, dict) else None
    try:
        verify_chain([row], claimed if isinstance(claimed, str) else "")
    except ChainError as exc:
        return exc.code
    return None


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"amount_minor": 1},
        {"amount_minor": "100"},
        {"wallet": 0},
        {"prev_hash": "AB" * 32},
        {"prev_hash": None},
        {"prev_hash": "ab" * 32 + "\n"},
        {"hash": "00" * 32},
        {"envelope": "v2.other"},
        {"envelope": 5},
        {"envelope": None},
        {"reference": "bad \ud800 surrogate"},
        {"received_at": "extra keys are ignored"},
    ],
)
def test_row_error_says_what_verify_chain_says_of_one_row(change):
    from protocol.chain import row_error

    row = {**_row(3, "cd" * 32), **change}
    assert row_error(row) == _single_row_code(row)


def test_row_error_of_a_row_without_a_field_and_of_a_non_row():
    from protocol.chain import row_error

    row = _row(3, "cd" * 32)
    del row["token"]
    assert row_error(row) == "bad_row" == _single_row_code(row)
    assert row_error(["not", "a", "row"]) == "bad_row"


def test_the_chain_hash_is_the_one_version_0_1_wrote():
    # A known answer, computed with the chain module of version 0.1: chains already in queues and at head office
    # must verify the same through every path (the general encoding, the uploaded-row one, the sorted-dict one).
    from protocol.chain import SORTED_CHAINED_FIELDS, chain_hash_sorted, row_error

    row = {
        "uuid": "01a23468-8b27-70e5-880c-364e0bc8c7df", "terminal_id": "T-0001", "sequence": 42, "batch": 3,
        "type": "sale", "created_at": "2026-11-23T12:00:00.000000Z", "amount_minor": 1250, "currency": "EUR",
        "scheme": "visa", "masked_pan": "411111******1111", "pan_last4": "1111", "token": "ab" * 32,
        "aid": "A0000000031010", "label": "VISA CRÉDIT €", "entry_mode": "contactless", "wallet": True,
        "auth_mode": "offline", "auth_code": None, "auth_reason": None, "auth_id": None, "reference": 'R-"42"\n',
        "void_of": None, "envelope_sha256": "cd" * 32,
    }  # fmt: skip
    expected = "b791b3c1be76ae4b900c01b076dd5d47f4be10344b1943ea50407d7cfa9e8243"
    assert chain_hash("ef" * 32, row) == expected
    assert chain_hash_sorted("ef" * 32, {name: row[name] for name in SORTED_CHAINED_FIELDS}) == expected
    uploaded = {**row, "prev_hash": "ef" * 32, "hash": expected, "envelope": None}
    assert row_error(uploaded) is None and verify_chain([uploaded], "ef" * 32) == expected
