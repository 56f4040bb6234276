"""Request signatures (protocol/signing.py): every signed part is bound, stale and malformed headers refused."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.signing import (
    SignatureError,
    parse_headers,
    public_key_from_text,
    public_key_to_text,
    sign_request,
    verify_request,
)

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()
PATH = "/api/v1/terminals/T-1/transactions"
BODY = b'{"transactions":[]}'


def _signed(**kwargs):
    return parse_headers(sign_request(KEY, "T-1", "POST", PATH, BODY, **kwargs))


def test_valid_signature_verifies():
    verify_request(PUBLIC, _signed(), "POST", PATH, BODY)


@pytest.mark.parametrize("method,path,body", [
    ("PUT", PATH, BODY),
    ("POST", "/api/v1/terminals/T-2/transactions", BODY),
    ("POST", PATH + "?x=1", BODY),
    ("POST", PATH, BODY + b" "),
    ("POST", PATH, b""),
])
def test_any_changed_part_breaks_the_signature(method, path, body):
    with pytest.raises(SignatureError) as err:
        verify_request(PUBLIC, _signed(), method, path, body)
    assert err.value.code == "bad_signature"


def test_other_key_and_changed_nonce_or_timestamp_fail():
    signed = _signed()
    with pytest.raises(SignatureError):
        verify_request(Ed25519PrivateKey.generate().public_key(), signed, "POST", PATH, BODY)
    moved = parse_headers({**sign_request(KEY, "T-1", "POST", PATH, BODY), "X-Nonce": "A" * 24})
    with pytest.raises(SignatureError):
        verify_request(PUBLIC, moved, "POST", PATH, BODY)
    headers = sign_request(KEY, "T-1", "POST", PATH, BODY)
    headers["X-Timestamp"] = str(int(headers["X-Timestamp"]) + 1)
    with pytest.raises(SignatureError):
        verify_request(PUBLIC, parse_headers(headers), "POST", PATH, BODY)


def test_stale_and_future_timestamps_are_refused():
    now = time.time()
    for skew in (-301, 301):
        signed = _signed(timestamp=int(now) + skew)
        with pytest.raises(SignatureError) as err:
            verify_request(PUBLIC, signed, "POST", PATH, BODY, now=now)
        assert err.value.code == "stale_signature"
    verify_request(PUBLIC, _signed(timestamp=int(now) - 299), "POST", PATH, BODY, now=now)


@pytest.mark.parametrize("change", [
    {"X-Signature": None}, {"X-Timestamp": "soon"}, {"X-Nonce": "short"}, {"X-Signature": "not base64!"},
    {"X-Signature": "AAAA"}, {"X-Terminal-Id": "T" * 65},
])
def test_malformed_headers_are_typed_errors(change):
    headers = sign_request(KEY, "T-1", "POST", PATH, BODY)
    for name, value in change.items():
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    with pytest.raises(SignatureError) as err:
        parse_headers(headers)
    assert err.value.code in ("unsigned", "bad_signature")


def test_public_key_text_round_trip_and_garbage():
    assert public_key_to_text(public_key_from_text(public_key_to_text(PUBLIC))) == public_key_to_text(PUBLIC)
    with pytest.raises(SignatureError):
        public_key_from_text("definitely not a key")
