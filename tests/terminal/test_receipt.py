"""Receipt model, layouts and renderers (pure: no printer involved)."""

from __future__ import annotations

import re

import pytest
from PIL import Image as PILImage

from drivers.escpos_decode import Image, Line, Qr, decode, events_text, image_to_pil
from drivers.printer import load_profile
from drivers.textimage import missing_glyphs, text_image
from protocol.errors import ValidationError
from terminal.receipt import (
    ARABIC_SAMPLE,
    CJK_SAMPLE,
    CODEPAGE_SAMPLE,
    HEBREW_SAMPLE,
    Merchant,
    ReceiptModel,
    TxnInfo,
    encode_line,
    layout,
    make_test_page,
    receipt_for_transaction,
    render_escpos,
    render_png,
    render_text,
    settlement_model,
    wrap,
)
from tests.terminal import receipt_samples as s


@pytest.fixture(scope="module")
def profile():
    return load_profile("TM-T20II")


def _model(txn=None, copy="customer", merchant=s.MERCHANT):
    return receipt_for_transaction(txn or s.sale(), merchant=merchant, terminal_id="T-0001", copy=copy)


def test_sale_receipt_has_every_field_and_last4_only(profile):
    text = render_text(_model(), profile.columns)
    for expected in ("Corner Coffee", "12 Main Street", "M-0042", "T-0001", "2026-11-23 12:34:56 UTC", "SALE",
                     "12.50 EUR", "VISA", "VISA CREDIT", "A0000000031010", "**** 0119", "Contactless", "A1B2C3",
                     "No cardholder verification", "001C", "0000008000", "000042", "003", "R-1001",
                     f"[QR {s.TXN_UUID}]", "CUSTOMER COPY", "--- cut ---"):
        assert expected in text, expected
    assert s.TEST_PAN not in text
    assert s.TEST_PAN[:6] not in text  # receipts: last 4 only, not even the BIN
    assert s.EXPIRY not in text and "Expiry" not in text


def test_merchant_copy_and_offline_approval_show_local_reference(profile):
    text = render_text(_model(s.offline_sale(), copy="merchant"), profile.columns)
    assert "MERCHANT COPY" in text
    assert re.search(r"Authorization\s+OFFLINE", text)
    assert "OFF-T1-003-000043" in text
    assert "9.90 EUR" in text


def test_refund_and_void_are_negative_and_void_names_the_original(profile):
    refund = render_text(_model(s.refund()), profile.columns)
    assert "REFUND" in refund and "-5.00 EUR" in refund
    void = render_text(_model(s.void()), profile.columns)
    assert "VOID" in void and "-12.50 EUR" in void and re.search(r"Voids sale\s+#000042", void)


def test_model_refuses_more_than_last4():
    with pytest.raises(ValidationError) as err:
        TxnInfo("sale", 100, "EUR", 1, 1, "u", pan_last4=s.TEST_PAN)
    assert err.value.code == "invalid_receipt"
    assert s.TEST_PAN not in str(err.value)


@pytest.mark.parametrize("bad", [{"amount_minor": 0}, {"amount_minor": -5}, {"currency": "EURO"}, {"type": "gift"}])
def test_bad_transaction_gives_typed_error(bad):
    with pytest.raises(ValidationError):
        _model(s.sale(**bad))


def test_long_merchant_name_wraps_never_cuts(profile):
    name = "The Extraordinarily Long Named Neighbourhood Coffee Roastery and Bakery of Springfield"
    merchant = {**s.MERCHANT, "name": name}
    lines = [el.text for el in layout(_model(merchant=merchant), 32) if hasattr(el, "text")]
    assert all(len(line) <= 32 for line in lines)
    joined = " ".join(lines)
    assert name in joined
    assert wrap("x" * 70, 32) == ["x" * 32, "x" * 32, "x" * 6]


def test_control_bytes_in_text_cannot_inject_printer_commands(profile):
    merchant = {**s.MERCHANT, "name": "Evil\x1b@\x10\x04\x01\x1dV\x00 Shop"}
    data = render_escpos(_model(merchant=merchant), profile)
    events = decode(data)
    assert not any(e.kind == "status_request" for e in events)
    assert [e.kind for e in events].count("cut") == 1
    assert any(isinstance(e, Line) and "Evil" in e.text and "Shop" in e.text for e in events)


def test_text_renderer_matches_decoded_escpos(profile):
    model = _model()
    decoded = events_text(decode(render_escpos(model, profile)), profile.columns)
    assert decoded == render_text(model, profile.columns)


def test_escpos_uses_native_qr_bold_size_and_alignment(profile):
    events = decode(render_escpos(_model(), profile))
    assert [e.content for e in events if isinstance(e, Qr)] == [s.TXN_UUID]
    title = next(e for e in events if isinstance(e, Line) and e.text == "SALE")
    assert (title.bold, title.width, title.height, title.align) == (True, 2, 2, "center")
    merchant = next(e for e in events if isinstance(e, Line) and e.text == "Corner Coffee")
    assert merchant.bold and merchant.align == "center"


def test_profile_without_native_qr_prints_the_qr_as_an_image():
    simple = load_profile("TM-U220")  # no native QR in python-escpos's printer database
    events = decode(render_escpos(_model(), simple))
    assert not any(isinstance(e, Qr) for e in events)
    assert any(isinstance(e, Image) and e.height > 50 for e in events)


def test_accented_text_is_encoded_in_a_codepage_not_an_image(profile):
    slot, _raw = encode_line(CODEPAGE_SAMPLE, profile)
    assert profile.codepages[slot] in ("CP1252", "CP858", "ISO_8859-15")
    events = decode(render_escpos(make_test_page(profile), profile))
    assert any(isinstance(e, Line) and e.text == CODEPAGE_SAMPLE for e in events)


def test_cjk_merchant_prints_as_a_legible_image(profile):
    name = s.NON_ASCII_MERCHANT["name"]
    assert encode_line(name, profile) is None  # no single codepage has CJK and the euro sign
    assert missing_glyphs(name) == []  # every glyph exists in the fonts: nothing prints as a box
    events = decode(render_escpos(_model(merchant=s.NON_ASCII_MERCHANT), profile))
    image = next(e for e in events if isinstance(e, Image))
    expected = text_image(name, profile.width_px, align="center", bold=True)
    assert image_to_pil(image).tobytes() == expected.tobytes()
    ink = image_to_pil(image).convert("L").histogram()[0]  # black dots
    assert ink > 300
    # the accented address line still goes as text
    assert any(isinstance(e, Line) and e.text == "8001 Z\u00fcrich" for e in events)


def test_hebrew_prints_in_a_codepage_in_the_order_it_is_read(profile):
    """Printers lay characters left to right: sent in logical order, a Hebrew shop name came out mirrored."""
    merchant = {"name": "קפה הפינה", "address": ["רחוב הרצל 12", "תל אביב"], "merchant_id": "M-7"}
    model = _model(merchant=merchant)
    events = decode(render_escpos(model, profile))
    lines = [e.text for e in events if isinstance(e, Line)]
    # first letter of each word at the right; the house number keeps its digit order and stands at the left
    assert lines[:3] == ["הניפה הפק", "12 לצרה בוחר", "ביבא לת"]
    assert not any(isinstance(e, Image) for e in events[:6])  # in CP862 / CP1255, not as images
    slot, _raw = encode_line("קפה", profile)
    assert profile.codepages[slot] in ("CP862", "CP1255", "ISO_8859-8")
    # the preview for screens keeps the logical order (screens reorder it themselves)
    assert "קפה הפינה" in render_text(model, profile.columns)


def test_a_line_mixing_latin_and_hebrew_keeps_the_latin_part_readable(profile):
    model = _model(merchant={"name": "Corner קפה", "address": ["Shop 3 בקניון"]})
    lines = [e.text for e in decode(render_escpos(model, profile)) if isinstance(e, Line)]
    assert lines[:2] == ["Corner הפק", "Shop 3 ןוינקב"]  # left-to-right line: only the Hebrew run is reversed


def test_arabic_prints_as_an_image_not_in_a_codepage(profile):
    """A codepage prints every Arabic letter in its isolated form and in logical order: the line goes as an image,
    laid out (joined, right to left) by Pillow's libraqm layout where it has one."""
    name = "مقهى الزاوية"
    assert encode_line(name, profile) is not None  # a codepage could take it, unjoined: not used
    events = decode(render_escpos(_model(merchant={"name": name, "address": []}), profile))
    assert not any(isinstance(e, Line) and any("\u0600" <= ch <= "\u06ff" for ch in e.text) for e in events)
    image = next(e for e in events if isinstance(e, Image))
    assert image_to_pil(image).tobytes() == text_image(name, profile.width_px, align="center", bold=True).tobytes()
    assert image_to_pil(image).convert("L").histogram()[0] > 200  # black dots: drawn, not blank
    assert missing_glyphs(name) == []


def test_test_page_lists_profile_codepages_and_samples(profile):
    model = make_test_page(profile, terminal_id="T-0001", status_before="ok")
    text = render_text(model, profile.columns)
    for expected in ("PRINTER TEST", "TM-T20II", "48 / 576 px", "Native QR", "CP437", CODEPAGE_SAMPLE, CJK_SAMPLE,
                     "[QR smartpos test page T-0001]", "--- cut ---"):
        assert expected in text, expected


def test_test_page_shows_a_technician_both_right_to_left_paths(profile):
    """On site, the test page shows whether this printer's Hebrew codepage works and reads right to left, and
    that Arabic prints joined (as an image)."""
    events = decode(render_escpos(make_test_page(profile, terminal_id="T-0001"), profile))
    lines = [e.text for e in events if isinstance(e, Line)]
    assert "הלבק 42 םולש" in lines  # "שלום 42 קבלה" as it is read: right to left, the number left to right
    images = [image_to_pil(e).tobytes() for e in events if isinstance(e, Image)]
    assert text_image(ARABIC_SAMPLE, profile.width_px).tobytes() in images
    assert text_image(CJK_SAMPLE, profile.width_px).tobytes() in images
    assert HEBREW_SAMPLE in render_text(make_test_page(profile), profile.columns)


def test_settlement_report_totals_per_scheme_and_currency(profile):
    model = settlement_model(s.closed_batch(), merchant=s.MERCHANT, terminal_id="T-0001")
    text = render_text(model, profile.columns)
    assert "SETTLEMENT" in text and re.search(r"Batch\s+003", text)
    assert re.search(r"VISA EUR", text) and re.search(r"MASTERCARD EUR", text)
    assert re.search(r"Sales\s+3\s+37\.40 EUR", text)
    assert re.search(r"Refunds\s+1\s+-5\.00 EUR", text)
    assert re.search(r"Voids\s+1\s+-12\.50 EUR", text)
    assert re.search(r"TOTAL EUR \(6 txns\)\s+39\.90 EUR", text)
    assert "BALANCED" in text


def test_settlement_out_of_balance_and_unconfirmed(profile):
    batch = {**s.closed_batch(), "hq_status": "out_of_balance",
             "hq_detail": {"differences": ["visa EUR: terminal 37.40, head office 32.40"]}}
    text = render_text(settlement_model(batch, merchant=s.MERCHANT, terminal_id="T-0001"), profile.columns)
    assert "OUT OF BALANCE" in text and "head office 32.40" in text
    pending = {**s.closed_batch(), "hq_status": "pending"}
    text = render_text(settlement_model(pending, merchant=s.MERCHANT, terminal_id="T-0001"), profile.columns)
    assert "not confirmed by head office" in text


def test_model_round_trips_through_its_json_payload():
    for model in (_model(), _model(s.void(), copy="merchant"),
                  settlement_model(s.closed_batch(), merchant=s.MERCHANT, terminal_id="T-0001"),
                  make_test_page(load_profile("TM-T88V"))):
        assert ReceiptModel.from_dict(model.to_dict()) == model
    with pytest.raises(ValidationError):
        ReceiptModel.from_dict({"kind": "sale"})


def test_png_preview_draws_the_receipt(tmp_path, profile):
    path = render_png(_model(merchant=s.NON_ASCII_MERCHANT), tmp_path / "r.png", profile)
    with PILImage.open(path) as im:
        assert im.width == profile.width_px
        assert im.height > 40 * 24  # ~ every line of the receipt, the QR and the cut
        assert im.convert("L").getextrema() == (0, 255)


def test_merchant_from_enrollment_dict_cleans_text():
    m = Merchant.from_dict({"id": "M1", "name": "A\tB", "address": "line 1\nline 2"})
    assert m == Merchant("A B", ("line 1", "line 2"), "M1")


def test_offline_reference_is_the_transactions_own_not_the_response_code(profile):
    """Offline, the auth code is the EMV response code ("Y1"), the same on every offline approval: the receipt's
    local reference is terminal-batch-sequence instead."""
    text = render_text(_model(s.sale(auth_mode="offline", auth_code="Y1", sequence=77)), profile.columns)
    assert re.search(r"Local reference\s+T-0001-003-000077", text)
    assert "Y1" not in text


def test_void_of_a_refund_names_the_refund_and_takes_the_money_back(profile):
    void = s.sale(uuid="d00df00d-1234-4abc-8def-001122334455", sequence=46, type="void", amount_minor=500,
                  void_of="a3c1e2d4-5b6f-4a7b-8c9d-0e1f2a3b4c5d", original_sequence=44, original_type="refund")
    text = render_text(_model(void), profile.columns)
    assert re.search(r"Voids refund\s+#000044", text) and "5.00 EUR" in text and "-5.00 EUR" not in text


def test_settlement_lines_add_up_and_out_of_balance_reads_in_money(profile):
    batch = s.closed_batch()
    # one void of a 5.00 refund instead of a void of a sale: net = 37.40 - 5.00 + 5.00
    batch["totals"]["by_scheme"][0].update(void_amount_minor=500, net_amount_minor=3740)
    batch.update(hq_status="out_of_balance", hq_detail={
        "differences": [{"type": "sale", "scheme": "visa", "currency": "EUR", "terminal_count": 3,
                         "terminal_amount_minor": 3740, "hq_count": 2, "hq_amount_minor": 2490}],
        "missing_sequences": [44]})
    text = render_text(settlement_model(batch, merchant=s.MERCHANT, terminal_id="T-0001"), profile.columns)
    assert re.search(r"Voids\s+1\s+5\.00 EUR", text) and re.search(r"Net\s+37\.40 EUR", text)
    flat = " ".join(text.split())
    assert "sale VISA EUR: terminal 3 x 37.40 EUR, head office 2 x 24.90 EUR" in flat
    assert "Not at head office: #000044" in flat
    assert "{" not in text and "_minor" not in text


def test_receipt_times_are_the_shops_not_utc(profile):
    """Stored in UTC, printed in the shop's zone ([printer] timezone, else the system's local time)."""
    from zoneinfo import ZoneInfo

    text = render_text(receipt_for_transaction(s.sale(), merchant=s.MERCHANT, terminal_id="T-0001", copy="customer",
                                               tz=ZoneInfo("Asia/Tokyo")), profile.columns)
    assert "2026-11-23 21:34:56 +09:00" in text and "12:34:56 UTC" not in text
    report = render_text(settlement_model(s.closed_batch(), merchant=s.MERCHANT, terminal_id="T-0001",
                                          tz=ZoneInfo("Europe/Berlin")), profile.columns)
    assert "2026-11-23 09:00:00 +01:00" in report  # opened 08:00 UTC
