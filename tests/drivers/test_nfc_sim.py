"""The nfcpy-side simulators and NDEF mapping: ISO-DEP block rules, Type 4/3 tag layouts, NDEF decoding."""

from __future__ import annotations

import struct
import threading

import ndef
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.cardread import NdefRecord
from drivers.errors import CardDataError
from drivers.ndef import decode_records, encode_records
from drivers.simulators.nfc_tag import Type4NdefApp, type3_blocks
from drivers.simulators.nfc_target import EndTap, IsoDepSession, serve_isodep
from tests.harness.nfc import free_udp_port


# -- NDEF mapping --------------------------------------------------------------------------------------------------
def test_records_round_trip_through_ndeflib():
    records = [
        NdefRecord("text", "MEMBER-0042", "en"),
        NdefRecord("uri", "https://shop.example/c/SAVE10"),
        NdefRecord("mime", 'application/json: {"points": 120}'),
    ]
    assert decode_records(encode_records(records)) == records


def test_smart_poster_becomes_its_link_and_unknown_types_are_other():
    octets = b"".join(
        ndef.message_encoder([ndef.SmartposterRecord("https://shop.example/p", title="Offer"),
                              ndef.Record("urn:nfc:ext:example.com:points", "", b"\x01")])
    )  # fmt: skip
    assert decode_records(octets) == [
        NdefRecord("uri", "https://shop.example/p"),
        NdefRecord("other", "urn:nfc:ext:example.com:points"),
    ]


def test_binary_mime_payload_is_summarised_not_dumped():
    octets = b"".join(ndef.message_encoder([ndef.Record("image/png", "", b"\x89PNG\xff\x00")]))
    assert decode_records(octets) == [NdefRecord("mime", "image/png: 6 bytes")]


def test_empty_message_is_no_records():
    assert decode_records(b"") == []


@pytest.mark.parametrize("octets", [b"\xd1", b"\xd1\x01\x05T\x02en", b"\x91\x01\x01T\x02", b"\x00" * 3, b"\xff" * 40])
def test_malformed_ndef_is_card_data_error(octets):
    with pytest.raises(CardDataError):
        decode_records(octets)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_card_data_error(octets):
    try:
        records = decode_records(octets)
    except CardDataError:
        return
    assert all(r.type in ("text", "uri", "mime", "other") and isinstance(r.value, str) for r in records)


# -- ISO-DEP target block rules ------------------------------------------------------------------------------------
def _session(response: bytes, fsd: int = 32) -> IsoDepSession:
    return IsoDepSession(lambda apdu: response, fsd)


def test_i_block_answered_with_same_block_number():
    session = _session(b"\x90\x00")
    assert session.frame(b"\x02\x00\xa4\x04\x00") == b"\x02\x90\x00"
    assert session.frame(b"\x03\x00\xb2\x01\x0c") == b"\x03\x90\x00"
    assert session.apdus == 2


def test_long_response_is_chained_in_reader_frame_size():
    response = bytes(range(70)) + b"\x90\x00"  # 72 bytes, FSD 32 -> 29 data bytes per block
    session = _session(response, fsd=32)
    first = session.frame(b"\x02\x80\xa8\x00\x00")
    assert first[0] == 0x12 and first[1:] == response[:29]
    second = session.frame(b"\xa3")  # R(ACK) with the next block number: send more
    assert second[0] == 0x13 and second[1:] == response[29:58]
    last = session.frame(b"\xa2")
    assert last[0] == 0x02 and last[1:] == response[58:]


def test_chained_command_is_acknowledged_then_processed_whole():
    seen = []
    session = IsoDepSession(lambda apdu: seen.append(apdu) or b"\x90\x00", 256)
    assert session.frame(b"\x12\x00\xa4") == b"\xa2"
    assert session.frame(b"\x03\x04\x00") == b"\x03\x90\x00"
    assert seen == [b"\x00\xa4\x04\x00"]


def test_nak_with_current_number_retransmits_and_presence_check_gets_ack():
    session = _session(b"\x6a\x82")
    reply = session.frame(b"\x02\x00\xa4\x04\x00")
    assert session.frame(b"\xb2") == reply  # reader missed our answer
    assert session.frame(b"\xb3") == b"\xa2"  # presence check (next block number): "still here"


def test_deselect_ends_the_session():
    session = _session(b"\x90\x00")
    assert session.frame(b"\xc2") == b"\xc2" and session.done


def test_cid_byte_is_skipped():
    seen = []
    session = IsoDepSession(lambda apdu: seen.append(apdu) or b"\x90\x00", 256)
    session.frame(b"\x0a\x00\x00\xa4\x04\x00")
    assert seen == [b"\x00\xa4\x04\x00"]


# -- tag layouts ---------------------------------------------------------------------------------------------------
def test_type4_app_serves_capability_container_and_ndef_file():
    message = encode_records([NdefRecord("text", "MEMBER-0042", "en")])
    app = Type4NdefApp(message)
    assert app.process(bytes.fromhex("00A4040007D276000085010100")) == b"\x90\x00"
    assert app.process(bytes.fromhex("00A4000C02E103")) == b"\x90\x00"
    cc = app.process(bytes.fromhex("00B000000F"))[:-2]
    cclen, version, mle, mlc = struct.unpack(">HBHH", cc[:7])
    assert (cclen, version >> 4, mle, mlc) == (15, 2, 0xFF, 0xFF)
    assert (cc[7:9], cc[9:11]) == (b"\x04\x06", b"\xe1\x04")
    assert cc[13:15] == b"\x00\xff"  # readable, never writable
    assert app.process(bytes.fromhex("00A4000C02E104")) == b"\x90\x00"
    data = app.process(bytes.fromhex("00B0000000"))[:-2]
    assert struct.unpack(">H", data[:2])[0] == len(message) and data[2:] == message
    assert app.process(bytes.fromhex("00D6000002AABB")) == b"\x69\x82"


def test_type4_app_refuses_files_before_selecting_the_application():
    app = Type4NdefApp(b"")
    assert app.process(bytes.fromhex("00A4000C02E103")) == b"\x6a\x82"
    assert app.process(bytes.fromhex("00A404000E325041592E5359532E444446303100")) == b"\x6a\x82"  # PPSE: none


def test_type3_attribute_block_has_length_and_checksum():
    message = encode_records([NdefRecord("uri", "https://shop.example/" + "x" * 40)])
    blocks = type3_blocks(message)
    attr = blocks[0]
    assert attr[0] == 0x10 and struct.unpack(">I", b"\x00" + attr[11:14])[0] == len(message)
    assert struct.unpack(">H", attr[14:16])[0] == sum(attr[:14])
    assert b"".join(blocks[1:])[: len(message)] == message and all(len(b) == 16 for b in blocks)


# -- ISO-DEP chaining through the real nfcpy initiator -------------------------------------------------------------
def test_long_apdus_chain_both_ways_through_nfcpy():
    import nfc.clf
    import nfc.tag

    from drivers.nfc_reader import NfcpyTransport, import_nfc

    import_nfc()
    port = free_udp_port()
    stop = threading.Event()
    seen: list[bytes] = []
    long_response = bytes(i % 251 for i in range(700)) + b"\x90\x00"

    def handler_for_tap(n):
        def process(apdu):
            seen.append(apdu)
            if apdu[1] == 0xB2:
                raise EndTap
            return long_response

        return process

    served: list[int] = []
    thread = threading.Thread(
        target=lambda: served.append(serve_isodep(handler_for_tap, port, uid=b"\x08\x01\x02\x03", taps=1, stop=stop)),
        daemon=True,
    )
    thread.start()
    clf = nfc.ContactlessFrontend(f"udp:127.0.0.1:{port}")
    try:
        target = None
        for _ in range(5):
            target = clf.sense(nfc.clf.RemoteTarget("106A"))
            if target is not None:
                break
        assert target is not None
        tag = nfc.tag.activate(clf, target)
        transport = NfcpyTransport(tag)
        command = b"\x80\xe2\x00\x00" + bytes([255]) + bytes(255)  # 260 bytes: more than one 256-byte frame
        resp = transport.transmit(command)
        assert resp.sw == 0x9000 and resp.data == long_response[:-2]
        assert seen == [command]
        # A phone pulled away mid-read: the transport raises the typed error, not an nfcpy exception.
        from drivers.errors import CardRemovedError

        with pytest.raises(CardRemovedError):
            transport.transmit(b"\x00\xb2\x01\x0c\x00")
    finally:
        clf.close()
        stop.set()
        thread.join(5)
    assert served == [1]


def test_type2_memory_layout_holds_the_message_tlv():
    from drivers.simulators.nfc_tag import type2_memory

    uid = bytes.fromhex("05A1B2C3D4E5F6")
    message = encode_records([NdefRecord("text", "MEMBER-0042", "en")])
    memory = type2_memory(uid, message)
    assert memory[:3] == uid[:3] and memory[4:8] == uid[3:]
    assert memory[3] == 0x88 ^ uid[0] ^ uid[1] ^ uid[2] and memory[8] == uid[3] ^ uid[4] ^ uid[5] ^ uid[6]
    assert memory[12] == 0xE1 and memory[15] == 0x0F  # NDEF magic, read-only
    assert memory[16] == 0x03 and memory[17] == len(message)
    assert memory[18 : 18 + len(message)] == message and memory[18 + len(message)] == 0xFE
    assert memory[14] * 8 == len(memory) - 16


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=12), max_size=12))
def test_target_answers_any_frame_sequence_without_raising(frames):
    session = IsoDepSession(lambda apdu: b"\x90\x00", 32)
    for frame in frames:
        reply = session.frame(frame)
        assert reply is None or isinstance(reply, bytes)
