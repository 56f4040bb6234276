import pytest

from protocol.errors import ValidationError
from terminal.cli.ops import parse_amount


@pytest.mark.parametrize(("text", "currency", "minor"), [
    ("12.50", "EUR", 1250), ("12", "EUR", 1200), ("0.01", "EUR", 1), ("1500", "JPY", 1500), ("1.234", "BHD", 1234),
])
def test_major_units_to_minor(text, currency, minor):
    assert parse_amount(text, currency) == minor


@pytest.mark.parametrize(("text", "currency", "code"), [
    ("12.505", "EUR", "invalid_amount"), ("1.5", "JPY", "invalid_amount"), ("abc", "EUR", "invalid_amount"),
    ("-1", "EUR", "invalid_amount"), ("0", "EUR", "invalid_amount"), ("nan", "EUR", "invalid_amount"),
    ("1e30", "EUR", "invalid_amount"), ("1", "EURO", "invalid_currency"),
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
