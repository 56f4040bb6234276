"""Sealed envelopes: only head office's private key opens them; tampering and wrong keys are typed errors."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.envelope import (
    MAX_CHAIN_LENGTH,
    EnvelopeError,
    Opener,
    Sealer,
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


def _raw(sealed: str) -> bytes:
    body = sealed[3:]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def _text(prefix: str, raw: bytes) -> str:
    return prefix + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _eph(sealed: str) -> bytes:
    return _raw(sealed)[:32]


def _index(sealed: str) -> int:
    return int.from_bytes(_raw(sealed)[32:36], "big")


def test_head_office_opens_what_the_terminal_sealed_with_pem_keys():
    private, public = generate_keypair()
    # The terminal only has the PEM public key from enrollment; head office its PEM private key.
    sealed = seal(load_public_key(public_key_pem(public)), PAYLOAD)
    assert sealed.startswith("v2.")
    assert "4111111111111111" not in sealed
    assert open_sealed(load_private_key(private_key_pem(private)), sealed) == PAYLOAD


def test_each_envelope_is_different_even_for_the_same_card():
    _private, public = generate_keypair()
    assert seal(public, PAYLOAD) != seal(public, PAYLOAD)
    sealer = Sealer(public)
    try:
        assert sealer.seal(PAYLOAD) != sealer.seal(PAYLOAD)
    finally:
        sealer.close()


def test_another_key_cannot_open_it():
    _private, public = generate_keypair()
    other, _ = generate_keypair()
    with pytest.raises(EnvelopeError) as err:
        open_sealed(other, seal(public, PAYLOAD))
    assert err.value.code == "bad_envelope"


def test_flipping_any_byte_is_detected():
    private, public = generate_keypair()
    sealer = Sealer(public)
    try:
        sealed = [sealer.seal(PAYLOAD) for _ in range(3)]
    finally:
        sealer.close()
    raw = _raw(sealed[2])  # index 2 of its chain
    # Ephemeral key, index (its low byte moves the envelope to a neighbour's key), nonce, ciphertext, tag.
    for index in (0, 31, 32, 35, 36, 47, 48, len(raw) // 2, len(raw) - 1):
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        with pytest.raises(EnvelopeError):
            Opener(private).open(_text("v2.", bytes(tampered)))
    relabelled = "v1." + sealed[2][3:]
    with pytest.raises(EnvelopeError):
        open_sealed(private, relabelled)


@pytest.mark.parametrize(
    "sealed", ["", "v3.AAAA", "v2.", "v2.!!!!", "v2." + "A" * 40, "v1.", "v1." + "A" * 40, "plain text",
               "v2." + "A" * 20000]
)  # fmt: skip
def test_malformed_envelopes_give_a_typed_error(sealed):
    private, _ = generate_keypair()
    with pytest.raises(EnvelopeError) as err:
        open_sealed(private, sealed)
    assert err.value.code == "bad_envelope"


def test_an_index_beyond_any_chain_is_refused_without_walking_to_it():
    private, public = generate_keypair()
    sealer = Sealer(public, chain_length=MAX_CHAIN_LENGTH)
    try:
        sealed = [sealer.seal({"n": i}) for i in range(MAX_CHAIN_LENGTH)]
    finally:
        sealer.close()
    last = MAX_CHAIN_LENGTH - 1
    assert _index(sealed[-1]) == last and open_sealed(private, sealed[-1]) == {"n": last}
    for index in (MAX_CHAIN_LENGTH, 2**32 - 1):
        raw = bytearray(_raw(sealed[-1]))
        raw[32:36] = index.to_bytes(4, "big")
        with pytest.raises(EnvelopeError) as err:
            open_sealed(private, _text("v2.", bytes(raw)))
        assert "index" in err.value.message


def test_a_forged_envelope_fills_no_cache():
    private, public = generate_keypair()
    opener = Opener(private)
    for _ in range(5):
        raw = bytearray(_raw(seal(public, PAYLOAD)))
        raw[-1] ^= 1  # the tag no longer matches
        with pytest.raises(EnvelopeError):
            opener.open(_text("v2.", bytes(raw)))
    assert opener._roots == {} and not getattr(opener._local, "chains", {})
    assert opener.open(seal(public, PAYLOAD)) == PAYLOAD and len(opener._roots) == 1


@pytest.mark.parametrize("data", [b"", b"x" * 31, b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"])
def test_bad_keys_are_refused(data):
    with pytest.raises(EnvelopeError) as err:
        load_public_key(data)
    assert err.value.code == "bad_key"


def test_non_dict_payload_is_refused():
    _private, public = generate_keypair()
    with pytest.raises(EnvelopeError):
        seal(public, ["not", "a", "dict"])  # type: ignore[arg-type]
    sealer = Sealer(public)
    try:
        with pytest.raises(EnvelopeError):
            sealer.seal(["not", "a", "dict"])  # type: ignore[arg-type]
    finally:
        sealer.close()


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["v1.", "v2."]), st.text(max_size=300))
def test_open_never_raises_anything_but_envelope_error(prefix, text):
    private, _ = generate_keypair()
    with pytest.raises(EnvelopeError):
        open_sealed(private, prefix + text)


def test_a_chain_seals_in_order_and_head_office_opens_every_envelope():
    private, public = generate_keypair()
    sealer = Sealer(public_key_pem(public), reserve=2, chain_length=8)
    try:
        sealed = [sealer.seal({**PAYLOAD, "n": i}) for i in range(20)]
    finally:
        sealer.close()
    keys = [_eph(s) for s in sealed]
    assert len(set(keys)) == 3  # 8 + 8 + 4
    assert keys[0] == keys[7] and keys[7] != keys[8]
    assert [_index(s) for s in sealed] == [*range(8), *range(8), *range(4)]
    assert len({_raw(s)[36:48] for s in sealed}) == 20  # every envelope has its own nonce
    opener = Opener(private, cache_size=2)
    assert [opener.open(s)["n"] for s in sealed] == list(range(20))
    assert [open_sealed(private, s)["n"] for s in sealed] == list(range(20))


def test_head_office_opens_a_chain_out_of_order_and_again():
    private, public = generate_keypair()
    sealer = Sealer(public)
    try:
        sealed = [sealer.seal({"n": i}) for i in range(12)]
    finally:
        sealer.close()
    opener = Opener(private)
    order = [5, 0, 11, 3, 3, 10, 1, 2, 4, 6, 7, 8, 9, 0]
    assert [opener.open(sealed[i])["n"] for i in order] == order


def test_every_envelope_of_a_chain_has_its_own_message_key():
    # Same chain, one envelope's ciphertext under another envelope's position: the key differs, so it fails.
    private, public = generate_keypair()
    sealer = Sealer(public)
    try:
        first, second = sealer.seal(PAYLOAD), sealer.seal(PAYLOAD)
    finally:
        sealer.close()
    swapped = _raw(first)[:32] + _raw(second)[32:36] + _raw(first)[36:]
    with pytest.raises(EnvelopeError):
        open_sealed(private, _text("v2.", swapped))


def test_sealer_starts_a_new_chain_after_the_age_limit():
    import time

    _private, public = generate_keypair()
    sealer = Sealer(public, chain_length=1000, max_chain_age_s=0.05)
    try:
        first = sealer.seal(PAYLOAD)
        time.sleep(0.1)
        second = sealer.seal(PAYLOAD)
    finally:
        sealer.close()
    assert _eph(first) != _eph(second)
    assert _index(second) == 0


def test_the_sealer_keeps_no_key_that_opens_what_it_already_sealed():
    # Forward secrecy within a chain: from everything the sealer still holds (its chain key and the chains
    # prepared in reserve), no walk down any chain reaches a key of an envelope already sealed.
    import time

    from cryptography.hazmat.primitives import serialization

    from protocol import envelope as env

    private, public = generate_keypair()
    sealer = Sealer(public, reserve=2)
    try:
        sealed = [sealer.seal({"n": i}) for i in range(5)]
        time.sleep(0.3)  # let the reserve fill
        held = [sealer._chain_key, *(entry[2] for entry in list(sealer._ready))]
        assert len(held) == 3
        # What head office can compute for the envelopes sealed so far: their chain keys and message keys.
        recipient_raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        eph = _eph(sealed[0])
        chain_key = env._hkdf(env._agree(private, eph), eph, recipient_raw, env._INFO)
        past_chain, past_message = set(), set()
        for _ in sealed:
            past_chain.add(chain_key)
            message, chain_key = env._step(chain_key)
            past_message.add(message)
        assert chain_key == sealer._chain_key  # the sealer holds exactly the next chain key...
        for key in held:
            assert key not in past_chain
            for _ in range(MAX_CHAIN_LENGTH):  # ...from which no key of the past can be reached
                message, key = env._step(key)
                assert message not in past_message and key not in past_chain
        assert [open_sealed(private, s)["n"] for s in sealed] == list(range(5))
    finally:
        sealer.close()


def test_a_sealer_for_a_head_office_without_v2_seals_v1_and_switches_when_told():
    private, public = generate_keypair()
    sealer = Sealer(public, version=1)
    try:
        old = [sealer.seal({"n": i}) for i in range(70)]
        sealer.set_version(2)
        new = [sealer.seal({"n": i}) for i in range(3)]
    finally:
        sealer.close()
    assert all(s.startswith("v1.") for s in old) and all(s.startswith("v2.") for s in new)
    assert len({_raw(s)[:32] for s in old}) == 2  # one key for at most 64 envelopes
    opener = Opener(private)
    assert [opener.open(s)["n"] for s in old] == list(range(70))
    assert [opener.open(s)["n"] for s in new] == [0, 1, 2]
    with pytest.raises(EnvelopeError):
        Sealer(public, version=3)


def test_version_1_envelopes_still_open():
    # Made the way version 0.1 sealed: HKDF straight to the AES key, prefix-only associated data.
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    private, public = generate_keypair()
    raw_fmt = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    eph = X25519PrivateKey.generate()
    eph_raw = eph.public_key().public_bytes(*raw_fmt)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_raw + public.public_bytes(*raw_fmt),
               info=b"smartpos-envelope-v1").derive(eph.exchange(public))
    nonce = os.urandom(12)
    import orjson

    v1 = _text("v1.", eph_raw + nonce + AESGCM(key).encrypt(nonce, orjson.dumps(PAYLOAD), b"v1."))
    assert open_sealed(private, v1) == PAYLOAD
    assert Opener(private).open(v1) == PAYLOAD
    tampered = bytearray(_raw(v1))
    tampered[-1] ^= 1
    with pytest.raises(EnvelopeError):
        open_sealed(private, _text("v1.", bytes(tampered)))


def test_opener_refuses_envelopes_for_another_key_and_tampering():
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


def test_a_forked_child_never_reuses_the_parents_chains():
    import time

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
    assert open_sealed(private, child) == PAYLOAD
    assert _eph(child) not in {_eph(s) for s in parent}


def test_head_office_opens_a_long_chain_in_any_order_and_replays_it():
    import random

    private, public = generate_keypair()
    sealer = Sealer(public, chain_length=300)
    try:
        sealed = [sealer.seal({"n": i}) for i in range(300)]
    finally:
        sealer.close()
    order = list(range(300))
    random.Random(7).shuffle(order)
    order += list(range(300)) + list(range(150, 300)) + list(range(0, 300, 7))  # in order again, and replays
    opener = Opener(private)
    assert [opener.open(sealed[i])["n"] for i in order] == order


def test_threads_opening_the_same_chains_at_once_all_get_the_right_envelopes():
    import threading

    private, public = generate_keypair()
    sealed = []
    for chain in range(3):
        sealer = Sealer(public, chain_length=100)
        try:
            sealed += [sealer.seal({"n": chain * 100 + i}) for i in range(100)]
        finally:
            sealer.close()
    opener = Opener(private, cache_size=2)  # smaller than the chains in use: the shared roots are dropped too
    errors: list[str] = []

    def work(offset: int) -> None:
        for i in [*range(offset, 300), *range(offset)]:
            if opener.open(sealed[i])["n"] != i:
                errors.append(f"envelope {i}")

    threads = [threading.Thread(target=work, args=(k * 37,)) for k in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


def test_a_child_forked_while_the_parent_was_sealing_can_seal():
    import signal

    private, public = generate_keypair()
    sealer = Sealer(public)
    sealer.seal(PAYLOAD)
    read_fd, write_fd = os.pipe()
    with sealer._lock:  # as if another thread of the parent were in the middle of seal() at the fork
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                signal.alarm(5)  # a child stuck on the inherited lock is killed instead of hanging the suite
                os.write(write_fd, (sealer.seal(PAYLOAD) + "\n").encode())
            finally:
                os._exit(0)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    child = os.read(read_fd, 65536).decode().strip()
    os.close(read_fd)
    sealer.close()
    assert os.WIFEXITED(status) and open_sealed(private, child) == PAYLOAD
