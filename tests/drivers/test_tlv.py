"""BER-TLV parser: correct on valid input, CardDataError (and nothing else, quickly) on anything malformed."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import tlv
from drivers.errors import CardDataError


def test_parses_nested_fci_with_multibyte_tags():
    data = bytes.fromhex("6F1A840E325041592E5359532E4444463031A508BF0C05610387010100")
    nodes = tlv.parse(data)
    assert [n.tag for n in nodes] == [0x6F]
    assert tlv.find(nodes, 0x84).value == b"2PAY.SYS.DDF01"
    entry = tlv.find(nodes, 0x61)
    assert entry is not None and entry.constructed
    assert tlv.primitives(nodes)[0x87] == b"\x01"


def test_long_form_lengths():
    value = bytes(range(256)) * 2
    nodes = tlv.parse(tlv.encode(0x9F10, value))
    assert nodes[0].value == value
    assert tlv.encode(0x9F10, value)[:5] == bytes.fromhex("9F10820200")


def test_zero_padding_between_objects_is_skipped():
    nodes = tlv.parse(b"\x00\x00" + tlv.encode(0x5A, b"\x12") + b"\x00")
    assert [(n.tag, n.value) for n in nodes] == [(0x5A, b"\x12")]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (bytes.fromhex("5A08411111"), "value shorter than its length"),
        (bytes.fromhex("5A"), "length missing"),
        (bytes.fromhex("9F"), "multi-byte tag cut off"),
        (bytes.fromhex("9F8080800101"), "tag longer than 3 bytes / non-minimal"),
        (bytes.fromhex("7080" "5A0112" "0000"), "indefinite length"),
        (bytes.fromhex("5A84FFFFFFFF12"), "4-byte length field"),
        (bytes.fromhex("5A83FFFFFF12"), "absurd 3-byte length"),
        (bytes.fromhex("5A82"), "length bytes missing"),
        (bytes.fromhex("5A0112FF"), "trailing garbage"),
        (bytes.fromhex("700A5A0112"), "container longer than the data"),
        (bytes.fromhex("70035A0512"), "child runs past its container"),
    ],
)
def test_malformed_input_is_card_data_error(data, why):
    with pytest.raises(CardDataError):
        tlv.parse(data)


def test_nesting_deeper_than_limit_is_rejected():
    data = tlv.encode(0x5A, b"\x01")
    for _ in range(tlv.MAX_DEPTH):
        data = tlv.encode(0x70, data)
    with pytest.raises(CardDataError, match="deeply"):
        tlv.parse(data)


def test_nesting_at_limit_is_accepted():
    data = tlv.encode(0x5A, b"\x01")
    for _ in range(tlv.MAX_DEPTH - 1):
        data = tlv.encode(0x70, data)
    assert tlv.find(tlv.parse(data), 0x5A).value == b"\x01"


def test_too_many_objects_is_rejected():
    with pytest.raises(CardDataError, match="too many"):
        tlv.parse(b"\x5a\x00" * (tlv.MAX_OBJECTS + 1))


def test_oversized_input_is_rejected():
    with pytest.raises(CardDataError, match="too large"):
        tlv.parse(bytes(tlv.MAX_INPUT + 1))


def test_non_bytes_input_is_card_data_error():
    with pytest.raises(CardDataError):
        tlv.parse(12345)  # type: ignore[arg-type]


def test_dol_parsing():
    assert tlv.parse_dol(bytes.fromhex("9F66049F02065F2A029A039C01")) == [
        (0x9F66, 4), (0x9F02, 6), (0x5F2A, 2), (0x9A, 3), (0x9C, 1)
    ]  # fmt: skip
    with pytest.raises(CardDataError):
        tlv.parse_dol(bytes.fromhex("9F66"))
    # A DOL length is one byte, not BER: 0x81 is 129 bytes asked for (read as BER it swallowed the next tag).
    assert tlv.parse_dol(bytes.fromhex("9F66819F0206")) == [(0x9F66, 0x81), (0x9F02, 6)]


def test_dump_redacts_and_shows_text():
    nodes = tlv.parse(tlv.encode(0x70, tlv.encode(0x5A, bytes.fromhex("4761739001010010")) + tlv.encode(0x50, b"VISA")))
    text = tlv.dump(nodes, redact_tags=frozenset({0x5A}), text_tags=frozenset({0x50}))
    assert "4761739001010010" not in text
    assert "5A (8) [REDACTED]" in text
    assert "50 (4) 'VISA'" in text


# --- properties ----------------------------------------------------------------------------------------------

_first_primitive = st.integers(0x01, 0xFF).filter(lambda b: b & 0x20 == 0 and b & 0x1F != 0x1F)
_first_constructed = st.integers(0x20, 0xFF).filter(lambda b: b & 0x20 and b & 0x1F != 0x1F)


def _tag(constructed: bool) -> st.SearchStrategy[int]:
    one = _first_constructed if constructed else _first_primitive
    two = st.tuples(
        st.sampled_from([0xBF, 0xFF, 0x7F, 0x3F] if constructed else [0x9F, 0x5F, 0xDF, 0x1F]),
        st.integers(0x01, 0x7F),
    ).map(lambda t: (t[0] << 8) | t[1])
    return st.one_of(one, two)


_primitive = st.tuples(_tag(False), st.binary(max_size=300)).map(lambda t: ("p", t[0], t[1]))
_tree = st.recursive(
    _primitive,
    lambda children: st.tuples(_tag(True), st.lists(children, max_size=4)).map(lambda t: ("c", t[0], t[1])),
    max_leaves=20,
)


def _encode(node) -> bytes:
    kind, tag, body = node
    if kind == "p":
        return tlv.encode(tag, body)
    return tlv.encode(tag, b"".join(_encode(child) for child in body))


def _shape(node):
    kind, tag, body = node
    return (tag, body) if kind == "p" else (tag, [_shape(c) for c in body])


def _parsed_shape(parsed: tlv.Tlv):
    if parsed.children is None:
        return (parsed.tag, parsed.value)
    return (parsed.tag, [_parsed_shape(c) for c in parsed.children])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_tree, min_size=1, max_size=4).filter(lambda ts: sum(1 for _ in ts) > 0))
def test_roundtrip_of_generated_trees(trees):
    data = b"".join(_encode(t) for t in trees)
    depth_ok = all(_depth(t) <= tlv.MAX_DEPTH for t in trees)
    if not depth_ok:
        with pytest.raises(CardDataError):
            tlv.parse(data)
        return
    assert [_parsed_shape(n) for n in tlv.parse(data)] == [_shape(t) for t in trees]


def _depth(node) -> int:
    kind, _tag, body = node
    return 1 if kind == "p" else 1 + max((_depth(c) for c in body), default=0)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_parse_or_raise_card_data_error(data):
    try:
        nodes = tlv.parse(data)
    except CardDataError:
        return
    # Whatever parsed survives re-encoding: the same objects, in the same order. (Not the same bytes: BER lets a
    # card write a short length in long form, e.g. 81 05, which the parser accepts and encode() writes as 05.)
    again = tlv.parse(b"".join(tlv.encode(n.tag, n.value) for n in nodes))
    assert [(n.tag, n.value) for n in again] == [(n.tag, n.value) for n in nodes]
    # Every byte of the input is accounted for: the objects' encodings, the padding, and nothing else.
    assert sum(len(n.value) + 2 for n in nodes) <= len(data)


def test_a_short_length_in_long_form_is_read():
    assert [(n.tag, n.value) for n in tlv.parse(bytes.fromhex("5A81084761739001010010"))] == [
        (0x5A, bytes.fromhex("4761739001010010"))
    ]
    assert [(n.tag, n.value) for n in tlv.parse(b"\x01\x81\x00")] == [(0x01, b"")]


@settings(max_examples=300, deadline=None)
@given(_tree, st.data())
def test_any_truncation_of_an_object_is_rejected(tree, data):
    encoded = _encode(tree)
    cut = data.draw(st.integers(1, len(encoded) - 1), label="cut")
    with pytest.raises(CardDataError):
        tlv.parse(encoded[:cut])


@settings(max_examples=300, deadline=None)
@given(_tree, st.binary(min_size=1, max_size=40))
def test_trailing_bytes_either_form_objects_or_are_rejected(tree, garbage):
    encoded = _encode(tree)
    try:
        nodes = tlv.parse(encoded + garbage)
    except CardDataError:
        return
    # Accepted only if the garbage itself was complete TLV (or padding): the first object is intact.
    assert _parsed_shape(nodes[0]) == _shape(tree) or _depth(tree) > tlv.MAX_DEPTH
    tlv.parse(garbage)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_dol_parser_never_raises_anything_else(data):
    try:
        tlv.parse_dol(data)
    except CardDataError:
        pass


@pytest.mark.slow
@settings(max_examples=50_000, deadline=None)
@given(st.binary(max_size=2000))
def test_long_run_arbitrary_bytes_only_card_data_error(data):
    try:
        tlv.parse(data)
    except CardDataError:
        pass
