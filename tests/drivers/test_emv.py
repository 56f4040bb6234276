"""The EMV read flow against the virtual card in-process (the card simulator is the counterpart, not a mock)."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import emv, tlv
from drivers.errors import CardDataError, CardError, CardRemovedError, CardStatusError, NoApplicationError
from drivers.simulators.emv_card import InProcessCard, VirtualEmvCard, load_profile
from drivers.transport import RApdu, exchange

FIXED_DAY = time.struct_time((2026, 11, 23, 10, 30, 5, 0, 327, 0))
TD = emv.TerminalData(amount_minor=1250, currency="EUR", country_numeric=276, clock=lambda: FIXED_DAY)


def _read(profile: str, mode: str | None = None, td: emv.TerminalData = TD):
    transport = InProcessCard(VirtualEmvCard(profile, mode=mode))
    return emv.read_card(transport, td, reader="test"), transport


@pytest.mark.parametrize(
    ("profile", "scheme", "masked", "aid", "label", "expiry", "wallet"),
    [
        ("visa", "visa", "476173******0010", "A0000000031010", "VISA CREDIT", "2812", False),
        ("mastercard", "mastercard", "541333******0434", "A0000000041010", "MASTERCARD", "2711", False),
        ("phone", "visa", "489537******3478", "A0000000031010", "WALLET VISA", "2906", True),
    ],
)
def test_reads_each_profile(profile, scheme, masked, aid, label, expiry, wallet):
    card, _ = _read(profile)
    assert (card.scheme, card.masked_pan, card.aid, card.label, card.expiry, card.wallet) == (
        scheme, masked, aid, label, expiry, wallet
    )  # fmt: skip
    assert card.pan == load_profile(profile).pan
    assert card.pan_last4 == card.pan[-4:]
    assert card.track2_present and card.track2 is not None and card.track2.startswith(card.pan + "D" + expiry)
    assert card.cryptogram["9F27"] == "80"
    assert len(card.cryptogram["9F26"]) == 16
    assert card.cryptogram["9F02"] == "000000001250"
    assert card.cryptogram["5F2A"] == "0978"
    assert card.cryptogram["9A"] == "261123"


def test_public_dict_and_repr_carry_no_card_secrets():
    card, _ = _read("visa")
    public = repr(card.to_public_dict()) + repr(card) + card.redacted_tlv
    assert card.pan not in public
    assert card.track2 not in public
    assert card.expiry + "31" not in card.redacted_tlv  # 5F24 redacted
    assert "[REDACTED]" in card.redacted_tlv
    assert "'VISA CREDIT'" in card.redacted_tlv


def test_mastercard_reads_every_record_of_both_sfis():
    card, transport = _read("mastercard")
    reads = [a for a in transport.apdus if a[1] == 0xB2]
    assert [(a[2], a[3] >> 3) for a in reads] == [(1, 1), (1, 2), (2, 2)]
    assert "RECORD 2/2" in card.redacted_tlv


def test_refund_sends_transaction_type_20():
    refund = emv.TerminalData(amount_minor=500, txn_type=0x20, clock=lambda: FIXED_DAY)
    card, _ = _read("visa", td=refund)
    assert card.cryptogram["9C"] == "20"
    assert card.cryptogram["9F02"] == "000000000500"


def test_pdol_data_follows_the_card_request():
    _, transport = _read("mastercard")
    gpo = next(a for a in transport.apdus if a[:2] == b"\x80\xa8")
    body = tlv.parse(gpo[5 : 5 + gpo[4]])[0].value
    pdol = tlv.parse_dol(bytes.fromhex(load_profile("mastercard").applications[0].pdol.hex()))
    assert len(body) == sum(n for _, n in pdol)
    # 9F35 terminal type first, then 9F40 (5 bytes), then the amount
    assert body[0] == 0x22
    assert body[6:12] == bytes.fromhex("000000001250")


def test_unknown_pdol_tags_are_zero_filled_and_numeric_tags_left_padded():
    data = emv.build_dol_data([(0xDF8117, 3), (0x9F02, 4), (0x9F4E, 3)], {0x9F02: bytes.fromhex("000000001250"),
                                                                           0x9F4E: b"SMARTPOS"})  # fmt: skip
    assert data == bytes(3) + bytes.fromhex("00001250") + b"SMA"


def test_picks_highest_priority_supported_application():
    card, _ = _read("mastercard")
    assert card.aid == "A0000000041010"
    # With only Maestro supported, the terminal skips the higher-priority card application.
    maestro_only = emv.read_card(
        InProcessCard(VirtualEmvCard("mastercard")), TD, reader="t", supported_aids=["A0000000043060"]
    )
    assert maestro_only.aid == "A0000000043060"
    assert maestro_only.label == "MAESTRO"


def test_format1_gpo_answer():
    card = emv.read_card(InProcessCard(VirtualEmvCard("mastercard")), TD, reader="t", supported_aids=["A0000000043060"])
    assert card.cryptogram["82"] == "1980"
    assert card.masked_pan == "541333******0434"


def test_falls_back_to_known_aids_without_ppse():
    card, transport = _read("visa", "no-ppse")
    assert card.aid == "A0000000031010"
    assert transport.apdus[0][5:].startswith(b"2PAY.SYS.DDF01")


def test_t0_card_uses_get_response_and_le_correction():
    card, transport = _read("mastercard", "t0")
    assert card.masked_pan == "541333******0434"
    assert any(a[:2] == b"\x00\xc0" for a in transport.apdus)  # GET RESPONSE after 61xx
    reads = [a for a in transport.apdus if a[1] == 0xB2]
    assert any(a[4] != 0 for a in reads)  # re-sent with the Le from 6Cxx


def test_uid_only_card_has_no_application():
    with pytest.raises(NoApplicationError) as err:
        _read("uid")
    assert err.value.code == "no_application"


@pytest.mark.parametrize(
    ("mode", "error", "code"),
    [
        ("bad-tlv", CardDataError, "card_data"),
        ("wrong-length", CardDataError, "card_data"),
        ("error-sw", CardStatusError, "card_status"),
        ("drop", CardRemovedError, "card_removed"),
    ],
)
def test_bad_cards_give_typed_errors_without_card_data(mode, error, code):
    with pytest.raises(error) as err:
        _read("visa", mode)
    assert err.value.code == code
    assert "4761739001010010" not in str(err.value)


def test_error_sw_keeps_the_status_word():
    with pytest.raises(CardStatusError) as err:
        _read("visa", "error-sw")
    assert err.value.sw == 0x6985


class _Scripted:
    def __init__(self, answers):
        self.answers = list(answers)
        self.sent = []

    def transmit(self, apdu):
        self.sent.append(apdu)
        return self.answers.pop(0)


def test_exchange_chains_61xx_and_resends_on_6cxx():
    t = _Scripted([RApdu(b"", 0x6C05), RApdu(b"abc", 0x6102), RApdu(b"de", 0x9000)])
    assert exchange(t, bytes.fromhex("00B2010C00")) == RApdu(b"abcde", 0x9000)
    assert t.sent == [bytes.fromhex("00B2010C00"), bytes.fromhex("00B2010C05"), bytes.fromhex("00C0000002")]


def test_exchange_stops_endless_chaining():
    class Endless:
        def transmit(self, apdu):
            return RApdu(b"x", 0x61FF)

    with pytest.raises(CardDataError):
        exchange(Endless(), bytes.fromhex("00A4040000"))


def test_invalid_afl_is_card_data_error():
    for afl in ("0801", "00010100", "08000100", "08020100"):
        with pytest.raises(CardDataError):
            emv._afl_entries(bytes.fromhex(afl))


def test_pan_failing_luhn_is_rejected():
    profile = load_profile("visa")
    import dataclasses

    broken = dataclasses.replace(profile, pan="4761739001010011")
    with pytest.raises(CardDataError, match="check-digit"):
        emv.read_card(InProcessCard(VirtualEmvCard(broken)), TD, reader="t")


@pytest.mark.parametrize(
    ("aid", "pan", "scheme"),
    [
        ("A0000000031010", "4111111111111111", "visa"),
        ("A0000000041010", "5500000000000004", "mastercard"),
        ("A00000002501", "378282246310005", "amex"),
        ("A0000001523010", "6011111111111117", "discover"),
        ("A0000000651010", "3530111333300000", "jcb"),
        ("A000000333010101", "6200000000000005", "unionpay"),
        ("F000000001", "2223000048400011", "mastercard"),
        ("F000000001", "9999999999999995", "other"),
    ],
)
def test_scheme_from_aid_then_pan(aid, pan, scheme):
    assert emv.scheme_for(aid, pan) == scheme


# --- robustness: whatever a card answers, the flow ends with a result or a CardError ------------------------

_sw = st.sampled_from([0x9000, 0x9000, 0x9000, 0x6A82, 0x6985, 0x6C10, 0x6110, 0x6700]) | st.integers(0, 0xFFFF)


class _HostileCard:
    """Answers from a list drawn by hypothesis, then from a real card: hostile bytes early, plausible flow later."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.real = VirtualEmvCard("mastercard")
        self.count = 0

    def transmit(self, apdu):
        self.count += 1
        assert self.count < 200, "flow does not terminate"
        real = InProcessCard(self.real).transmit(apdu)
        if self.answers:
            data, sw, keep_real = self.answers.pop(0)
            return real if keep_real else RApdu(data, sw)
        return real


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.binary(max_size=80), _sw, st.booleans()), max_size=12))
def test_any_card_answers_end_in_a_result_or_card_error(answers):
    try:
        result = emv.read_card(_HostileCard(answers), TD, reader="t")
    except CardError as exc:
        assert exc.code in {"card_data", "card_status", "no_application", "card_removed"}
        return
    assert result.masked_pan.count("*") >= 3


def test_shipped_profiles_hold_luhn_valid_test_pans_only():
    from drivers.simulators.emv_card import profile_names
    from protocol.carddata import luhn_ok

    names = profile_names()
    assert {"visa", "mastercard", "phone", "uid"} <= set(names)
    for name in names:
        profile = load_profile(name)
        if profile.applications:
            assert luhn_ok(profile.pan) and 13 <= len(profile.pan) <= 19, name


def test_malformed_profile_file_is_a_clear_value_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[applications]]\nlabel = "NO AID"\n')
    with pytest.raises(ValueError, match="missing 'aid'"):
        load_profile(bad)
    with pytest.raises(ValueError, match="unknown card profile"):
        load_profile("no-such-profile")


def _variant(tmp_path, edit):
    """The visa profile with ``edit(text) -> text`` applied: a card that answers differently."""
    from drivers.simulators.emv_card import PROFILES_DIR

    path = tmp_path / "variant.toml"
    path.write_text(edit((PROFILES_DIR / "visa.toml").read_text()))
    return load_profile(path)


def test_card_cannot_replace_what_the_terminal_sent_in_the_sealed_cryptogram_data(tmp_path):
    """A cloned card that answers with its own unpredictable number, amount and date (pre-play) does not get them
    into the data head office checks the cryptogram against: the terminal's values are kept."""
    hostile = _variant(tmp_path, lambda t: t.replace(
        'gpo_tags = ["82", "94", "57",', 'gpo_tags = ["9F37", "9F02", "9A", "95", "82", "94", "57",').replace(
        '"9F4A" = "82"', '"9F4A" = "82"\n"9F37" = "00000000"\n"9F02" = "000000000001"\n"9A" = "200101"\n'
                         '"95" = "FFFFFFFFFF"'))
    transport = InProcessCard(VirtualEmvCard(hostile))
    read = emv.read_card(transport, TD, reader="test")
    gpo = next(c for c in transport.apdus if c[:2] == b"\x80\xa8")
    pdol = tlv.parse_dol(bytes.fromhex("9F66049F02069F03069F1A0295055F2A029A039C019F3704"))
    pos, by_tag = 7, {}
    for tag, length in pdol:
        by_tag[tlv.tag_hex(tag)] = gpo[pos:pos + length].hex().upper()
        pos += length
    for tag in ("9F37", "9F02", "9A", "95"):
        assert read.cryptogram[tag] == by_tag[tag], tag
    assert read.cryptogram["9F02"] == "000000001250" and read.cryptogram["9A"] == "261123"
    assert read.cryptogram["9F26"]  # the card's own cryptogram is still there


def test_the_sealed_terminal_values_are_the_bytes_the_card_was_sent(tmp_path):
    """A PDOL asking for a length other than the element's own (8 bytes of amount, 3 of country, 2 of the
    unpredictable number): the cryptogram data holds what went to the card in the GPO, padded or cut as sent, not
    the terminal's full values (head office rebuilding the card's input from those would not match it)."""
    odd = _variant(tmp_path, lambda t: t.replace('pdol = "9F6604 9F0206 9F0306 9F1A02 9505 5F2A02 9A03 9C01 9F3704"',
                                                 'pdol = "9F6604 9F0208 9F1A03 9505 5F2A02 9A03 9C01 9F3702"'))
    transport = InProcessCard(VirtualEmvCard(odd))
    read = emv.read_card(transport, TD, reader="test")
    gpo = next(c for c in transport.apdus if c[:2] == b"\x80\xa8")
    sent = gpo[7:7 + gpo[6]]
    assert read.cryptogram["9F02"] == "0000000000001250" == sent[4:12].hex().upper()  # numeric: zeros on the left
    assert read.cryptogram["9F1A"] == "000276" == sent[12:15].hex().upper()
    assert read.cryptogram["9F37"] == sent[-2:].hex().upper() and len(read.cryptogram["9F37"]) == 4


def test_pan_and_track2_of_different_cards_are_refused(tmp_path):
    mixed = _variant(tmp_path, lambda t: t.replace(
        '"9F4A" = "82"', '"9F4A" = "82"\n"57" = "5555555555554444D28122010000000000000F"'))
    with pytest.raises(CardDataError) as err:
        emv.read_card(InProcessCard(VirtualEmvCard(mixed)), TD, reader="test")
    assert "different cards" in err.value.message and "5555555555554444" not in str(err.value)
    late = _variant(tmp_path, lambda t: t.replace(
        '"9F4A" = "82"', '"9F4A" = "82"\n"57" = "4761739001010010D30122010000000000000F"'))
    with pytest.raises(CardDataError) as err:
        emv.read_card(InProcessCard(VirtualEmvCard(late)), TD, reader="test")
    assert "expiry" in err.value.message


def test_overlong_application_label_is_cut_to_the_emv_length(tmp_path):
    """EMV labels are 1-16 characters; a card sending 71 must not make the sale fail only when it is recorded."""
    long = _variant(tmp_path, lambda t: t.replace('label = "VISA CREDIT"', f'label = "{"X" * 71}"'))
    read = emv.read_card(InProcessCard(VirtualEmvCard(long)), TD, reader="test")
    assert read.label == "X" * 16


def _ppse_answer(aids: list[bytes]) -> bytes:
    from drivers import tlv

    entries = b"".join(tlv.encode(0x61, tlv.encode(0x4F, aid)) for aid in aids)
    return tlv.encode(0x6F, tlv.encode(0x84, b"2PAY.SYS.DDF01") + tlv.encode(0xA5, tlv.encode(0xBF0C, entries)))


@pytest.mark.parametrize("sw", [0x6D00, 0x6E00, 0x6999, 0x6A82])
def test_card_that_knows_no_select_by_name_has_no_application(sw):
    """A transit or access card answers SELECT with 6D00/6E00 (no such instruction or class): no payment
    application, so the reader can go on to take it as a UID card. It used to be a failed read (card_status)."""
    card = _Scripted([RApdu(b"", sw)] * (1 + len(TD.supported_aids)))
    with pytest.raises(NoApplicationError):
        emv.read_card(card, TD, reader="t")
    assert len(card.sent) == 1 + len(TD.supported_aids)  # the directory, then each AID the terminal knows


def test_a_directory_of_many_entries_costs_a_few_selects():
    visa = bytes.fromhex("A0000000031010")
    listed = [visa] * 150 + [bytes.fromhex("A0000000041010") + bytes([i]) for i in range(50)]
    card = _Scripted([RApdu(_ppse_answer(listed), 0x9000)] + [RApdu(b"", 0x6A82)] * 300)
    with pytest.raises(NoApplicationError):
        emv.read_card(card, TD, reader="t")
    assert len(card.sent) == 1 + emv._MAX_CANDIDATES  # the same application once, at most 8 tried


def test_select_refused_for_another_reason_is_a_card_status_error():
    card = _Scripted([RApdu(b"", 0x6A82), RApdu(b"", 0x6F00)])
    with pytest.raises(CardStatusError) as err:
        emv.read_card(card, TD, reader="t")
    assert err.value.sw == 0x6F00
