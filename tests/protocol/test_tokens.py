"""Card tokens: keyed, stable per key, different across keys, never the PAN."""

from __future__ import annotations

import hashlib

import pytest

from protocol.errors import ValidationError
from protocol.tokens import card_token, is_token, load_token_key, uid_token

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
PAN = "4111111111111111"


def test_same_pan_same_key_gives_the_same_token_and_it_is_not_a_plain_hash():
    token = card_token(KEY_A, PAN)
    assert token == card_token(KEY_A, PAN)
    assert is_token(token)
    assert token != hashlib.sha256(PAN.encode()).hexdigest()
    assert PAN not in token


def test_tokens_differ_by_key_and_by_pan():
    assert card_token(KEY_A, PAN) != card_token(KEY_B, PAN)
    assert card_token(KEY_A, PAN) != card_token(KEY_A, "5555555555554444")


def test_known_value():
    # HMAC-SHA256(key=00..1f, "4111111111111111"), computed independently with hmac.new.
    import hmac

    assert card_token(KEY_A, PAN) == hmac.new(KEY_A, PAN.encode(), hashlib.sha256).hexdigest()


def test_uid_tokens_are_domain_separated_and_case_insensitive():
    assert uid_token(KEY_A, "04a1b2c3") == uid_token(KEY_A, "04A1B2C3")
    assert uid_token(KEY_A, "0411111111") != card_token(KEY_A, "4111111111111111")


@pytest.mark.parametrize("key", [b"", b"short", bytes(31), bytes(33), "x" * 32])
def test_bad_keys(key):
    with pytest.raises(ValidationError) as err:
        card_token(key, PAN)
    assert err.value.code == "bad_token_key"


@pytest.mark.parametrize("pan", ["", "4111", "41111111111111111111", "4111-1111-1111-1111", None, 4111111111111111])
def test_bad_pans(pan):
    with pytest.raises(ValidationError):
        card_token(KEY_A, pan)


def test_load_token_key(tmp_path):
    (tmp_path / "token.key").write_bytes(KEY_A)
    assert load_token_key(tmp_path / "token.key") == KEY_A
    (tmp_path / "bad.key").write_bytes(b"abc")
    with pytest.raises(ValidationError):
        load_token_key(tmp_path / "bad.key")


def test_a_trailing_newline_is_neither_a_pan_nor_a_token():
    with pytest.raises(ValidationError):
        card_token(KEY_A, PAN + "\n")
    assert is_token(card_token(KEY_A, PAN))
    assert not is_token(card_token(KEY_A, PAN) + "\n")


def test_card_tokens_under_one_key_are_card_token():
    from protocol.tokens import CardTokens

    tokens = CardTokens(KEY_A)
    for pan in (PAN, "5555555555554444", "378282246310005"):
        assert tokens(pan) == card_token(KEY_A, pan)
    with pytest.raises(ValidationError):
        tokens("4111")
    with pytest.raises(ValidationError):
        CardTokens(b"short")
