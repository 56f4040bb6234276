import pytest

from protocol.amounts import (
    currency_from_numeric,
    currency_numeric,
    exponent,
    format_amount,
    validate_amount,
    validate_currency,
)
from protocol.errors import ValidationError


@pytest.mark.parametrize("bad", [0, -1, -1250, 1.5, "1250", None, True, 10**12])
def test_rejects_amounts_that_are_not_positive_integers_within_bounds(bad):
    with pytest.raises(ValidationError) as err:
        validate_amount(bad)
    assert err.value.code == "invalid_amount"


def test_accepts_positive_integer_amounts():
    assert validate_amount(1250) == 1250


@pytest.mark.parametrize("bad", ["eur", "EURO", "XXX", "", 978, None])
def test_rejects_unknown_or_malformed_currency_codes(bad):
    with pytest.raises(ValidationError) as err:
        validate_currency(bad)
    assert err.value.code == "invalid_currency"


def test_numeric_codes_round_trip_for_emv_tag_5f2a():
    assert currency_numeric("EUR") == 978
    assert currency_from_numeric(840) == "USD"
    with pytest.raises(ValidationError):
        currency_from_numeric(999)


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [(1250, "EUR", "12.50 EUR"), (5, "USD", "0.05 USD"), (1500, "JPY", "1500 JPY"), (-1001, "KWD", "-1.001 KWD")],
)
def test_formats_amounts_with_the_currency_exponent(amount, currency, text):
    assert format_amount(amount, currency) == text
    assert exponent("JPY") == 0
