"""Text drawn as a 1-bit bitmap the width of the paper: the fallback for lines no printer codepage can encode
(CJK, mixed scripts), and the glyphs of the receipt previews.

Fonts come from ``SMARTPOS_FONT`` / ``SMARTPOS_CJK_FONT`` when set, else fontconfig (``fc-match``), else the
usual Debian locations (packages fonts-dejavu-core and fonts-wqy-microhei), else Pillow's built-in font.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import unicodedata
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# A thermal printer's font A cell is 12 x 24 dots; a CJK glyph takes two cells.
CELL_W = 12
CELL_H = 24
_MONO_SIZE = 20  # DejaVu Sans Mono at 20 px advances 12 px per character
_CJK_SIZE = 22

_MONO_FALLBACKS = ("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",)
_CJK_FALLBACKS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
)
# A noncharacter: no font maps it, so drawing it shows the font's "missing glyph" box.
_NOT_A_CHAR = "\U0010fffe"

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _fc_match(pattern: str) -> str | None:
    if not shutil.which("fc-match"):
        return None
    try:
        out = subprocess.run(
            ["fc-match", "-f", "%{file}", pattern], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _find_font(env: str, pattern: str, fallbacks: tuple[str, ...], must_contain: str) -> str | None:
    candidates = [os.environ.get(env), _fc_match(pattern), *fallbacks]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and must_contain.lower() in Path(candidate).name.lower():
            return candidate
    # fc-match always answers something; accept it only if nothing better exists
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=1)
def mono_font() -> Font:
    path = _find_font("SMARTPOS_FONT", "DejaVu Sans Mono", _MONO_FALLBACKS, "mono")
    if path:
        return ImageFont.truetype(path, _MONO_SIZE)
    return ImageFont.load_default(_MONO_SIZE)


@functools.lru_cache(maxsize=1)
def cjk_font() -> Font | None:
    path = _find_font("SMARTPOS_CJK_FONT", "WenQuanYi Micro Hei", _CJK_FALLBACKS, "wqy")
    return ImageFont.truetype(path, _CJK_SIZE) if path else None


def _glyph_bitmap(font: Font, char: str) -> bytes:
    im = Image.new("L", (CELL_W * 4, CELL_H * 2), 255)
    ImageDraw.Draw(im).text((0, 0), char, font=font, fill=0)
    return im.tobytes()


@functools.lru_cache(maxsize=16)
def _missing_bitmap(font: Font) -> bytes:
    return _glyph_bitmap(font, _NOT_A_CHAR)


@functools.lru_cache(maxsize=8192)
def has_glyph(font: Font, char: str) -> bool:
    """True when ``font`` draws ``char`` with a real glyph (not its missing-glyph box). Spaces count as drawable."""
    if char.isspace():
        return True
    return _glyph_bitmap(font, char) != _missing_bitmap(font)


def font_for(text: str) -> Font:
    """The monospace font if it has every glyph of ``text``, else the CJK font (which also covers Latin)."""
    mono = mono_font()
    if all(has_glyph(mono, ch) for ch in text):
        return mono
    cjk = cjk_font()
    return cjk if cjk is not None else mono


def missing_glyphs(text: str) -> list[str]:
    """Characters of ``text`` that no available font can draw (they would print as boxes)."""
    font = font_for(text)
    return [ch for ch in text if not has_glyph(font, ch)]


def has_rtl(text: str) -> bool:
    """True when ``text`` holds right-to-left letters (Hebrew, Arabic script)."""
    return not text.isascii() and any(unicodedata.bidirectional(ch) in ("R", "AL") for ch in text)


def needs_shaping(text: str) -> bool:
    """True when ``text`` holds Arabic-script letters, whose shape depends on their neighbours: no printer codepage
    gives them that (a codepage prints each letter alone), so such a line is drawn as an image."""
    return not text.isascii() and any(unicodedata.bidirectional(ch) == "AL" for ch in text)


def visual_order(text: str) -> str:
    """One line in the order a printer lays characters down (left to right): right-to-left runs reversed as the
    Unicode bidirectional algorithm (UAX #9, python-bidi) says, the base direction taken from the line's first
    strong letter. Lines are wrapped before, in logical order, as the algorithm prescribes."""
    if not has_rtl(text):
        return text
    from bidi import get_display

    return str(get_display(text))


@functools.lru_cache(maxsize=1)
def _pillow_orders_text() -> bool:
    """Pillow with libraqm reorders (and shapes) right-to-left text itself; its basic layout draws it as given."""
    from PIL import features

    return bool(features.check("raqm"))


def text_image(text: str, width_px: int, *, align: str = "left", scale_w: int = 1, scale_h: int = 1,
               bold: bool = False) -> Image.Image:
    """One printed line as a 1-bit image ``width_px`` wide (black text on white), aligned like the printer would.
    ``text`` is in logical order; right-to-left text is laid out by Pillow's libraqm layout where it has one
    (shaped, as Arabic needs), else put in visual order first (right order, letters unshaped)."""
    if not _pillow_orders_text():
        text = visual_order(text)
    font = font_for(text)
    length = int(font.getlength(text)) + (1 if bold else 0)
    line = Image.new("L", (max(1, length), CELL_H), 255)
    draw = ImageDraw.Draw(line)
    draw.text((0, 0), text, font=font, fill=0)
    if bold:
        draw.text((1, 0), text, font=font, fill=0)
    if scale_w != 1 or scale_h != 1:
        line = line.resize((line.width * scale_w, line.height * scale_h), Image.Resampling.NEAREST)
    if line.width > width_px:
        line = line.crop((0, 0, width_px, line.height))
    canvas = Image.new("L", (width_px, line.height), 255)
    x = {"center": (width_px - line.width) // 2, "right": width_px - line.width}.get(align, 0)
    canvas.paste(line, (x, 0))
    return canvas.point(lambda v: 0 if v < 128 else 255).convert("1")
