"""Every receipt kind through python-escpos to the virtual printer over TCP and over a socat pty pair, decoded
and checked for what a customer or merchant reads."""

from __future__ import annotations

import re

import pytest
from PIL import Image as PILImage

from drivers.escpos_decode import Image, Line
from drivers.printer import open_printer
from protocol.carddata import redact
from terminal.receipt import make_test_page, receipt_for_transaction, render_escpos, settlement_model
from tests.terminal import receipt_samples as s


def _all_receipts(profile):
    kw = {"merchant": s.MERCHANT, "terminal_id": "T-0001"}
    return [
        ("sale/customer", receipt_for_transaction(s.sale(), copy="customer", **kw)),
        ("sale/merchant", receipt_for_transaction(s.sale(), copy="merchant", **kw)),
        ("offline", receipt_for_transaction(s.offline_sale(), copy="customer", **kw)),
        ("refund", receipt_for_transaction(s.refund(), copy="customer", **kw)),
        ("void", receipt_for_transaction(s.void(), copy="merchant", **kw)),
        ("settlement", settlement_model(s.closed_batch(), **kw)),
        ("test", make_test_page(profile, terminal_id="T-0001", status_before="ok")),
    ]


def _print_all(uri, profile):
    # The printer answers the status query after decoding everything before it (7 receipts, images included):
    # give it time on a loaded machine. Short status timeouts are the fault tests' subject, not this test's.
    with open_printer(uri, profile=profile, timeout=5, status_timeout=3) as conn:
        assert conn.status().ready
        for _name, model in _all_receipts(profile):
            conn.write(render_escpos(model, profile))
        assert conn.status().ready


def _check(receipts):
    assert len(receipts) == 7 and all(r.complete for r in receipts)  # each ended with its cut
    sale_c, sale_m, offline, refund, void, settlement, test = (r.text for r in receipts)
    for text in (sale_c, sale_m, offline, refund, void):
        assert s.TEST_PAN not in text and s.TEST_PAN[:6] not in text and s.EXPIRY not in text
        assert "**** 0119" in text and "A0000000031010" in text and "Corner Coffee" in text
        assert redact(text) == text  # nothing that looks like a card number
    assert re.search(r"TOTAL\s+12\.50 EUR", sale_c) and "CUSTOMER COPY" in sale_c and "A1B2C3" in sale_c
    assert "MERCHANT COPY" in sale_m
    assert receipts[0].qr_contents == [s.TXN_UUID] and receipts[1].qr_contents == [s.TXN_UUID]
    assert "OFFLINE" in offline and "OFF-T1-003-000043" in offline and "9.90 EUR" in offline
    assert "REFUND" in refund and "-5.00 EUR" in refund
    assert "VOID" in void and "#000042" in void and "-12.50 EUR" in void
    assert re.search(r"TOTAL EUR \(6 txns\)\s+39\.90 EUR", settlement) and "BALANCED" in settlement
    assert "PRINTER TEST" in test and "Caf\u00e9 Z\u00fcrich \u2013 \u00a3 \u20ac" in test
    assert receipts[6].qr_contents == ["smartpos test page T-0001"]
    assert any(isinstance(e, Image) for e in receipts[6].events)  # the CJK sample line as an image


def test_every_receipt_kind_over_tcp(tcp_printer, printer_profile):
    _print_all(tcp_printer.uri, printer_profile)
    receipts = tcp_printer.wait_receipts(7)
    _check(receipts)
    # the virtual printer kept each one as text and PNG
    for r in receipts:
        assert r.text_path.read_text(encoding="utf-8") == r.text
        with PILImage.open(r.png_path) as im:
            assert im.width == printer_profile.width_px and im.height > 300


def test_every_receipt_kind_over_a_socat_pty_pair(pty_printer, printer_profile):
    _print_all(pty_printer.uri, printer_profile)
    _check(pty_printer.wait_receipts(7))


@pytest.mark.parametrize("transport", ["tcp", "pty"])
def test_non_ascii_merchant_is_legible(request, transport, printer_profile):
    sink = request.getfixturevalue(f"{transport}_printer")
    model = receipt_for_transaction(s.sale(), merchant=s.NON_ASCII_MERCHANT, terminal_id="T-0001", copy="customer")
    with open_printer(sink.uri, profile=printer_profile, timeout=5) as conn:
        conn.write(render_escpos(model, printer_profile))
    receipt = sink.wait_receipts(1)[0]
    first = receipt.events[0]
    assert isinstance(first, Image) and first.height >= 24  # merchant name drawn by the terminal
    assert Line("8001 Z\u00fcrich", align="center") in receipt.events  # accents via a codepage, as text
    assert "\ufffd" not in receipt.text and "?" not in receipt.text.replace("[QR", "")
