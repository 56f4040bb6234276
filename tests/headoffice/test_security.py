"""Forged, misdirected, replayed and tampered requests are refused and leave nothing behind; no clear PAN is
stored at head office."""

from __future__ import annotations

import base64
import time

import httpx
import orjson
import pytest

from tests.harness.headoffice import HQ, TEST_PANS, WireTerminal


def _nothing_stored(terminal: WireTerminal) -> None:
    assert terminal.stored() == []
    assert terminal.hq.sql("SELECT count(*) FROM batches WHERE terminal_id = :t", t=terminal.terminal_id)[0][0] == 0


def test_forged_signature_is_refused(wire_terminal: WireTerminal):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    r = wire_terminal.upload([wire_terminal.txn()], key=Ed25519PrivateKey.generate())
    assert r.status_code == 401 and r.json()["error"]["code"] == "bad_signature"
    _nothing_stored(wire_terminal)


def test_body_changed_after_signing_is_refused(wire_terminal: WireTerminal):
    from protocol.signing import sign_request

    path = f"/api/v1/terminals/{wire_terminal.terminal_id}/transactions"
    body = orjson.dumps({"transactions": [wire_terminal.txn(amount=100)]})
    headers = sign_request(wire_terminal.key, wire_terminal.terminal_id, "POST", path, body)
    forged = body.replace(b'"amount_minor":100', b'"amount_minor":900')
    r = httpx.post(wire_terminal.hq.url + path, content=forged, headers=headers)
    assert r.status_code == 401
    _nothing_stored(wire_terminal)


def test_terminal_cannot_upload_for_another_terminal(hq: HQ, wire_terminal: WireTerminal):
    victim = WireTerminal.enroll(hq)
    try:
        path = f"/api/v1/terminals/{victim.terminal_id}/transactions"
        # Signed correctly by the attacker's own key and id, but the path names the victim.
        r = wire_terminal.request("POST", path, {"transactions": [victim.txn()]})
        assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_terminal"
        # Claiming to be the victim with the attacker's key fails the signature.
        r = wire_terminal.request("POST", path, {"transactions": [victim.txn()]}, terminal_id=victim.terminal_id)
        assert r.status_code == 401
        _nothing_stored(victim)
    finally:
        victim.http.close()


def test_replayed_request_is_refused(wire_terminal: WireTerminal):
    from protocol.signing import sign_request

    path = f"/api/v1/terminals/{wire_terminal.terminal_id}/transactions"
    body = orjson.dumps({"transactions": [wire_terminal.txn()]})
    headers = {**sign_request(wire_terminal.key, wire_terminal.terminal_id, "POST", path, body),
               "content-type": "application/json"}
    assert httpx.post(wire_terminal.hq.url + path, content=body, headers=headers).status_code == 200
    replay = httpx.post(wire_terminal.hq.url + path, content=body, headers=headers)
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "replayed"
    assert len(wire_terminal.stored()) == 1


def test_stale_signature_is_refused(wire_terminal: WireTerminal):
    from protocol.signing import sign_request

    path = f"/api/v1/terminals/{wire_terminal.terminal_id}/transactions"
    body = orjson.dumps({"transactions": [wire_terminal.txn()]})
    headers = sign_request(wire_terminal.key, wire_terminal.terminal_id, "POST", path, body,
                           timestamp=int(time.time()) - 3600)
    r = httpx.post(wire_terminal.hq.url + path, content=body, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "stale_signature"
    _nothing_stored(wire_terminal)


def test_unknown_terminal_is_refused(hq: HQ):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocol.signing import sign_request

    path = "/api/v1/terminals/T-nobody/transactions"
    body = orjson.dumps({"transactions": []})
    headers = sign_request(Ed25519PrivateKey.generate(), "T-nobody", "POST", path, body)
    r = httpx.post(hq.url + path, content=body, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unknown_terminal"
    unsigned = httpx.post(hq.url + path, content=body)
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "unsigned"
    assert hq.sql("SELECT count(*) FROM transactions WHERE terminal_id = 'T-nobody'")[0][0] == 0


@pytest.mark.parametrize("tamper", ["amount", "hash", "prev_hash", "envelope", "terminal_id"])
def test_tampered_transaction_breaks_the_chain_and_is_not_stored(wire_terminal: WireTerminal, tamper):
    first = wire_terminal.txn(amount=100)
    second = wire_terminal.txn(amount=200)
    if tamper == "amount":
        second["amount_minor"] = 20  # content changed after hashing
    elif tamper == "hash":
        second["hash"] = "f" * 64
    elif tamper == "prev_hash":
        second["prev_hash"] = "e" * 64
    elif tamper == "envelope":
        other = WireTerminal.txn(wire_terminal, pan=TEST_PANS[1], advance=False)
        second["envelope"] = other["envelope"]  # digest no longer matches
    elif tamper == "terminal_id":
        second["terminal_id"] = "T-someone-else"
    r = wire_terminal.upload([first, second]).json()
    assert r["results"][0]["status"] == "accepted"
    assert r["results"][1]["status"] == "rejected"
    assert r["results"][1]["reason"].startswith("chain_broken")
    assert [s[0] for s in wire_terminal.stored()] == [1]


def test_replay_with_changed_content_is_a_conflict(wire_terminal: WireTerminal):
    row = wire_terminal.txn(amount=100)
    wire_terminal.upload([row])
    changed = dict(row, amount_minor=999)
    r = wire_terminal.upload([changed]).json()
    assert (r["results"][0]["status"], r["results"][0]["reason"]) == ("rejected", "conflict")
    assert [s[2] for s in wire_terminal.stored()] == [100]


def test_batch_api_needs_a_valid_token(hq: HQ):
    for headers in ({}, {"authorization": "Bearer hq_wrong"}, {"authorization": "Basic abc"}):
        for path in ("/api/v1/batches", "/api/v1/batches/1", "/api/v1/batches/1.csv"):
            r = httpx.get(hq.url + path, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert "transactions" not in r.text
    token = hq.cli("tokens", "create", "--name", "revoked-one").strip()
    assert httpx.get(hq.url + "/api/v1/batches", headers={"authorization": f"Bearer {token}"}).status_code == 200
    hq.cli("tokens", "revoke", "--name", "revoked-one")
    assert httpx.get(hq.url + "/api/v1/batches", headers={"authorization": f"Bearer {token}"}).status_code == 401


def test_no_clear_pan_in_the_head_office_database(wire_terminal: WireTerminal):
    hq = wire_terminal.hq
    rows = [wire_terminal.txn(pan=pan, amount=100 + i) for i, pan in enumerate(TEST_PANS)]
    assert wire_terminal.upload(rows).json()["accepted"] == len(TEST_PANS)
    wire_terminal.request("POST", "/api/v1/authorizations", {
        "idempotency_key": "pan-check", "type": "sale", "amount_minor": 100, "currency": "EUR",
        "masked_pan": "411111******1111", "token": rows[0]["token"]})
    if hq.backend == "sqlite":
        dump = (hq.home / "headoffice.sqlite3").read_bytes()
        for suffix in ("-wal",):
            extra = hq.home / f"headoffice.sqlite3{suffix}"
            if extra.exists():
                dump += extra.read_bytes()
    else:
        import subprocess

        from sqlalchemy.engine import make_url

        url = make_url(hq.database_url)
        dump = subprocess.run(["pg_dump", "-h", url.host, "-p", str(url.port or 5432), "-U", url.username,
                               url.database], capture_output=True, check=True).stdout
    for pan in TEST_PANS:
        assert pan.encode() not in dump
        assert base64.b64encode(pan.encode()) not in dump
    # What is stored: masked PAN, token, and card data that only the keystore's data key opens.
    masked, token, blob = hq.sql("SELECT masked_pan, token, card_data FROM transactions WHERE terminal_id = :t "
                                 "AND sequence = 1", t=wire_terminal.terminal_id)[0]
    assert masked == "411111******1111" and len(token) == 64 and blob
    from headoffice.keystore import FileKeystore

    card = orjson.loads(FileKeystore(hq.home / "keys", create=False).decrypt_card_data(
        bytes(blob), f"{wire_terminal.terminal_id}:1".encode()))
    assert card["pan"] == TEST_PANS[0]


@pytest.mark.parametrize(("field", "value"), [
    ("scheme", "5555555555554444"), ("entry_mode", "x5555555555554444"), ("aid", "5555555555554444"),
    ("auth_id", "5555555555554444"), ("created_at", "5555555555554444"), ("created_at", "yesterday"),
    ("void_of", "5555555555554444"),
])
def test_card_data_or_junk_in_any_text_field_is_rejected_and_not_stored(hq: HQ, wire_terminal: WireTerminal,
                                                                      field, value):
    """A faulty or hostile terminal chains a card number into a field head office would otherwise store and export
    (the hash is right, so only the field check stands between it and the database)."""
    from protocol import chain

    row = wire_terminal.txn(advance=False)
    row[field] = value
    row["hash"] = chain.chain_hash(row["prev_hash"], row)
    wire_terminal.sequence, wire_terminal.prev_hash = row["sequence"], row["hash"]
    answer = wire_terminal.upload([row]).json()
    assert answer["results"][0]["status"] == "rejected", answer
    assert answer["results"][0]["reason"].startswith(f"invalid: {field}")
    stored = hq.sql("SELECT type, scheme, entry_mode, aid, auth_id, created_at, void_of FROM transactions "
                    "WHERE terminal_id = :t", t=wire_terminal.terminal_id)
    assert all("5555555555554444" not in str(r) for r in stored) and all(r[0] == "invalid" for r in stored)
