"""Colour label maps, photo overlays with a legend, and per-class summaries.

Legend text is drawn with a font that has glyphs for every character of each label (accents, CJK, ...): the
OS fonts are searched through fontconfig (``fc-list :charset=...``), then common font paths (DejaVu, Noto,
Droid Sans Fallback), before Pillow's built-in font; a font "has" a character when it draws it differently
from its missing-glyph box.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

#: Most labels a palette ('P') PNG holds; beyond, label maps are written as 16-bit PNGs.
PALETTE_LABELS = 256
#: Most labels a 16-bit label map holds.
MAX_LABELS = 65536
#: Legend rows drawn at most (the classes with the largest area first).
LEGEND_ROWS = 24
#: The legend column holds at least this many average characters (name and share), whatever the photo's width.
LEGEND_CHARACTERS = 28

#: Fonts tried after fontconfig, in order (Debian/Ubuntu, Fedora, macOS, Windows paths).
FONT_PATHS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    "C:/Windows/Fonts/arialuni.ttf",
    "C:/Windows/Fonts/msyh.ttc",
)
_MISSING = "\U0010fffd"  # a private-use code point no font draws: every font shows its missing-glyph box


def palette(num_colors: int = 256) -> np.ndarray:
    """[num_colors, 3] uint8 colours: the PASCAL VOC bit-interleaved colour map (0 = black)."""
    colors = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colors[index] = (r, g, b)
    return colors


def class_colors(num_labels: int) -> np.ndarray:
    """Colours for label ids 0..n-1, skipping VOC's black so every class is visible."""
    return palette(num_labels + 1)[1:]


def label_map_format(num_labels: int) -> str:
    """``"palette"`` (8-bit PNG with the class colours) up to 256 labels, ``"uint16"`` (16-bit PNG) beyond."""
    if num_labels > MAX_LABELS:
        raise ValueError(f"a label map holds at most {MAX_LABELS} labels, got {num_labels}")
    return "palette" if num_labels <= PALETTE_LABELS else "uint16"


def label_map_image(label_map: np.ndarray, num_labels: int) -> Image.Image:
    """A PNG-ready image whose pixel values are the label ids (see [`label_map_format`])."""
    if label_map_format(num_labels) == "uint16":
        return Image.fromarray(label_map.astype(np.uint16))
    image = Image.fromarray(label_map.astype(np.uint8), mode="P")
    image.putpalette(class_colors(PALETTE_LABELS).flatten().tolist())
    return image


# -- fonts -----------------------------------------------------------------------------------------


def _glyph(font: ImageFont.FreeTypeFont, char: str) -> tuple:
    mask = font.getmask(char)
    return mask.size, bytes(mask)


def font_covers(font: ImageFont.FreeTypeFont, text: str) -> bool:
    """Whether ``font`` draws every visible character of ``text`` (none comes out as its missing-glyph box)."""
    missing = _glyph(font, _MISSING)
    return all(_glyph(font, char) != missing for char in set(text) if not char.isspace())


@functools.cache
def _fontconfig_files(charset: str) -> tuple[str, ...]:
    """Font files fontconfig knows that hold every code point of ``charset`` (hex, space-separated)."""
    if not shutil.which("fc-list"):
        return ()
    try:
        listed = subprocess.run(
            ["fc-list", "--format", "%{file}\\n", f":charset={charset}"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    files = [line for line in listed.splitlines() if line.lower().endswith((".ttf", ".otf", ".ttc"))]

    def plainness(path: str) -> tuple:
        name = Path(path).name
        styled = any(style in name for style in ("Bold", "Italic", "Oblique", "Light", "Condensed", "Mono", "Serif"))
        return styled, "Sans" not in name, len(name), name

    return tuple(sorted(files, key=plainness))


@functools.cache
def font_for(text: str, size: int) -> ImageFont.ImageFont:
    """A font of ``size`` pixels that draws every character of ``text``. When no installed font does, a warning
    names the characters and the packages that draw them, and the font that draws the most is used (Pillow's
    built-in one when there is no other)."""
    visible = sorted({char for char in text if not char.isspace()})
    charset = " ".join(f"{ord(char):x}" for char in visible)
    best, best_count = ImageFont.load_default(size=size), -1
    for path in (*_fontconfig_files(charset), *FONT_PATHS):
        if not Path(path).is_file():
            continue
        try:
            font = ImageFont.truetype(path, size)
        except OSError:
            continue
        if font_covers(font, text):
            return font
        count = sum(font_covers(font, char) for char in visible)
        if count > best_count:
            best, best_count = font, count
    missing = "".join(char for char in visible if not font_covers(best, char))
    logger.warning(
        "no installed font draws %r of the label %r: the legend shows boxes for them; install a font with wide "
        "coverage (Debian/Ubuntu: apt-get install fonts-noto-cjk or fonts-droid-fallback)", missing, text
    )
    return best


def fit_text(text: str, font: ImageFont.ImageFont, width: float) -> str:
    """``text``, shortened with an ellipsis so that it is at most ``width`` pixels wide."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


# -- overlays --------------------------------------------------------------------------------------


def overlay_image(
    photo: Image.Image, label_map: np.ndarray, labels: list[str], fractions: dict[str, float], alpha: float = 0.5
) -> Image.Image:
    """The photo blended with the coloured classes, and a legend of the classes found, largest first.

    Negative label ids (no data) show the photo uncoloured. The legend lists at most ``LEGEND_ROWS`` classes
    with a visible share (0.0% is left out). Its column is as wide as its longest row, at most a third of the
    photo's width but never less than ``LEGEND_CHARACTERS`` characters, so a narrow or tall photo still gets
    readable names; a longer name is shortened with an ellipsis, its percentage always shown. The rows start two
    lines below the top, clear of an image viewer's toolbar (Gradio's buttons sit over the top-right corner).
    """
    colors = class_colors(max(len(labels), 1))
    coloured = Image.fromarray(colors[label_map.clip(0, len(colors) - 1)])
    blended = Image.blend(photo.convert("RGB"), coloured, alpha)
    if (label_map < 0).any():  # no data (e.g. a GeoTIFF's nodata): the photo as it is
        nodata = Image.fromarray(((label_map < 0) * 255).astype(np.uint8))
        blended.paste(photo.convert("RGB"), mask=nodata)
    font_size = max(12, min(32, photo.height // 30))
    line = int(font_size * 1.6)
    visible = sorted(((share, name) for name, share in fractions.items() if round(share * 100, 1) > 0), reverse=True)
    shown = visible[:LEGEND_ROWS]
    hidden = len(visible) - len(shown)
    rows = [(name, f"  {share:.1%}") for share, name in shown] + ([("", f"+{hidden} more")] if hidden else [])
    column = max(LEGEND_CHARACTERS * font_size // 2 + 2 * line, photo.width // 3)
    text_width = column - 2 * line
    fonts = [font_for(name + share, font_size) for name, share in rows]
    texts = [fit_text(name, font, text_width - font.getlength(share)) + share if name else share
             for (name, share), font in zip(rows, fonts, strict=True)]  # fmt: skip
    longest = max((font.getlength(text) for text, font in zip(texts, fonts, strict=True)), default=0)
    width = math.ceil(min(column, longest + 2 * line))
    first = 2 * line
    canvas = Image.new("RGB", (photo.width + width, max(photo.height, first + line * len(rows))), "white")
    canvas.paste(blended, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, ((name, _), font, text) in enumerate(zip(rows, fonts, texts, strict=True)):
        top, left = first + row * line, photo.width + line // 2
        if name:
            color = tuple(int(c) for c in colors[labels.index(name)])
            draw.rectangle([left, top, left + line - 6, top + line - 6], fill=color)
        draw.text((left + line + 4, top), text, fill="black", font=font)
    return canvas


__all__ = [
    "FONT_PATHS",
    "LEGEND_CHARACTERS",
    "LEGEND_ROWS",
    "MAX_LABELS",
    "PALETTE_LABELS",
    "class_colors",
    "fit_text",
    "font_covers",
    "font_for",
    "label_map_format",
    "label_map_image",
    "overlay_image",
    "palette",
]
