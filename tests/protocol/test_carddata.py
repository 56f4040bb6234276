import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.carddata import has_track2, last4, luhn_ok, mask_pan, redact
from protocol.errors import ValidationError

VISA_TEST_PAN = "4761739001010010"


def test_masks_to_first_six_and_last_four():
    assert mask_pan(VISA_TEST_PAN) == "476173******0010"


def test_bin8_mask_when_configured():
    assert mask_pan(VISA_TEST_PAN, bin8=True) == "47617390****0010"


def test_receipts_get_last_four_only():
    assert last4(VISA_TEST_PAN) == "0010"


@pytest.mark.parametrize("bad", ["", "4761-7390", "47617390010100101234567", "abcd" * 4, VISA_TEST_PAN + "\n"])
def test_rejects_strings_that_are_not_pans(bad):
    with pytest.raises(ValidationError):
        mask_pan(bad)


def test_luhn():
    assert luhn_ok(VISA_TEST_PAN)
    assert not luhn_ok("4761739001010011")


def test_redacts_pans_and_track_data_in_free_text():
    line = f"card {VISA_TEST_PAN} track {VISA_TEST_PAN}D2512201000000000 spaced 4761 7390 0101 0010"
    out = redact(line)
    assert VISA_TEST_PAN not in out
    assert "4761 7390 0101 0010" not in out
    assert "[REDACTED-TRACK]" in out
    assert "476173******0010" in out


def test_leaves_non_card_numbers_alone():
    assert redact("sequence 1234567890123 amount 1250") == "sequence 1234567890123 amount 1250"


@given(st.text())
def test_redact_never_fails_on_any_text(text):
    assert isinstance(redact(text), str)


@given(st.from_regex(r"[0-9]{13,19}", fullmatch=True).filter(luhn_ok))
def test_no_luhn_valid_pan_survives_redaction(pan):
    assert pan not in redact(f"x {pan} y")
    masked = mask_pan(pan)
    assert masked[-4:] == pan[-4:]
    assert masked.count("*") >= 3


def test_recognises_track2_shapes():
    assert has_track2(f"x {VISA_TEST_PAN}D25122010000000000F y")
    assert has_track2(f"{VISA_TEST_PAN}=2512201")
    assert not has_track2(f"{VISA_TEST_PAN} 2512")
