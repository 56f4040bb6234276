"""The ESC/POS decoder used by the virtual printer and the tests."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.escpos_decode import (
    Barcode,
    Cut,
    Drawer,
    EscposDecoder,
    Image,
    Line,
    Qr,
    StatusRequest,
    decode,
    split_receipts,
)
from drivers.printer import import_escpos

DLE_EOT_1 = b"\x10\x04\x01"


def _escpos_bytes(build) -> bytes:
    import_escpos()
    from escpos.printer import Dummy

    p = Dummy(profile="TM-T20II")
    build(p)
    return bytes(p.output)


def test_styles_alignment_and_cut_from_python_escpos():
    def build(p):
        p.hw("INIT")
        p.set(align="center", bold=True, double_width=True, double_height=True)
        p.textln("TITLE")
        p.set(align="right", bold=False, normal_textsize=True)
        p.textln("right")
        p.set(align="left", underline=1)
        p.textln("under")
        p.cashdraw(2)
        p.cut()

    events = decode(_escpos_bytes(build))
    lines = [e for e in events if isinstance(e, Line)]
    assert lines[0] == Line("TITLE", bold=True, width=2, height=2, align="center")
    assert lines[1] == Line("right", align="right")
    assert lines[2].underline and lines[2].text == "under"
    assert any(isinstance(e, Drawer) and e.pin == 2 for e in events)
    assert isinstance(events[-1], Cut)


def test_status_request_bytes_inside_image_and_qr_payloads_are_data():
    # a raster image whose rows are DLE EOT 1 ... and a QR whose content contains DLE EOT
    raster = DLE_EOT_1 * 64  # 192 bytes = 24 bytes per row x 8 rows
    image = b"\x1dv0\x00" + bytes([24, 0, 8, 0]) + raster
    content = "x\x10\x04\x01y\x10\x04\x04"
    qr_store = content.encode()
    qr = (b"\x1d(k" + bytes([len(qr_store) + 3, 0]) + b"1P0" + qr_store + b"\x1d(k\x03\x001Q0")
    graphics_data = b"0p0\x01\x011" + bytes([16, 0, 4, 0]) + DLE_EOT_1 * 2 + b"\x10\x04"
    graphics = b"\x1d(L" + bytes([len(graphics_data), 0]) + graphics_data + b"\x1d(L\x02\x0002"
    events = decode(b"\x1b@" + image + qr + graphics + DLE_EOT_1)
    assert [e for e in events if isinstance(e, StatusRequest)] == [StatusRequest(1)]  # only the real one
    img = next(e for e in events if isinstance(e, Image))
    assert (img.width, img.height, img.raster) == (192, 8, raster)
    assert next(e for e in events if isinstance(e, Qr)).content == content
    assert sum(isinstance(e, Image) for e in events) == 2


def test_python_escpos_image_and_qr_with_status_bytes_decode_whole():
    from PIL import Image as PILImage

    # an image whose packed rows are full of 0x10 0x04 pairs
    im = PILImage.new("1", (32, 16), 1)
    for y in range(16):
        for x in range(32):
            if (x % 16) in (3, 13):
                im.putpixel((x, y), 0)

    def build(p):
        p.image(im, impl="bitImageRaster")
        p.qr("ref \x10\x04\x01 end", native=True)
        p.cut()

    data = _escpos_bytes(build)
    assert DLE_EOT_1[:2] in data
    events = decode(data)
    assert not any(isinstance(e, StatusRequest) for e in events)
    assert [e.content for e in events if isinstance(e, Qr)] == ["ref \x10\x04\x01 end"]


def test_any_chunking_gives_the_same_events():
    def build(p):
        p.hw("INIT")
        p.set(bold=True)
        p.textln("Total 12.50 EUR")
        p._raw(b"\x1bt\x10" + "Caf\u00e9 \u20ac".encode("cp1252") + b"\n")
        p.qr("6f1c2f7e-9a41", native=True)
        p.barcode("123456789012", "EAN13", function_type="A")
        p.cut()

    data = _escpos_bytes(build) + DLE_EOT_1
    whole = decode(data)
    rng = random.Random(7)
    for _ in range(30):
        decoder = EscposDecoder()
        events = []
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 9)
            events += decoder.feed(data[pos : pos + step])
            pos += step
        events += decoder.flush()
        assert events == whole
    assert Line("Caf\u00e9 \u20ac", bold=True) in whole
    assert any(isinstance(e, Barcode) and e.content.startswith("12345678901") for e in whole)
    assert isinstance(whole[-1], StatusRequest)


def test_split_receipts_on_cuts_and_incomplete_tail():
    events = decode(b"one\n\x1dV\x00two\n\x1dV\x01three\n")
    receipts = split_receipts(events)
    assert [[e.text for e in r if isinstance(e, Line)] for r in receipts] == [["one"], ["two"], ["three"]]
    assert isinstance(receipts[1][-1], Cut) and receipts[1][-1].partial
    assert not any(isinstance(e, Cut) for e in receipts[2])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash_the_decoder(data):
    decoder = EscposDecoder()
    decoder.feed(data)
    decoder.flush()
    assert decoder.pending <= len(data)


@pytest.mark.parametrize("slot,codec", [(0, "cp437"), (16, "cp1252"), (19, "cp858")])
def test_codepage_switch_decodes_accents(slot, codec):
    text = "Z\u00fcrich \u00e9"
    events = decode(b"\x1bt" + bytes([slot]) + text.encode(codec) + b"\n")
    assert events == [Line(text)]
