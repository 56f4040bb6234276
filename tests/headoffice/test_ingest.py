"""Enrollment, signed uploads and settlement batches over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json

import httpx
import pytest

from tests.harness.headoffice import HQ, TEST_PANS, WireTerminal


def test_enrollment_answers_terminal_id_merchant_keys_and_parameters(hq: HQ):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocol.signing import public_key_to_text

    code, terminal_id = hq.new_code()
    public = public_key_to_text(Ed25519PrivateKey.generate().public_key())
    r = httpx.post(f"{hq.url}/api/v1/enrollments", json={"code": code, "public_key": public})
    assert r.status_code == 201
    doc = r.json()
    assert doc["terminal_id"] == terminal_id
    assert doc["merchant"] == {"id": "M-1", "name": "Corner Shop", "address": ["1 Main St", "Springfield"]}
    assert doc["hq_public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert len(doc["token_key"]) == 44  # base64 of 32 bytes
    assert isinstance(doc["parameters_version"], int)
    # The same terminal retrying with the same key (answer lost) gets the same enrollment; another key does not.
    again = httpx.post(f"{hq.url}/api/v1/enrollments", json={"code": code, "public_key": public})
    assert again.status_code == 201 and again.json()["terminal_id"] == terminal_id
    other = public_key_to_text(Ed25519PrivateKey.generate().public_key())
    reused = httpx.post(f"{hq.url}/api/v1/enrollments", json={"code": code, "public_key": other})
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "code_used"


def test_unknown_and_expired_codes_are_refused(hq: HQ):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocol.signing import public_key_to_text

    public = public_key_to_text(Ed25519PrivateKey.generate().public_key())
    r = httpx.post(f"{hq.url}/api/v1/enrollments", json={"code": "AAAA-BBBB-CCCC", "public_key": public})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_code"
    code, terminal_id = hq.new_code()
    hq.sql("SELECT 1")  # same database the server uses
    from sqlalchemy import text

    engine = hq.engine()
    with engine.begin() as conn:
        conn.execute(text("UPDATE enrollment_codes SET expires_at = created_at WHERE terminal_id = :t"),
                     {"t": terminal_id})
    engine.dispose()
    r = httpx.post(f"{hq.url}/api/v1/enrollments", json={"code": code, "public_key": public})
    assert r.status_code == 410 and r.json()["error"]["code"] == "code_expired"
    bad = httpx.post(f"{hq.url}/api/v1/enrollments", json={"code": code, "public_key": "not-a-key" * 6})
    assert bad.status_code == 400
    # A new code for a terminal replaces the earlier unused one.
    first, other_terminal = hq.new_code()
    second, _ = hq.new_code(other_terminal)
    r = httpx.post(f"{hq.url}/api/v1/enrollments", json={"code": first, "public_key": public})
    assert r.status_code == 410 and r.json()["error"]["code"] == "code_expired"
    assert httpx.post(f"{hq.url}/api/v1/enrollments", json={"code": second, "public_key": public}).status_code == 201


def test_upload_is_idempotent_on_terminal_and_sequence(wire_terminal: WireTerminal):
    rows = [wire_terminal.txn(amount=100 * (i + 1)) for i in range(6)]
    first = wire_terminal.upload(rows[:4])
    assert first.status_code == 200, first.text
    assert [(r["sequence"], r["status"], r["duplicate"]) for r in first.json()["results"]] == [
        (1, "accepted", False), (2, "accepted", False), (3, "accepted", False), (4, "accepted", False)]
    # A replay of an accepted page plus new rows: the old ones are acknowledged again, not stored twice.
    second = wire_terminal.upload(rows)
    assert [(r["sequence"], r["status"], r["duplicate"]) for r in second.json()["results"]] == [
        (1, "accepted", True), (2, "accepted", True), (3, "accepted", True), (4, "accepted", True),
        (5, "accepted", False), (6, "accepted", False)]
    stored = wire_terminal.stored()
    assert [s[0] for s in stored] == [1, 2, 3, 4, 5, 6]
    assert sum(s[2] for s in stored) == 100 + 200 + 300 + 400 + 500 + 600


def test_a_rejected_rows_batch_number_opens_no_batch_of_its_own(wire_terminal: WireTerminal):
    """A row rejected for its content keeps its chain position, but its batch number is not trusted: 0 or a stray
    number used to open a batch staff saw open for ever (and a replaced terminal continued from its number)."""
    hq, tid = wire_terminal.hq, wire_terminal.terminal_id
    rows = [wire_terminal.txn(amount=100), wire_terminal.txn(batch=0), wire_terminal.txn(type="bogus", batch=5000),
            wire_terminal.txn(amount=200)]
    r = wire_terminal.upload(rows).json()
    assert [(x["status"], x["reason"]) for x in r["results"]] == [
        ("accepted", None), ("rejected", "invalid: batch"), ("rejected", "invalid: type"), ("accepted", None)]
    assert [tuple(b) for b in hq.sql("SELECT batch_no, status FROM batches WHERE terminal_id = :t ORDER BY batch_no",
                                     t=tid)] == [(1, "open")]
    assert [tuple(x) for x in hq.sql("SELECT t.sequence, b.batch_no FROM transactions t JOIN batches b ON b.id = "
                                     "t.batch_id WHERE t.terminal_id = :t ORDER BY t.sequence", t=tid)] == [
        (1, 1), (2, 1), (3, 1), (4, 1)]
    # The terminal's next batch starting with a rejected row is still that batch.
    r = wire_terminal.upload([wire_terminal.txn(type="bogus", batch=2), wire_terminal.txn(batch=2)]).json()
    assert [x["status"] for x in r["results"]] == ["rejected", "accepted"]
    assert [b[0] for b in hq.sql("SELECT batch_no FROM batches WHERE terminal_id = :t ORDER BY batch_no",
                                 t=tid)] == [1, 2]
    assert [tuple(x) for x in hq.sql("SELECT t.sequence, b.batch_no FROM transactions t JOIN batches b ON b.id = "
                                     "t.batch_id WHERE t.terminal_id = :t AND t.sequence > 4 ORDER BY t.sequence",
                                     t=tid)] == [(5, 2), (6, 2)]
    # The chain's last row rejected with a stray number: a replaced terminal still continues from batch 2.
    assert wire_terminal.upload([wire_terminal.txn(type="bogus", batch=7000)]).json()["rejected"] == 1
    ping = wire_terminal.request("GET", f"/api/v1/terminals/{tid}/ping").json()
    assert ping["chain"]["sequence"] == 7 and ping["chain"]["batch"] == 2, ping
    assert [tuple(x) for x in hq.sql("SELECT sequence, batch_no FROM transactions WHERE terminal_id = :t AND "
                                     "sequence IN (2, 3, 7) ORDER BY sequence", t=tid)] == [(2, 1), (3, 1), (7, 2)]


def test_a_late_rejected_row_is_no_longer_missing_from_its_closed_batch(wire_terminal: WireTerminal):
    """Batch 1 closed over 1..3 while 3 was still queued: missing [3]. Then 3 arrives and is rejected for its
    content: it is no longer missing (head office has it, rejected), and the batch is evaluated again."""
    t = wire_terminal
    rows = [t.txn(amount=500), t.txn(amount=500), t.txn(type="bogus")]
    t.upload(rows[:2])
    close = f"/api/v1/terminals/{t.terminal_id}/batches/1/close"
    totals = [{"type": "sale", "scheme": "visa", "currency": "EUR", "count": 2, "amount_minor": 1000}]
    assert t.request("POST", close, {"totals": totals, "first_sequence": 1, "last_sequence": 3}).json()[
        "missing_sequences"] == [3]
    assert t.upload(rows[2:]).json()["rejected"] == 1
    (missing,) = t.hq.sql("SELECT missing, status FROM batches WHERE terminal_id = :t", t=t.terminal_id)
    assert (json.loads(missing[0]) if isinstance(missing[0], str) else missing[0], missing[1]) == ([], "balanced")


def test_gap_in_sequence_is_rejected_and_nothing_stored(wire_terminal: WireTerminal):
    rows = [wire_terminal.txn() for _ in range(3)]
    r = wire_terminal.upload(rows[1:])  # starts at 2: head office expects 1
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["rejected", "rejected"]
    assert results[0]["reason"].startswith("gap")
    assert wire_terminal.stored() == []


def test_invalid_content_with_intact_chain_is_dead_lettered_alone(wire_terminal: WireTerminal):
    good = wire_terminal.txn()
    # Card data of another card in the envelope: the chain is intact, the content is not.
    mismatched = wire_terminal.txn(envelope_pan=TEST_PANS[1])
    after = wire_terminal.txn(amount=700)
    r = wire_terminal.upload([good, mismatched, after]).json()
    assert [(x["status"], x["reason"]) for x in r["results"]] == [
        ("accepted", None), ("rejected", "envelope_mismatch"), ("accepted", None)]
    stored = wire_terminal.stored()
    assert [(s[0], s[1]) for s in stored] == [(1, "accepted"), (2, "rejected"), (3, "accepted")]
    rejected_row = wire_terminal.hq.sql(
        "SELECT masked_pan, token, card_data, amount_minor FROM transactions WHERE terminal_id = :t AND sequence = 2",
        t=wire_terminal.terminal_id)[0]
    assert tuple(rejected_row) == (None, None, None, 0)


def test_batch_close_balanced_then_csv_and_json_exports(wire_terminal: WireTerminal):
    hq = wire_terminal.hq
    rows = [wire_terminal.txn(amount=1250), wire_terminal.txn(amount=990, pan=TEST_PANS[1], scheme="mastercard"),
            wire_terminal.txn(amount=300, type="refund")]
    assert wire_terminal.upload(rows).json()["accepted"] == 3
    totals = [
        {"type": "sale", "scheme": "visa", "currency": "EUR", "count": 1, "amount_minor": 1250},
        {"type": "sale", "scheme": "mastercard", "currency": "EUR", "count": 1, "amount_minor": 990},
        {"type": "refund", "scheme": "visa", "currency": "EUR", "count": 1, "amount_minor": 300},
    ]
    path = f"/api/v1/terminals/{wire_terminal.terminal_id}/batches/1/close"
    answer = wire_terminal.request("POST", path, {"totals": totals, "first_sequence": 1, "last_sequence": 3}).json()
    assert answer["status"] == "balanced" and answer["differences"] == [] and answer["missing_sequences"] == []

    token = hq.cli("tokens", "create", "--name", f"staff-{wire_terminal.terminal_id}").strip()
    auth = {"authorization": f"Bearer {token}"}
    listed = httpx.get(f"{hq.url}/api/v1/batches", params={"status": "balanced"}, headers=auth).json()["batches"]
    batch = next(b for b in listed if b["terminal_id"] == wire_terminal.terminal_id)
    detail = httpx.get(f"{hq.url}/api/v1/batches/{batch['id']}", headers=auth).json()
    assert detail["count"] == 3
    assert {(t["scheme"], t["currency"], t["sale_minor"], t["refund_minor"]) for t in
            detail["totals_by_scheme_currency"]} == {("mastercard", "EUR", 990, 0), ("visa", "EUR", 1250, 300)}

    text = httpx.get(f"{hq.url}/api/v1/batches/{batch['id']}.csv", headers=auth).text
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0][:8] == ["record", "batch", "merchant", "terminal", "sequence", "uuid", "type", "amount_minor"]
    txns = [line for line in lines if line[0] == "txn"]
    assert [(t[4], t[6], t[7], t[11]) for t in txns] == [
        ("1", "sale", "1250", "411111******1111"), ("2", "sale", "990", "555555******4444"),
        ("3", "refund", "300", "411111******1111")]
    col = {name: i for i, name in enumerate(lines[0])}
    trailer = {(line[col["type"]], line[col["currency"]]): (line[col["amount_minor"]], line[col["count"]])
               for line in lines if line[0] == "trailer"}
    assert trailer[("sale", "EUR")] == ("2240", "2")
    assert trailer[("refund", "EUR")] == ("300", "1")
    assert trailer[("net", "EUR")] == ("1940", "3")
    assert [t[col["net_minor"]] for t in txns] == ["1250", "990", "-300"]
    # head office's id (what `batches pull` takes) and the terminal's number (what its settlement report prints)
    assert {(line[col["batch"]], line[col["terminal_batch"]]) for line in lines[1:]} == {(str(batch["id"]), "1")}
    assert "4111111111111111" not in text

    # The CLI export is the same file.
    assert hq.cli("batches", "pull", str(batch["id"]), "--format", "csv").replace("\r\n", "\n") == \
        text.replace("\r\n", "\n")
    pulled = hq.cli("batches", "pull", str(batch["id"]), "--format", "json")
    assert '"count": 3' in pulled
    _pull_to_a_file_is_whole_or_nothing(hq, batch["id"], text, wire_terminal.hq.env)
    table = hq.cli("batches", "list")  # piped: whole ids and timestamps, not cut to 80 columns
    (line,) = [line for line in table.splitlines() if wire_terminal.terminal_id in line]
    assert batch["closed_at"] in line


def _pull_to_a_file_is_whole_or_nothing(hq, batch_id: int, text: str, env: dict[str, str]) -> None:
    """`batches pull --out FILE` writes the whole export or leaves FILE as it was: a settlement file cut short (a
    full disk, a file size limit) used to be left behind truncated, the old export already gone."""
    import os
    import resource
    import signal
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "batch.csv")

        def pull(*extra: str, limit: int | None = None) -> subprocess.CompletedProcess[str]:
            def cap() -> None:  # the size limit a full disk would impose, without needing root for a tmpfs
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            return subprocess.run([sys.executable, "-m", "headoffice.cli", "batches", "pull", str(batch_id), *extra],
                                  capture_output=True, text=True, timeout=60, env={**os.environ, **env},
                                  preexec_fn=cap if limit else None)

        done = pull("--out", out)
        assert done.returncode == 0 and "3 transactions written" in done.stderr, done.stderr
        with open(out, encoding="utf-8", newline="") as fh:
            assert fh.read() == text
        dash = pull("--out", "-")
        assert dash.returncode == 0 and dash.stdout.replace("\r\n", "\n") == text.replace("\r\n", "\n")
        with open(out, "w", encoding="utf-8") as fh:
            fh.write("the export of last night\n")
        cut = pull("--out", out, limit=len(text) // 2)
        assert cut.returncode == 1 and "nothing was written" in cut.stderr, cut.stderr
        with open(out, encoding="utf-8") as fh:
            assert fh.read() == "the export of last night\n"
        assert os.listdir(tmp) == ["batch.csv"]
        # A symlink is written through (it stays a link), the file keeps its mode; a pipe is written to as it is.
        os.chmod(out, 0o640)
        link = os.path.join(tmp, "latest.csv")
        os.symlink(out, link)
        assert pull("--out", link).returncode == 0
        assert os.path.islink(link) and oct(os.stat(out).st_mode & 0o777) == oct(0o640)
        with open(out, encoding="utf-8", newline="") as fh:
            assert fh.read() == text
        piped = pull("--out", "/dev/stdout")
        assert piped.returncode == 0 and piped.stdout.replace("\r\n", "\n") == text.replace("\r\n", "\n"), \
            piped.stderr


def test_batch_close_out_of_balance_lists_differences_and_missing(wire_terminal: WireTerminal):
    rows = [wire_terminal.txn(amount=500, batch=1) for _ in range(3)]
    wire_terminal.upload(rows[:2])
    path = f"/api/v1/terminals/{wire_terminal.terminal_id}/batches/1/close"
    totals = [{"type": "sale", "scheme": "visa", "currency": "EUR", "count": 3, "amount_minor": 1500}]
    answer = wire_terminal.request("POST", path, {"totals": totals, "first_sequence": 1, "last_sequence": 3}).json()
    assert answer["status"] == "out_of_balance"
    assert answer["missing_sequences"] == [3]
    (diff,) = answer["differences"]
    assert (diff["terminal_count"], diff["hq_count"], diff["amount_difference_minor"]) == (3, 2, 500)
    # Once the missing transaction arrives, closing again balances.
    wire_terminal.upload(rows[2:])
    again = wire_terminal.request("POST", path, {"totals": totals, "first_sequence": 1, "last_sequence": 3}).json()
    assert again["status"] == "balanced"


def test_parameters_are_versioned_and_deny_list_reaches_terminal(wire_terminal: WireTerminal):
    hq = wire_terminal.hq
    path = f"/api/v1/terminals/{wire_terminal.terminal_id}/parameters"
    first = wire_terminal.request("GET", path).json()
    unchanged = wire_terminal.request("GET", f"{path}?if_version={first['version']}")
    assert unchanged.status_code == 304
    token = "ab" * 32
    hq.cli("deny", "add", token)
    changed = wire_terminal.request("GET", f"{path}?if_version={first['version']}")
    assert changed.status_code == 200
    assert changed.json()["version"] > first["version"] and token in changed.json()["deny_list"]
    hq.cli("deny", "remove", token)
    assert token not in wire_terminal.request("GET", path).json()["deny_list"]


@pytest.mark.parametrize("amount,approved,reason", [(1000, True, None), (60000, False, "over_limit")])
def test_online_authorization_by_simulated_acquirer(wire_terminal: WireTerminal, amount, approved, reason):
    wire_terminal.hq.cli("acquirer", "set", "--approve", "--decline-over", "50000", "--delay-ms", "0")
    doc = {"idempotency_key": f"k-{amount}", "type": "sale", "amount_minor": amount, "currency": "EUR",
           "token": "cd" * 32, "masked_pan": "411111******1111", "scheme": "visa"}
    r = wire_terminal.request("POST", "/api/v1/authorizations", doc).json()
    assert (r["approved"], r["reason"]) == (approved, reason)
    assert (r["code"] is not None) == approved
    # Same idempotency key: the same answer, not a second authorization.
    assert wire_terminal.request("POST", "/api/v1/authorizations", doc).json() == r


def test_online_authorization_declines_deny_listed_token(wire_terminal: WireTerminal):
    hq = wire_terminal.hq
    from protocol.tokens import card_token

    token = card_token(wire_terminal.token_key, TEST_PANS[2])
    hq.cli("deny", "add", "--pan-stdin", input=TEST_PANS[2] + "\n")
    try:
        doc = {"idempotency_key": "deny-1", "type": "sale", "amount_minor": 100, "currency": "EUR", "token": token,
               "masked_pan": "401288******1881"}
        r = wire_terminal.request("POST", "/api/v1/authorizations", doc).json()
        assert (r["approved"], r["reason"]) == (False, "deny_listed")
    finally:
        hq.cli("deny", "remove", token)


def test_authorization_refuses_a_clear_pan_in_masked_field(wire_terminal: WireTerminal):
    doc = {"idempotency_key": "clear-1", "type": "sale", "amount_minor": 100, "currency": "EUR",
           "masked_pan": TEST_PANS[0]}
    r = wire_terminal.request("POST", "/api/v1/authorizations", doc)
    assert r.status_code == 422
    assert TEST_PANS[0] not in r.text
    assert wire_terminal.hq.sql("SELECT count(*) FROM authorizations WHERE terminal_id = :t",
                                t=wire_terminal.terminal_id)[0][0] == 0


def test_openapi_is_published(hq: HQ):
    paths = httpx.get(f"{hq.url}/openapi.json").json()["paths"]
    for path in ("/api/v1/enrollments", "/api/v1/authorizations", "/api/v1/terminals/{terminal_id}/transactions",
                 "/api/v1/terminals/{terminal_id}/batches/{batch_no}/close",
                 "/api/v1/terminals/{terminal_id}/parameters", "/api/v1/batches", "/api/v1/batches/{batch_id}"):
        assert path in paths
    spec = httpx.get(f"{hq.url}/openapi.json").json()
    assert "HTTPValidationError" not in str(spec)
    assert paths["/api/v1/batches"]["get"]["security"] == [{"staffToken": []}]
    assert paths["/api/v1/terminals/{terminal_id}/transactions"]["post"]["security"] == [{"terminalSignature": []}]
    assert "security" not in paths["/api/v1/enrollments"]["post"]
    assert paths["/api/v1/batches/{batch_id}"]["get"]["responses"]["404"]["content"]["application/json"][
        "schema"] == {"$ref": "#/components/schemas/Error"}


def _staff(hq: HQ, name: str) -> dict[str, str]:
    return {"authorization": "Bearer " + hq.cli("tokens", "create", "--name", name).strip()}


def _batch_of(hq: HQ, terminal_id: str, auth: dict[str, str]) -> dict:
    listed = httpx.get(f"{hq.url}/api/v1/batches", params={"terminal": terminal_id}, headers=auth).json()
    return listed["batches"][0]


def test_voids_are_checked_at_head_office_and_net_totals_reconcile(wire_terminal: WireTerminal):
    """Head office does not take the terminal's word for a void: it must reverse an accepted sale or refund of the
    batch, once, for the same amount and currency. The JSON totals give the net the CSV gives."""
    hq, t = wire_terminal.hq, wire_terminal
    sale = t.txn(amount=1000, reference='=HYPERLINK("http://x.example/","y")')
    refund = t.txn(amount=450, type="refund")
    other = t.txn(amount=500)
    rows = [sale, refund, other,
            t.txn(amount=450, type="void", void_of=refund["uuid"]),                    # 4 accepted (void of refund)
            t.txn(amount=1000, type="void", void_of=sale["uuid"]),                     # 5 accepted
            t.txn(amount=1000, type="void", void_of=sale["uuid"]),                     # 6 voided twice
            t.txn(amount=400, type="void", void_of=other["uuid"]),                     # 7 other amount
            t.txn(amount=500, currency="USD", type="void", void_of=other["uuid"]),     # 8 other currency
            t.txn(amount=500, type="void", void_of="01a23542-f74c-77f3-bf8a-e1c179f93e7b"),  # 9 unknown target
            t.txn(amount=500, type="void")]                                            # 10 void of nothing
    answer = t.upload(rows).json()
    reasons = {r["sequence"]: (r["status"], (r["reason"] or "").split(":")[0]) for r in answer["results"]}
    assert reasons == {1: ("accepted", ""), 2: ("accepted", ""), 3: ("accepted", ""), 4: ("accepted", ""),
                       5: ("accepted", ""), 6: ("rejected", "already_voided"), 7: ("rejected", "void_mismatch"),
                       8: ("rejected", "void_mismatch"), 9: ("rejected", "void_target_unknown"),
                       10: ("rejected", "invalid")}
    # The chain goes on after the rejected voids.
    assert t.upload([t.txn(amount=200)]).json()["accepted"] == 1

    auth = _staff(hq, f"staff-v-{t.terminal_id}")
    batch = _batch_of(hq, t.terminal_id, auth)
    detail = httpx.get(f"{hq.url}/api/v1/batches/{batch['id']}", headers=auth).json()
    # sales 1000 + 500 + 200, refund 450, void of the refund +450, void of the sale -1000
    (line,) = detail["totals_by_scheme_currency"]
    assert (line["sale_minor"], line["refund_minor"], line["void_minor"], line["net_minor"]) == (1700, 450, 1450, 700)
    assert detail["net_by_currency"] == {"EUR": 700}
    text = httpx.get(f"{hq.url}/api/v1/batches/{batch['id']}.csv", headers=auth).text
    lines = list(csv.reader(io.StringIO(text)))
    assert {(r[6], r[9]): r[7] for r in lines if r[0] == "trailer"}[("net", "EUR")] == "700"
    # A reference a spreadsheet would run as a formula is written as text.
    (first,) = [r for r in lines if r[0] == "txn" and r[4] == "1"]
    assert first[15] == '\'=HYPERLINK("http://x.example/","y")'


def test_closed_batch_is_evaluated_again_when_a_late_transaction_arrives(wire_terminal: WireTerminal):
    hq, t = wire_terminal.hq, wire_terminal
    rows = [t.txn(amount=500) for _ in range(3)]
    t.upload(rows[:2])
    close = f"/api/v1/terminals/{t.terminal_id}/batches/1/close"
    totals = [{"type": "sale", "scheme": "visa", "currency": "EUR", "count": 3, "amount_minor": 1500}]
    assert t.request("POST", close, {"totals": totals, "first_sequence": 1, "last_sequence": 3}).json()[
        "missing_sequences"] == [3]
    auth = _staff(hq, f"staff-l-{t.terminal_id}")
    batch_id = _batch_of(hq, t.terminal_id, auth)["id"]

    from datetime import UTC, datetime

    pulled_at = {"now": datetime.fromtimestamp(httpx.get(f"{hq.url}/api/v1/time").json()["server_time"] + 0.001,
                                               UTC).isoformat()}
    listed = httpx.get(f"{hq.url}/api/v1/batches", params={"terminal": t.terminal_id, "since": pulled_at["now"]},
                       headers=auth).json()["batches"]
    assert listed == []  # nothing changed since that pull

    t.upload(rows[2:])  # the late one: no second close needed
    detail = httpx.get(f"{hq.url}/api/v1/batches/{batch_id}", headers=auth).json()
    assert (detail["status"], detail["missing_sequences"], detail["differences"]) == ("balanced", [], [])
    # A puller asking for what changed since its last pull gets the batch again, now balanced (it closed before).
    listed = httpx.get(f"{hq.url}/api/v1/batches", params={"terminal": t.terminal_id, "since": pulled_at["now"]},
                       headers=auth).json()["batches"]
    assert [(b["id"], b["status"]) for b in listed] == [(batch_id, "balanced")]
    assert listed[0]["updated_at"] >= listed[0]["closed_at"]

    t.upload([t.txn(amount=999)])  # one the terminal's totals did not count, into the balanced batch
    detail = httpx.get(f"{hq.url}/api/v1/batches/{batch_id}", headers=auth).json()
    assert detail["status"] == "out_of_balance"
    assert [(d["count_difference"], d["amount_difference_minor"]) for d in detail["differences"]] == [(-1, -999)]

    # The missing sequences are those of the closed range not in *this* batch.
    second = f"/api/v1/terminals/{t.terminal_id}/batches/2/close"
    answer = t.request("POST", second, {"totals": [], "first_sequence": 1, "last_sequence": 2}).json()
    assert (answer["status"], answer["missing_sequences"]) == ("out_of_balance", [1, 2])


def test_batch_list_pages_filters_in_utc_and_answers_bad_queries_in_json(wire_terminal: WireTerminal):
    hq, t = wire_terminal.hq, wire_terminal
    for batch in (1, 2, 3):
        t.upload([t.txn(amount=100, batch=batch)])
        path = f"/api/v1/terminals/{t.terminal_id}/batches/{batch}/close"
        t.request("POST", path, {"totals": [{"type": "sale", "scheme": "visa", "currency": "EUR", "count": 1,
                                             "amount_minor": 100}]})
    auth = _staff(hq, f"staff-p-{t.terminal_id}")
    url = f"{hq.url}/api/v1/batches"
    ids, after = [], None
    while True:
        page = httpx.get(url, params={"terminal": t.terminal_id, "limit": 2, **({"after": after} if after else {})},
                         headers=auth).json()
        ids += [b["id"] for b in page["batches"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert len(ids) == 3 and ids == sorted(ids)

    closed = httpx.get(f"{url}/{ids[0]}", headers=auth).json()["closed_at"]
    from datetime import datetime, timedelta, timezone

    at = datetime.fromisoformat(closed)
    plus_one = timezone(timedelta(hours=1))
    before = (at - timedelta(minutes=1)).astimezone(plus_one).isoformat()  # same instant, other offset
    later = (at + timedelta(minutes=5)).astimezone(plus_one).isoformat()
    assert len(httpx.get(url, params={"terminal": t.terminal_id, "since": before}, headers=auth).json()[
        "batches"]) == 3
    assert httpx.get(url, params={"terminal": t.terminal_id, "since": later}, headers=auth).json()["batches"] == []

    bad = httpx.get(url, params={"status": "BALANCED"}, headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_status"
    huge = httpx.get(f"{url}/99999999999999999999999", headers=auth)
    assert huge.status_code == 422 and huge.json()["error"]["code"] == "invalid_request"
    assert httpx.get(f"{url}/{ids[0]}", headers=auth).status_code == 200  # the server is still fine
    missing = httpx.get(f"{hq.url}/api/v1/nothing-here", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.delete(url, headers=auth)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in wrong.headers["allow"]


def test_authorization_key_reused_for_another_payment_is_refused(wire_terminal: WireTerminal):
    wire_terminal.hq.cli("acquirer", "set", "--approve", "--no-limit", "--delay-ms", "0")
    doc = {"idempotency_key": "reuse-1", "type": "sale", "amount_minor": 1000, "currency": "EUR",
           "token": "cd" * 32, "masked_pan": "411111******1111", "scheme": "visa"}
    assert wire_terminal.request("POST", "/api/v1/authorizations", doc).json()["approved"] is True
    other = wire_terminal.request("POST", "/api/v1/authorizations", {**doc, "amount_minor": 99999})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    text_amount = wire_terminal.request("POST", "/api/v1/authorizations",
                                        {**doc, "idempotency_key": "reuse-2", "amount_minor": "1000"})
    assert text_amount.status_code == 422


def test_csv_reconciles_from_its_own_lines_with_voids_of_sales_and_refunds(wire_terminal: WireTerminal):
    """Each line says what it does to the net and which transaction a void takes back: sale 1250, refund 400
    voided, sale 333 voided, refund 100 -> net 1150, the sum of the lines' net_minor."""
    hq = wire_terminal.hq
    sale = wire_terminal.txn(amount=1250)
    refund = wire_terminal.txn(amount=400, type="refund")
    void_refund = wire_terminal.txn(amount=400, type="void", void_of=refund["uuid"])
    small = wire_terminal.txn(amount=333)
    void_sale = wire_terminal.txn(amount=333, type="void", void_of=small["uuid"])
    last = wire_terminal.txn(amount=100, type="refund")
    rows = [sale, refund, void_refund, small, void_sale, last]
    assert wire_terminal.upload(rows).json()["accepted"] == 6
    token = hq.cli("tokens", "create", "--name", f"recon-{wire_terminal.terminal_id}").strip()
    auth = {"authorization": f"Bearer {token}"}
    listed = httpx.get(f"{hq.url}/api/v1/batches", params={"terminal": wire_terminal.terminal_id},
                       headers=auth).json()["batches"]
    text = httpx.get(f"{hq.url}/api/v1/batches/{listed[0]['id']}.csv", headers=auth).text
    lines = list(csv.reader(io.StringIO(text)))
    col = {name: i for i, name in enumerate(lines[0])}
    txns = [line for line in lines if line[0] == "txn"]
    assert [(t[col["type"]], t[col["void_of"]], int(t[col["net_minor"]])) for t in txns] == [
        ("sale", "", 1250), ("refund", "", -400), ("void", refund["uuid"], 400), ("sale", "", 333),
        ("void", small["uuid"], -333), ("refund", "", -100)]
    trailers = {line[col["type"]]: int(line[col["net_minor"]]) for line in lines if line[0] == "trailer"}
    assert trailers == {"sale": 1583, "refund": -500, "void": 67, "net": 1150}
    assert sum(int(t[col["net_minor"]]) for t in txns) == trailers["net"] == \
        trailers["sale"] + trailers["refund"] + trailers["void"]


def test_deny_list_refuses_a_mistyped_card_number(wire_terminal: WireTerminal):
    """A number failing its check digit would deny some other token and leave the card meant still accepted."""
    from click.testing import CliRunner

    from headoffice.cli import cli

    hq = wire_terminal.hq
    before = hq.cli("deny", "list")
    result = CliRunner().invoke(cli, ["deny", "add", "--pan-stdin"], env=hq.env,
                                input=TEST_PANS[0] + "\n4111111111111112\n")
    assert result.exit_code == 1 and "line 2" in result.output and "check digit" in result.output
    assert "4111111111111112" not in result.output and "411111******1112" in result.output
    assert hq.cli("deny", "list") == before  # nothing was changed, not even line 1


def test_nets_of_a_scheme_called_unknown_and_of_no_scheme_stay_apart(wire_terminal: WireTerminal):
    hq = wire_terminal.hq
    rows = [wire_terminal.txn(amount=400, scheme="visa"), wire_terminal.txn(amount=700, scheme="unknown")]
    rows[0]["scheme"] = None
    from protocol import chain

    # re-chain after dropping the first row's scheme, as a terminal that read no scheme would have sent it
    prev = rows[0]["prev_hash"]
    for row in rows:
        row["prev_hash"] = prev
        row["hash"] = prev = chain.chain_hash(prev, row)
    wire_terminal.prev_hash = prev
    assert wire_terminal.upload(rows).json()["accepted"] == 2
    token = hq.cli("tokens", "create", "--name", f"schemes-{wire_terminal.terminal_id}").strip()
    auth = {"authorization": f"Bearer {token}"}
    listed = httpx.get(f"{hq.url}/api/v1/batches", params={"terminal": wire_terminal.terminal_id},
                       headers=auth).json()["batches"]
    detail = httpx.get(f"{hq.url}/api/v1/batches/{listed[0]['id']}", headers=auth).json()
    assert {(t["scheme"], t["sale_minor"], t["net_minor"]) for t in detail["totals_by_scheme_currency"]} == {
        (None, 400, 400), ("unknown", 700, 700)}


def test_upload_pages_do_not_burn_batch_ids(wire_terminal: WireTerminal):
    """Batch ids are what staff quote (`batches pull ID`): five pages of batch 1 then batch 2 give two
    consecutive ids on both back ends (PostgreSQL's ON CONFLICT insert took a sequence value per page)."""
    for _ in range(5):
        assert wire_terminal.upload([wire_terminal.txn(batch=1)]).json()["accepted"] == 1
    assert wire_terminal.upload([wire_terminal.txn(batch=2)]).json()["accepted"] == 1
    ids = [r[0] for r in wire_terminal.hq.sql("SELECT id FROM batches WHERE terminal_id = :t ORDER BY batch_no",
                                              t=wire_terminal.terminal_id)]
    assert len(ids) == 2 and ids[1] == ids[0] + 1, ids


def _rechained(wire_terminal: WireTerminal, rows: list[dict]) -> list[dict]:
    from protocol import chain

    prev = rows[0]["prev_hash"]
    for row in rows:
        row["prev_hash"] = prev
        row["hash"] = prev = chain.chain_hash(prev, row)
    wire_terminal.prev_hash = prev
    return rows


def test_sales_without_a_scheme_and_with_an_empty_one_all_count(wire_terminal: WireTerminal):
    """A missing scheme and an empty one are one group in head office's totals: they used to be two groups of the
    same key, and the last one replaced the other (3 sales of 100 showed as 1 of 100, and the close was out of
    balance with every row there)."""
    rows = [wire_terminal.txn(amount=100) for _ in range(3)]
    for row, scheme in zip(rows, (None, "", None), strict=True):
        row["scheme"] = scheme
    assert wire_terminal.upload(_rechained(wire_terminal, rows)).json()["accepted"] == 3
    totals = [{"type": "sale", "scheme": None, "currency": "EUR", "count": 3, "amount_minor": 300}]
    path = f"/api/v1/terminals/{wire_terminal.terminal_id}/batches/1/close"
    answer = wire_terminal.request("POST", path, {"totals": totals, "first_sequence": 1, "last_sequence": 3}).json()
    assert answer["status"] == "balanced" and answer["differences"] == [], answer


def test_a_nul_in_a_text_field_rejects_that_row_alone(wire_terminal: WireTerminal):
    """PostgreSQL takes no NUL in text: stored as sent, it failed the whole page with a 500, and the terminal sent
    it again for ever. The row is rejected (its chain position kept) and the rows around it go on."""
    rows = [wire_terminal.txn(amount=100), wire_terminal.txn(amount=200), wire_terminal.txn(amount=300)]
    rows[1]["reference"] = "R-\x00-1"
    r = wire_terminal.upload(_rechained(wire_terminal, rows))
    assert r.status_code == 200, r.text
    assert [(x["status"], x["reason"]) for x in r.json()["results"]] == [
        ("accepted", None), ("rejected", "invalid: reference"), ("accepted", None)]
