import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ValidationError
from terminal.cli.ops import parse_amount


@pytest.mark.parametrize(("text", "currency", "minor"), [
    ("12.50", "EUR", 1250), ("12", "EUR", 1200), ("12.", "EUR", 1200), (".5", "EUR", 50),
    ("0.01", "EUR", 1), ("1500", "JPY", 1500), ("1.234", "BHD", 1234),
])
def test_major_units_to_minor(text, currency, minor):
    assert parse_amount(text, currency) == minor


@pytest.mark.parametrize(("text", "currency", "code"), [
    ("12.505", "EUR", "invalid_amount"), ("1.5", "JPY", "invalid_amount"), ("abc", "EUR", "invalid_amount"),
    ("-1", "EUR", "invalid_amount"), ("0", "EUR", "invalid_amount"), ("nan", "EUR", "invalid_amount"),
    ("1e30", "EUR", "invalid_amount"), ("1", "EURO", "invalid_currency"),
    # Decimal() would take these; an amount typed by a technician is digits and one point
    ("1e3", "EUR", "invalid_amount"), ("1_0", "EUR", "invalid_amount"), (" 12", "EUR", "invalid_amount"),
    ("+5", "EUR", "invalid_amount"), ("Infinity", "EUR", "invalid_amount"), ("١٢", "EUR", "invalid_amount"),
    ("12,50", "EUR", "invalid_amount"), ("", "EUR", "invalid_amount"),
])
def test_bad_amounts_are_typed_errors(text, currency, code):
    with pytest.raises(ValidationError) as info:
        parse_amount(text, currency)
    assert info.value.code == code


@pytest.mark.parametrize(("text", "said"), [("-5", "-5"), ("0", "0"), ("99999999999", "99999999999 EUR")])
def test_amount_errors_speak_in_the_units_typed(text, said):
    """The technician typed major units: the message quotes them, not the minor units the API would get."""
    with pytest.raises(ValidationError) as info:
        parse_amount(text, "EUR")
    assert said in info.value.message and "amount_minor" not in info.value.message


@pytest.mark.parametrize(("seconds", "shown"), [
    (0.4, "0 s"), (59.9, "59 s"), (119, "119 s"), (120, "2 min"), (7199, "119 min"), (7200, "2 h 00 min"),
    (3 * 3600 + 5 * 60 + 9, "3 h 05 min"), (49 * 3600, "2 d 1 h"),
])
def test_queue_age_as_a_technician_reads_it(seconds, shown):
    from terminal.cli.ops import _age

    assert _age(seconds) == shown


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=99_999_999), st.sampled_from(["EUR", "JPY", "BHD"]))
def test_amount_typed_in_major_units_round_trips(minor, currency):
    from protocol.amounts import exponent

    digits = exponent(currency)
    text = f"{minor // 10**digits}.{minor % 10**digits:0{digits}d}" if digits else str(minor)
    assert parse_amount(text, currency) == minor


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=24))
def test_any_text_is_an_amount_or_a_typed_error(text):
    """Whatever a technician types: an amount in range, or ValidationError(invalid_amount) — never a crash."""
    try:
        minor = parse_amount(text, "EUR")
    except ValidationError as exc:
        assert exc.code == "invalid_amount"
    else:
        assert isinstance(minor, int) and minor > 0 and text.strip() == text
