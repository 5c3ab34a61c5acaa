"""Colour label maps, photo overlays with a legend, and per-class summaries."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


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


def _class_colors(num_labels: int) -> np.ndarray:
    """Colours for label ids 0..n-1, skipping VOC's black so every class is visible."""
    return palette(num_labels + 1)[1:]


def label_map_image(label_map: np.ndarray) -> Image.Image:
    """A palette ('P') PNG-ready image whose pixel values are the label ids."""
    if label_map.max(initial=0) > 255:
        raise ValueError("a palette label map holds at most 256 labels")
    image = Image.fromarray(label_map.astype(np.uint8), mode="P")
    image.putpalette(_class_colors(256).flatten().tolist())
    return image


def overlay_image(
    photo: Image.Image, label_map: np.ndarray, labels: list[str], fractions: dict[str, float], alpha: float = 0.5
) -> Image.Image:
    """The photo blended with the coloured classes, and a legend of the classes found (with pixel shares)."""
    colors = _class_colors(max(len(labels), 1))
    coloured = Image.fromarray(colors[label_map.clip(0, len(colors) - 1)])
    blended = Image.blend(photo.convert("RGB"), coloured, alpha)
    font_size = max(12, min(32, photo.height // 30))
    font = ImageFont.load_default(size=font_size)
    present = [(i, name) for i, name in enumerate(labels) if name in fractions]
    line = int(font_size * 1.6)
    measure = ImageDraw.Draw(blended)
    text_width = max((measure.textlength(f"{n}  {fractions[n]:.1%}", font=font) for _, n in present), default=0)
    width = int(text_width + 3 * line)
    canvas = Image.new("RGB", (photo.width + width, max(photo.height, line * (len(present) + 1))), "white")
    canvas.paste(blended, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, (index, name) in enumerate(present):
        top = line // 2 + row * line
        left = photo.width + line // 2
        draw.rectangle([left, top, left + line - 6, top + line - 6], fill=tuple(int(c) for c in colors[index]))
        draw.text((left + line + 4, top), f"{name}  {fractions[name]:.1%}", fill="black", font=font)
    return canvas
