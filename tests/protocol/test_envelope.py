"""Sealed envelopes: only head office's private key opens them; tampering and wrong keys are typed errors."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.envelope import (
    EnvelopeError,
    generate_keypair,
    load_private_key,
    load_public_key,
    open_sealed,
    private_key_pem,
    public_key_pem,
    seal,
)

PAYLOAD = {
    "pan": "4111111111111111",
    "expiry": "2812",
    "track2": "4111111111111111D2812201",
    "cryptogram": {"9F26": "AB"},
}


def test_head_office_opens_what_the_terminal_sealed_with_pem_keys():
    private, public = generate_keypair()
    # The terminal only has the PEM public key from enrollment; head office its PEM private key.
    sealed = seal(load_public_key(public_key_pem(public)), PAYLOAD)
    assert sealed.startswith("v1.")
    assert "4111111111111111" not in sealed
    assert open_sealed(load_private_key(private_key_pem(private)), sealed) == PAYLOAD


def test_each_envelope_is_different_even_for_the_same_card():
    _private, public = generate_keypair()
    assert seal(public, PAYLOAD) != seal(public, PAYLOAD)


def test_another_key_cannot_open_it():
    _private, public = generate_keypair()
    other, _ = generate_keypair()
    with pytest.raises(EnvelopeError) as err:
        open_sealed(other, seal(public, PAYLOAD))
    assert err.value.code == "bad_envelope"


def test_flipping_any_byte_is_detected():
    private, public = generate_keypair()
    sealed = seal(public, PAYLOAD)
    raw = bytearray(base64.urlsafe_b64decode(sealed[3:] + "=" * (-len(sealed[3:]) % 4)))
    for index in (0, 31, 32, 43, 44, len(raw) // 2, len(raw) - 1):
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        text = "v1." + base64.urlsafe_b64encode(bytes(tampered)).rstrip(b"=").decode()
        with pytest.raises(EnvelopeError):
            open_sealed(private, text)


@pytest.mark.parametrize(
    "sealed", ["", "v2.AAAA", "v1.", "v1.!!!!", "v1." + "A" * 40, "plain text", "v1." + "A" * 20000]
)
def test_malformed_envelopes_give_a_typed_error(sealed):
    private, _ = generate_keypair()
    with pytest.raises(EnvelopeError) as err:
        open_sealed(private, sealed)
    assert err.value.code == "bad_envelope"


@pytest.mark.parametrize("data", [b"", b"x" * 31, b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"])
def test_bad_keys_are_refused(data):
    with pytest.raises(EnvelopeError) as err:
        load_public_key(data)
    assert err.value.code == "bad_key"


def test_non_dict_payload_is_refused():
    _private, public = generate_keypair()
    with pytest.raises(EnvelopeError):
        seal(public, ["not", "a", "dict"])  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300))
def test_open_never_raises_anything_but_envelope_error(text):
    private, _ = generate_keypair()
    with pytest.raises(EnvelopeError):
        open_sealed(private, "v1." + text)


def test_sealer_with_prepared_keys_gives_envelopes_head_office_opens():
    from protocol.envelope import Sealer

    private, public = generate_keypair()
    sealer = Sealer(public_key_pem(public), reserve=4, uses_per_key=1)
    try:
        sealed = [sealer.seal({**PAYLOAD, "n": i}) for i in range(20)]  # more than the reserve: inline fallback too
    finally:
        sealer.close()
    assert [open_sealed(private, s)["n"] for s in sealed] == list(range(20))
    ephemeral_keys = {base64.urlsafe_b64decode(s[3:] + "=" * (-len(s[3:]) % 4))[:32] for s in sealed}
    assert len(ephemeral_keys) == 20  # uses_per_key=1: one fresh ephemeral key per envelope


def _eph(s):
    return base64.urlsafe_b64decode(s[3:] + "=" * (-len(s[3:]) % 4))[:32]


def test_sealer_rotates_its_ephemeral_key_after_the_use_limit_and_the_opener_opens_all():
    from protocol.envelope import Opener, Sealer

    private, public = generate_keypair()
    sealer = Sealer(public, uses_per_key=8)
    try:
        sealed = [sealer.seal({**PAYLOAD, "n": i}) for i in range(20)]
    finally:
        sealer.close()
    keys = [_eph(s) for s in sealed]
    assert len(set(keys)) == 3  # 8 + 8 + 4
    assert keys[0] == keys[7] and keys[7] != keys[8]
    nonces = {base64.urlsafe_b64decode(s[3:] + "=" * (-len(s[3:]) % 4))[32:44] for s in sealed}
    assert len(nonces) == 20  # every envelope has its own nonce
    opener = Opener(private, cache_size=2)
    assert [opener.open(s)["n"] for s in sealed] == list(range(20))
    assert [open_sealed(private, s)["n"] for s in sealed] == list(range(20))


def test_sealer_rotates_its_ephemeral_key_after_the_age_limit():
    import time

    from protocol.envelope import Sealer

    _private, public = generate_keypair()
    sealer = Sealer(public, uses_per_key=1000, max_key_age_s=0.05)
    try:
        first = sealer.seal(PAYLOAD)
        time.sleep(0.1)
        second = sealer.seal(PAYLOAD)
    finally:
        sealer.close()
    assert _eph(first) != _eph(second)


def test_opener_refuses_envelopes_for_another_key_and_tampering():
    from protocol.envelope import Opener

    private, public = generate_keypair()
    other, _ = generate_keypair()
    sealed = seal(public, PAYLOAD)
    with pytest.raises(EnvelopeError):
        Opener(other).open(sealed)
    opener = Opener(private)
    assert opener.open(sealed) == PAYLOAD
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(EnvelopeError):
        opener.open(tampered)


def test_a_forked_child_never_reuses_the_parents_prepared_keys():
    import os
    import time

    from protocol.envelope import Sealer

    private, public = generate_keypair()
    sealer = Sealer(public, reserve=8)
    sealer.seal(PAYLOAD)
    time.sleep(0.2)  # let the reserve fill
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.write(write_fd, (sealer.seal(PAYLOAD) + "\n").encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    child = os.read(read_fd, 65536).decode().strip()
    os.close(read_fd)
    parent = [sealer.seal(PAYLOAD) for _ in range(8)]
    sealer.close()

    def eph(s):
        return base64.urlsafe_b64decode(s[3:] + "=" * (-len(s[3:]) % 4))[:32]

    assert open_sealed(private, child) == PAYLOAD
    assert eph(child) not in {eph(s) for s in parent}
